"""Scenario c: the Lua write (set.lua) beside client-side batches of the same writes and
the one-script design's write; then fill-vs-invalidation races, with and without a fill
token."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial

from glide import Batch, ExpirySet, ExpiryType, UpdateOptions

from ...cache.source import AppConfigFragmentCacheSource
from ...keys import KeySchema, encode_component, token_sequence, user_component
from ...models import AppConfigData, ScopeType
from .data import current_fill_token, sample_config, small_config
from .kit import BenchContext, BenchRow, Op, compare_rows, with_tasks
from .legacy import LegacyKeys, legacy_batch
from .server import as_text


def set_writes_batch(
    keys: KeySchema,
    user: uuid.UUID,
    domain: str,
    name: str,
    entry: str,
    ttl_ms: int,
    *,
    atomic: bool,
) -> Batch:
    """set.lua's writes as a client-side batch: the three index ZADD GT with their PEXPIRE
    and the entry (``entry``: header + JSON), without the token check, the TTL guard and
    the pruning of expired members."""
    batch = Batch(is_atomic=atomic)
    expiry = time.time() * 1000 + ttl_ms
    member_of = (
        (keys.user_index(user), encode_component(name)),
        (keys.domain_index(domain), user_component(user)),
        (keys.users_index, user_component(user)),
    )
    for key, member in member_of:
        batch.zadd(key, {member: expiry}, update_condition=UpdateOptions.GREATER_THAN)
        batch.pexpire(key, ttl_ms)
    batch.set(keys.entry(user, name), entry, expiry=ExpirySet(ExpiryType.MILLSEC, ttl_ms))
    return batch


def entry_header(token: str, domain: str) -> str:
    """The header set.lua writes before an entry's JSON: fill sequence, encoded domain."""
    return f"{token_sequence(token)} {encode_component(domain)}\n"


async def scenario_writes(ctx: BenchContext) -> list[BenchRow]:
    keys = ctx.keys("c")
    cache = ctx.cache(keys)
    legacy = ctx.legacy(keys)
    ttl = cache.ttl_seconds
    domain = "default"
    pool = [uuid.uuid4() for _ in range(1000)]
    values = {user: sample_config(user, domain, "webui") for user in pool}
    payloads = {user: value.model_dump_json() for user, value in values.items()}
    # Fill tokens are taken again before each phase: a token older than a minute is
    # refused, and a phase of a full run must not come near that.
    tokens = {"new": "", "legacy": ""}
    refused = 0
    client = ctx.client

    def user_of(i: int) -> uuid.UUID:
        return pool[i % len(pool)]

    async def legacy_pipeline(i: int) -> None:
        user = user_of(i)
        batch = legacy_batch(legacy.keys, user, domain, "webui", payloads[user], ttl)
        await client.exec(batch, True)

    def batch_of(user: uuid.UUID, *, atomic: bool) -> Batch:
        entry = entry_header(tokens["new"], domain) + payloads[user]
        return set_writes_batch(keys, user, domain, "webui", entry, ttl * 1000, atomic=atomic)

    async def pipeline(i: int) -> None:
        await client.exec(batch_of(user_of(i), atomic=False), True)

    async def transaction(i: int) -> None:
        await client.exec(batch_of(user_of(i), atomic=True), True)

    async def lua(i: int) -> None:
        user = user_of(i)
        await cache.set_merged_config(user, "webui", values[user])

    async def lua_token(i: int) -> None:
        nonlocal refused
        user = user_of(i)
        if not await cache.set_merged_config(user, "webui", values[user], tokens["new"]):
            refused += 1

    async def legacy_lua_token(i: int) -> None:
        nonlocal refused
        user = user_of(i)
        if not await legacy.set_many(user, [values[user]], tokens["legacy"]):
            refused += 1

    variants: list[tuple[str, Op]] = [
        ("legacy Batch(is_atomic=False): SET EX + SADD + EXPIRE", legacy_pipeline),
        ("Batch(is_atomic=False) of set.lua's writes (3x ZADD GT/PEXPIRE + SET PX)", pipeline),
        ("Batch(is_atomic=True) MULTI/EXEC of the same", transaction),
        ("set.lua (set_merged_config)", lua),
        ("set.lua with a fill token", lua_token),
        ("legacy set.lua (one-script design) with its epoch token", legacy_lua_token),
    ]
    rows: list[BenchRow] = []
    for tasks, ops in ((1, ctx.sizes.ops_per_round), (ctx.sizes.tasks, ctx.sizes.ops_per_task)):
        scenario = with_tasks("c. cache write", tasks)
        tokens["new"] = await current_fill_token(cache)
        tokens["legacy"] = await legacy.fill_token(pool[0], "-")
        compared = await compare_rows(
            ctx, scenario, variants, rounds=ctx.sizes.rounds, ops=ops, tasks=tasks
        )
        rows += [row for row, _ in compared]
    if refused:
        raise RuntimeError(f"{refused} fills with a current token were refused")
    ctx.log(f"c. fill vs invalidation races: {ctx.sizes.races} per shape")
    rows += await race_rows(ctx, cache, legacy.keys)
    await cache.reclaiming()
    return rows


