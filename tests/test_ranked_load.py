"""The ranked model under a concurrent read/write load, across two processes (two cache
sources on one server stand for two processes), with and without local caches: no read
returns a version older than one whose write had returned before the read began."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from glide import GlideClient
from sqlalchemy.ext.asyncio import AsyncEngine

from atomic_cache import AppConfigFragmentCacheSource, KeySchema, LocalCache, ScriptRegistry
from atomic_cache.ranked import (
    AllowListRepository,
    AppConfigRepository,
    DefinitionRepository,
    FragmentUpsert,
    Scope,
)

from .pg_tools import emptied, ranked_database
from .test_concurrency import ReadersStop

DOMAINS = [uuid.UUID(int=0xD1), uuid.UUID(int=0xD2)]
USERS = [(uuid.UUID(int=i), DOMAINS[i % 2]) for i in range(1, 5)]
NAMES = ["theme", "menu"]
VERSIONS = 12


@pytest.fixture(scope="module")
async def ranked_engine(postgres_server_url: str) -> AsyncIterator[AsyncEngine]:
    async with ranked_database(
        postgres_server_url, "rload", pool_size=10, max_overflow=5
    ) as engine:
        yield engine


@pytest.fixture
async def engine(ranked_engine: AsyncEngine) -> AsyncEngine:
    return await emptied(ranked_engine)


def version(config: dict[str, object], scope: Scope) -> int:
    value = config.get(scope.value, 0)
    assert isinstance(value, int)
    return value


async def run_load(
    engine: AsyncEngine,
    caches: list[AppConfigFragmentCacheSource],
    served: Callable[[], bool] = lambda: True,
) -> int:
    """Writers bump a version per (scope, scope id, name) through the first process's
    repository; readers in every process check each scope's version against the last
    write that had returned when the read began. Once the writes are done, the readers
    go on (at most SERVE_WAIT_S) until ``served()``: that every process served from the
    path under test is up to the test to assert, since under a busy write load whether
    an entry lives long enough to be served again depends on the machine's pace.
    Returns the stale reads."""
    await DefinitionRepository(engine, cache=caches[0]).create("theme")
    await DefinitionRepository(engine, cache=caches[0]).create("menu")
    allow = AllowListRepository(engine, cache=caches[0])
    for name in NAMES:
        for scope in Scope:
            await allow.create(name, scope)
    repos = [AppConfigRepository(engine, cache=cache) for cache in caches]
    for repo in repos:
        await repo.start()
    writer = repos[0]
    # Each scope writes its own key, so a read shows each scope's version apart.
    slices: list[tuple[Scope, uuid.UUID | None]] = [
        (Scope.PUBLIC, None),
        *((Scope.DOMAIN, domain) for domain in DOMAINS),
        *((Scope.USER, user) for user, _ in USERS),
    ]
    floor = {(scope, scope_id, name): 0 for scope, scope_id in slices for name in NAMES}
    reads = stale = 0
    stop = ReadersStop(served)

    async def write(scope: Scope, scope_id: uuid.UUID | None, name: str) -> None:
        for v in range(1, VERSIONS + 1):
            await writer.bulk_upsert(
                [
                    FragmentUpsert(
                        scope_type=scope, scope_id=scope_id, config_name=name, config={scope: v}
                    )
                ]
            )
            floor[(scope, scope_id, name)] = v
            await asyncio.sleep(random.uniform(0, 0.01))

    def expected(user: uuid.UUID, domain: uuid.UUID, name: str) -> dict[Scope, int]:
        return {
            Scope.PUBLIC: floor[(Scope.PUBLIC, None, name)],
            Scope.DOMAIN: floor[(Scope.DOMAIN, domain, name)],
            Scope.USER: floor[(Scope.USER, user, name)],
        }

    async def read(seed: int) -> None:
        nonlocal reads, stale
        rng = random.Random(seed)
        while not stop.now():
            repo = rng.choice(repos)
            if rng.random() < 0.2:
                at_least = {name: floor[(Scope.PUBLIC, None, name)] for name in NAMES}
                got = await repo.resolve_public(NAMES)
                stale += sum(version(c.config, Scope.PUBLIC) < at_least[c.config_name] for c in got)
            else:
                user, domain = rng.choice(USERS)
                floors = {name: expected(user, domain, name) for name in NAMES}
                got = await repo.resolve(user, domain, NAMES)
                for config in got:
                    for scope, least in floors[config.config_name].items():
                        stale += version(config.config, scope) < least
            reads += 1

    readers = [asyncio.create_task(read(seed)) for seed in range(10)]
    await asyncio.gather(*(write(*key) for key in floor))
    stop.writes_done()
    await asyncio.gather(*readers)
    assert reads > 100
    for repo in repos:
        await repo.close()
    return stale


async def test_two_processes_never_read_stale(
    engine: AsyncEngine, valkey: GlideClient, registry: ScriptRegistry, keys: KeySchema
) -> None:
    caches = [AppConfigFragmentCacheSource(valkey, registry, keys=keys) for _ in range(2)]

    def served() -> bool:
        return all(cache.metrics.hits > 0 for cache in caches)

    assert await run_load(engine, caches, served) == 0
    assert served()


async def test_two_processes_with_local_caches_never_read_stale(
    engine: AsyncEngine,
    valkey: GlideClient,
    valkey_url: str,
    registry: ScriptRegistry,
    keys: KeySchema,
) -> None:
    locals_ = [
        await LocalCache.create(valkey_url, keys=keys, check_interval_s=0.2, poll_s=0.02)
        for _ in range(2)
    ]
    try:
        for local in locals_:
            assert await local.ready(15)
        caches = [
            AppConfigFragmentCacheSource(valkey, registry, keys=keys, local_cache=local)
            for local in locals_
        ]

        def served() -> bool:
            return all(local.counters.hits > 0 for local in locals_)

        assert await run_load(engine, caches, served) == 0
        assert served()
    finally:
        for local in locals_:
            await local.close()
