"""``atomic-cache demo --model ranked``: the policy demo's sections on the ranked model
(definitions, an allow-list with ranks, fragments with UUID scope ids).

Its tables live in a database of their own, created on the demo's server and dropped at
the end: the policy model has a table named ``app_config_fragments`` too, with other
columns, so the two cannot share a database.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from glide import GlideClient
from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncEngine

from ..cache.client import redact_url
from ..ranked import (
    AllowListRepository,
    AppConfigRepository,
    DefinitionRepository,
    FragmentUpsert,
    Scope,
)
from .databases import ranked_database
from .demo import (
    DEMO_TTL_S,
    READS_HEADING,
    WRITES_HEADING,
    DemoReport,
    Steps,
    Write,
    counted,
    demo_cache,
    keys_left,
    measure_writes,
    notes,
    print_final_counters,
    print_writes,
    read_passes,
)
from .seed import POLICIES, SeedPlan

RANKED_DEMO_PREFIX = "atomic_cache_demo_ranked"
NAMES = list(POLICIES)  # the same five config names as the policy demo
PUBLIC_READ_HEADING = "Anonymous read"
RANKED_WRITES_NOTES = (
    "= SQL: every re-read equals the SQL merge (resolve without the cache)",
    "a write of everyone's slice also removes the anonymous read's entry",
)


@dataclass
class RankedData:
    domains: list[uuid.UUID]
    users: dict[uuid.UUID, uuid.UUID]  # user -> domain
    fragments: list[FragmentUpsert]

    def members(self, domain: uuid.UUID) -> list[uuid.UUID]:
        return [user for user, d in self.users.items() if d == domain]


def plan_ranked(plan: SeedPlan) -> RankedData:
    """Public, per-domain and per-user fragments, deterministic per seed (as the policy
    model's data set: every name public, most per domain, two per user for a share)."""
    rng = random.Random(plan.seed)
    domains = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(plan.domains)]
    users = {
        uuid.UUID(int=rng.getrandbits(128), version=4): rng.choice(domains)
        for _ in range(plan.users)
    }
    fragments: list[FragmentUpsert] = []

    def add(scope: Scope, scope_id: uuid.UUID | None, name: str) -> None:
        config = {
            "source": scope.value,
            "version": rng.randint(1, 100),
            name: {"level": rng.randint(0, 5)},
        }
        fragments.append(
            FragmentUpsert(scope_type=scope, scope_id=scope_id, config_name=name, config=config)
        )

    for name in NAMES:
        add(Scope.PUBLIC, None, name)
        for domain in domains:
            if rng.random() < 0.6:
                add(Scope.DOMAIN, domain, name)
    for user in users:
        if rng.random() < plan.user_fragment_ratio:
            for name in rng.sample(NAMES, k=2):
                add(Scope.USER, user, name)
    return RankedData(domains, users, fragments)


async def run_ranked_demo(
    client: GlideClient,
    database_url: str,
    console: Console,
    plan: SeedPlan | None = None,
    readers: int = 50,
    log: Console | None = None,
) -> DemoReport:
    """Run the ranked demo in a database of its own on ``database_url``'s server; what it
    is doing meanwhile as :func:`~atomic_cache.tools.demo.run_demo` shows it."""
    plan = plan or SeedPlan()
    steps = Steps(console, log)
    async with contextlib.AsyncExitStack() as stack:
        with steps.status("creating a database of its own, with the ranked model's tables"):
            engine = await stack.enter_async_context(
                ranked_database(database_url, "demo_ranked", pool_size=readers, max_overflow=10)
            )
        name = engine.url.database
        stack.callback(steps.line, f"dropping its database, {name}")  # said before the drop
        report = await _demo(client, engine, console, steps, plan, readers)
    report.database = name
    return report


