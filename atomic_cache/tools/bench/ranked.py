"""Scenario n: the ranked model (``atomic_cache.ranked``), SQL vs cached vs local cache.

The ranked tables share a name with the policy model's (``app_config_fragments``, other
columns), so this scenario runs in a database of its own, created on the server of
``ctx.database_url`` and dropped when it ends. Seeded there: 5 definitions, a grant of
each at the three scopes, a public fragment of each name, a domain fragment of each name
for each of 20 domains and a user fragment of each name for each of ``ranked_users``
users (each in one of the domains).

Every variant's answer for every user, and the anonymous one, is checked against the
SQL repository's before anything is timed.
"""

from __future__ import annotations

import functools
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from ...cache.local import LocalCache
from ...cache.source import AppConfigFragmentCacheSource
from ...ranked import (
    AllowListRepository,
    AppConfigRepository,
    DefinitionRepository,
    FragmentUpsert,
    Scope,
)
from ..databases import ranked_database
from .data import current_fill_token
from .kit import BenchContext, BenchRow, Op, compare_rows, gather_limited, with_tasks
from .server import memory_usage, used_memory

NAMES = ("webui", "shortcuts", "dashboard", "notifications", "editor")
DOMAINS = 20
SEED_BATCH = 500

SQL = "SQL (no cache)"
CACHED = "cached (Valkey)"
LOCAL = "cached + local cache"
PING = "one PING through glide (the floor of a Valkey read)"
RESOLVE = "n. ranked resolve (5 names)"
PUBLIC = "n. ranked resolve_public (5 names, anonymous)"
MEMORY = "n. ranked: memory per cached entry"


def own_database(ctx: BenchContext) -> AbstractAsyncContextManager[AsyncEngine]:
    """A new database on the server of ``ctx.database_url`` with the ranked tables, behind
    an engine with a connection per concurrent task; dropped when the block ends."""
    assert ctx.database_url is not None
    return ranked_database(
        ctx.database_url, f"bench_ranked_{ctx.run_id}", pool_size=ctx.sizes.tasks, max_overflow=10
    )


def _public_config(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "theme": "light",
        "language": "en",
        "page_size": 20,
        "features": {"beta": False, "tour": True},
    }


def _domain_config(index: int) -> dict[str, Any]:
    return {"language": "ko", "domain_index": index, "features": {"beta": True}}


def _user_config(index: int) -> dict[str, Any]:
    return {"theme": "dark", "user_index": index, "recent": [f"item-{i}" for i in range(5)]}


async def seed(
    engine: AsyncEngine, users: int
) -> tuple[list[uuid.UUID], dict[uuid.UUID, uuid.UUID]]:
    """The definitions, grants and fragments; returns the users and each one's domain."""
    definitions = DefinitionRepository(engine)
    grants = AllowListRepository(engine)
    writer = AppConfigRepository(engine)
    try:
        for name in NAMES:
            await definitions.create(name)
            for scope in Scope:
                await grants.create(name, scope)
        domains = [uuid.uuid4() for _ in range(DOMAINS)]
        user_ids = [uuid.uuid4() for _ in range(users)]
        domain_of = {user: domains[i % DOMAINS] for i, user in enumerate(user_ids)}
        items = [
            FragmentUpsert(
                scope_type=Scope.PUBLIC, scope_id=None, config_name=n, config=_public_config(n)
            )
            for n in NAMES
        ]
        items += [
            FragmentUpsert(
                scope_type=Scope.DOMAIN, scope_id=d, config_name=n, config=_domain_config(i)
            )
            for i, d in enumerate(domains)
            for n in NAMES
        ]
        items += [
            FragmentUpsert(scope_type=Scope.USER, scope_id=u, config_name=n, config=_user_config(i))
            for i, u in enumerate(user_ids)
            for n in NAMES
        ]
        for start in range(0, len(items), SEED_BATCH):
            await writer.bulk_upsert(items[start : start + SEED_BATCH])
    finally:
        for repo in (definitions, grants, writer):
            await repo.close()
    return user_ids, domain_of


async def _check(
    ctx: BenchContext,
    sql: AppConfigRepository,
    others: Sequence[AppConfigRepository],
    users: Sequence[uuid.UUID],
    domain_of: dict[uuid.UUID, uuid.UUID],
) -> None:
    """Each repository's answer for each user equal to the SQL repository's, twice (the
    filling read, then the warm one); the same for the anonymous read."""

    async def one(user: uuid.UUID) -> None:
        expected = await sql.resolve(user, domain_of[user], NAMES)
        if [item.config.get("theme") for item in expected] != ["dark"] * len(NAMES):
            raise AssertionError(f"n. the user's fragment did not win for {user}")
        for repo in others:
            for _ in range(2):
                got = await repo.resolve(user, domain_of[user], NAMES)
                if got != expected:
                    raise AssertionError(f"n. a cached resolve of {user} differs from SQL")

    await gather_limited([functools.partial(one, u) for u in users], ctx.sizes.fill_concurrency)
    expected = await sql.resolve_public(NAMES)
    if [item.config for item in expected] != [_public_config(n) for n in NAMES]:
        raise AssertionError("n. the anonymous read is not the public fragments")
    for repo in others:
        for _ in range(2):
            if await repo.resolve_public(NAMES) != expected:
                raise AssertionError("n. a cached resolve_public differs from SQL")