RACE_SCENARIO = "c. fill vs invalidation races"
# The race shapes; a row's variant is its shape, then how many raced at a time.
TOKEN_RACE_SHAPE = "set.lua with fill token + invalidate.lua"
RACE_SHAPES = (
    "legacy: Batch fill + SMEMBERS/DEL invalidation",
    "set.lua without fill token + invalidate.lua",
    TOKEN_RACE_SHAPE,
)


async def race_rows(
    ctx: BenchContext, cache: AppConfigFragmentCacheSource, legacy_keys: LegacyKeys
) -> list[BenchRow]:
    """Fill vs invalidation races, as a read-around cache meets a write.

    A reader misses, reads the "database" (a version number), waits a random 0-2 ms (its
    query), then fills the cache. A writer waits a random 0-2 ms, bumps the version and
    invalidates the user's domain. A race ends stale when a reader would be served an old
    version after both returned: no later invalidation will remove it before its TTL.

    Each shape runs its races one at a time, then ``race_wave`` at a time: alone, a
    refused fill is one that really raced its invalidation; side by side, a coarser
    token (as the former global epoch) also refuses fills that raced another domain's.
    """
    client = ctx.client
    rng = random.Random(5)
    ttl = cache.ttl_seconds

    async def legacy_trial(domain: str) -> tuple[bool, bool]:
        user, name = uuid.uuid4(), "webui"
        database = {"version": 0}
        entry_key = legacy_keys.entry(user, name)
        domain_key = legacy_keys.domain_users(domain)
        reader_delay, writer_delay = rng.uniform(0, 0.002), rng.uniform(0, 0.002)

        async def reader() -> None:
            await client.get(entry_key)
            version = database["version"]
            await asyncio.sleep(reader_delay)
            payload = small_config(user, domain, name, version=version).model_dump_json()
            await client.exec(legacy_batch(legacy_keys, user, domain, name, payload, ttl), True)

        async def writer() -> None:
            await asyncio.sleep(writer_delay)
            database["version"] = 1
            members = await client.smembers(domain_key)
            if members:  # as the legacy code: nothing to do for an empty set
                doomed = [legacy_keys.entry(as_text(member), name) for member in members]
                await client.delete([*doomed, domain_key])

        await asyncio.gather(reader(), writer())
        raw = await client.get(entry_key)
        cached = None if raw is None else AppConfigData.model_validate_json(raw)
        return cached is not None and (cached.config or {}).get("version") != 1, False

    async def trial(with_token: bool, domain: str) -> tuple[bool, bool]:
        user, name = uuid.uuid4(), "webui"
        database = {"version": 0}
        reader_delay, writer_delay = rng.uniform(0, 0.002), rng.uniform(0, 0.002)
        refused_fill = False

        async def reader() -> None:
            nonlocal refused_fill
            hit = await cache.lookup(user, name)
            version = database["version"]
            await asyncio.sleep(reader_delay)
            value = small_config(user, domain, name, version=version)
            token = hit.fill_token if with_token else None
            refused_fill = not await cache.set_merged_config(user, name, value, token)

        async def writer() -> None:
            await asyncio.sleep(writer_delay)
            database["version"] = 1
            await cache.invalidate_for_scope(ScopeType.DOMAIN, domain)

        await asyncio.gather(reader(), writer())
        served = (await cache.lookup(user, name)).value
        return served is not None and (served.config or {}).get("version") != 1, refused_fill

    shapes: list[Callable[[str], Awaitable[tuple[bool, bool]]]] = [
        legacy_trial,
        partial(trial, False),
        partial(trial, True),
    ]
    rows: list[BenchRow] = []
    races = ctx.sizes.races
    for concurrency in dict.fromkeys((1, ctx.sizes.race_wave)):
        for shape_index, (shape, run_trial) in enumerate(zip(RACE_SHAPES, shapes, strict=True)):
            stale = refused = done = 0
            while done < races:
                wave = min(concurrency, races - done)
                outcomes = await asyncio.gather(
                    *(
                        run_trial(f"race-{concurrency}-{shape_index}-{done + n}")
                        for n in range(wave)
                    )
                )
                stale += sum(1 for left_stale, _ in outcomes if left_stale)
                refused += sum(1 for _, was_refused in outcomes if was_refused)
                done += wave
            at_a_time = "one at a time" if concurrency == 1 else f"{concurrency} at a time"
            rows.append(
                BenchRow(
                    scenario=RACE_SCENARIO,
                    variant=f"{shape}; {at_a_time}",
                    samples=races,
                    extra={
                        "stale_entries": stale,
                        "stale_pct": round(100 * stale / races, 1),
                        "refused_fills": refused,
                    },
                )
            )
    return rows