async def _demo(
    client: GlideClient,
    engine: AsyncEngine,
    console: Console,
    steps: Steps,
    plan: SeedPlan,
    readers: int,
) -> DemoReport:
    cache = await demo_cache(client, RANKED_DEMO_PREFIX)
    keys = cache.keys
    repo = AppConfigRepository(engine, cache=cache)
    sql_only = AppConfigRepository(engine)
    definitions = DefinitionRepository(engine, cache=cache)
    grants = AllowListRepository(engine, cache=cache)
    try:
        data = plan_ranked(plan)
        # Seeded without the cache (a fresh database: no cache follows it yet).
        seeding_defs, seeding_grants = DefinitionRepository(engine), AllowListRepository(engine)
        seeded = (
            f"{len(NAMES)} definitions x 3 grants, {counted(plan.domains, 'domain')},"
            f" {counted(plan.users, 'user')}, {len(data.fragments):,} fragments"
        )
        began = time.monotonic()
        total = len(NAMES) + len(data.fragments)
        with steps.counted(f"seeding {seeded}", total, "rows") as advance:
            for name in NAMES:
                await seeding_defs.create(name)
                for scope in Scope:
                    await seeding_grants.create(name, scope)
                advance(1)
            for i in range(0, len(data.fragments), 1000):
                batch = data.fragments[i : i + 1000]
                await sql_only.bulk_upsert(batch)
                advance(len(batch))
        console.print(f"seeded {seeded} in {time.monotonic() - began:.1f} s", highlight=False)
        with steps.status("registering the demo's cache with the database"):
            await repo.start()  # registers the cache now, not inside the timed passes
            await cache.reclaiming()

        users = list(data.users)
        console.print(
            f"\n[bold]{READS_HEADING}[/]: resolve(user, domain, {len(NAMES)} names) for"
            f" {counted(len(users), 'user')}, {counted(min(readers, len(users)), 'call')} at a time"
        )

        def resolve(via: AppConfigRepository) -> Callable[[uuid.UUID], Awaitable[object]]:
            return lambda user: via.resolve(user, data.users[user], NAMES)

        report = await read_passes(
            client,
            engine,
            steps,
            console,
            users,
            resolve(repo),
            resolve(sql_only),
            repo.stats,
            readers,
        )
        report.seeded = seeded

        public = await repo.resolve_public(NAMES)
        same = public == await sql_only.resolve_public(NAMES)
        console.print(
            f"\n[bold]{PUBLIC_READ_HEADING}[/]: resolve_public({len(NAMES)} names):"
            f" {sum(1 for each in public if each.config)} of {len(NAMES)} set,"
            f" {'matches' if same else 'DIFFERS FROM'} SQL"
        )

        async def matches_sql(user: uuid.UUID) -> bool:
            domain = data.users[user]
            cached = await repo.resolve(user, domain, NAMES)
            return cached == await sql_only.resolve(user, domain, NAMES)

        console.print(f"\n[bold]{WRITES_HEADING}[/], each followed by a re-read of its users")
        rows = await measure_writes(
            client,
            keys,
            engine,
            steps,
            cache,
            _writes(data, repo, definitions, grants),
            resolve(repo),
            readers,
            matches_sql,
        )
        report.writes = rows
        print_writes(console, rows)
        notes(console, RANKED_WRITES_NOTES)

        report.stats = repo.stats()
        print_final_counters(console, report.stats)
    finally:
        for each in (repo, sql_only, definitions, grants):
            await each.close()
    report.keys_left = await keys_left(client, keys, steps, DEMO_TTL_S)
    return report


def ranked_database_lines(database_url: str, report: DemoReport) -> list[str]:
    """What the ranked demo leaves in the PostgreSQL server at ``database_url``."""
    return [
        f"PostgreSQL {redact_url(database_url)}:",
        f"  nothing; the demo's own database, {report.database}, was dropped at the end",
    ]


def _writes(
    data: RankedData,
    repo: AppConfigRepository,
    definitions: DefinitionRepository,
    grants: AllowListRepository,
) -> list[Write]:
    user = next(iter(data.users))
    domain = data.users[user]
    everyone = list(data.users)
    # The users whose own notebook fragment the grant's purge deletes (cascade).
    own_notebook = [
        f.scope_id
        for f in data.fragments
        if f.scope_type is Scope.USER and f.config_name == "notebook" and f.scope_id is not None
    ]

    def upsert(scope: Scope, scope_id: uuid.UUID | None, name: str) -> Awaitable[object]:
        item = FragmentUpsert(
            scope_type=scope, scope_id=scope_id, config_name=name, config={"demo": True}
        )
        return repo.bulk_upsert([item])

    return [
        ("USER fragment: webui", lambda: upsert(Scope.USER, user, "webui"), [user]),
        (
            f"DOMAIN fragment: {str(domain)[:8]} webui",
            lambda: upsert(Scope.DOMAIN, domain, "webui"),
            data.members(domain),
        ),
        ("PUBLIC fragment: notebook", lambda: upsert(Scope.PUBLIC, None, "notebook"), everyone),
        (
            "rank: theme public 100 -> 350",
            lambda: grants.update_rank("theme", Scope.PUBLIC, 350),
            everyone,
        ),
        ("grant purge: notebook user", lambda: grants.purge("notebook", Scope.USER), own_notebook),
        ("definition purge: shortcuts", lambda: definitions.purge("shortcuts"), everyone),
    ]