async def scenario_ranked(ctx: BenchContext) -> list[BenchRow]:
    """``resolve`` (a user of a domain, 5 names) and ``resolve_public`` of the ranked
    model: SQL vs Valkey vs Valkey with the in-process local cache; memory per entry."""
    keys = ctx.keys("n")
    cache = ctx.cache(keys)
    async with own_database(ctx) as engine:
        ctx.log(f"n. seeding {ctx.sizes.ranked_users:,} users x {len(NAMES)} names")
        users, domain_of = await seed(engine, ctx.sizes.ranked_users)
        local = await LocalCache.create(
            ctx.url, keys=keys, max_entries=2 * (len(users) + 1) * len(NAMES)
        )
        sql = AppConfigRepository(engine)
        cached = AppConfigRepository(engine, cache=cache)
        local_source = AppConfigFragmentCacheSource(
            ctx.client, ctx.registry, keys=keys, local_cache=local
        )
        with_local = AppConfigRepository(engine, cache=local_source)
        try:
            if not await local.ready(10.0):
                raise RuntimeError("n. the local cache never subscribed")
            for repo in (cached, with_local):
                if not await repo.start():
                    raise RuntimeError("n. the cache does not follow the database")
            await current_fill_token(cache)  # else the first fills, all at once, are refused
            before = await used_memory(ctx.client)
            await gather_limited(
                [functools.partial(cached.resolve, u, domain_of[u], NAMES) for u in users],
                ctx.sizes.fill_concurrency,
            )
            grown = await used_memory(ctx.client) - before
            await _check(ctx, sql, (cached, with_local), users, domain_of)
            rows = await _timed(ctx, users, domain_of, sql, cached, with_local)
            for row in rows:
                row.extra["users"] = len(users)
            rows += await _memory(ctx, keys.entry, users, grown)
            stats = cached.stats()
            ctx.log(f"n. cached: {stats.hits:,} hits, {stats.misses:,} misses")
            return rows
        finally:
            for repo in (sql, cached, with_local):
                await repo.close()
            await local.close()


async def _timed(
    ctx: BenchContext,
    users: Sequence[uuid.UUID],
    domain_of: dict[uuid.UUID, uuid.UUID],
    sql: AppConfigRepository,
    cached: AppConfigRepository,
    with_local: AppConfigRepository,
) -> list[BenchRow]:
    rng = random.Random(1052)
    order = [users[rng.randrange(len(users))] for _ in range(4096)]

    def resolve(repo: AppConfigRepository) -> Op:
        def op(i: int) -> Awaitable[object]:
            user = order[i % len(order)]
            return repo.resolve(user, domain_of[user], NAMES)

        return op

    def resolve_public(repo: AppConfigRepository) -> Op:
        return lambda i: repo.resolve_public(NAMES)

    rounds = max(2, ctx.sizes.rounds // 4)
    rows: list[BenchRow] = []
    for title, way, task_counts in (
        (RESOLVE, resolve, (1, ctx.sizes.tasks)),
        (PUBLIC, resolve_public, (1,)),
    ):
        variants = [(SQL, way(sql)), (CACHED, way(cached)), (LOCAL, way(with_local))]
        if way is resolve:
            # What any read from Valkey costs at least, through the same client.
            variants.append((PING, lambda i: ctx.client.custom_command(["PING"])))
        for tasks in task_counts:
            if tasks == 1:
                ops = max(20, ctx.sizes.ops_per_round // 5)
            else:
                ops = max(4, ctx.sizes.ops_per_task // 4)
            compared = await compare_rows(
                ctx, with_tasks(title, tasks), variants, rounds=rounds, ops=ops, tasks=tasks
            )
            rows += [row for row, _ in compared]
    return rows


async def _memory(
    ctx: BenchContext,
    entry: Callable[[uuid.UUID, str], str],
    users: Sequence[uuid.UUID],
    grown: int,
) -> list[BenchRow]:
    entries = len(users) * len(NAMES)
    sample = users[: min(200, len(users))]
    sizes = [await memory_usage(ctx.client, entry(user, name)) for user in sample for name in NAMES]

    def row(variant: str, per_entry: float) -> BenchRow:
        return BenchRow(
            scenario=MEMORY,
            variant=variant,
            samples=entries,
            extra={"bytes_per_entry": round(per_entry)},
        )

    return [
        row("INFO used_memory delta (value + header + key + index)", grown / entries),
        row("entry key, MEMORY USAGE", sum(sizes) / len(sizes)),
    ]
