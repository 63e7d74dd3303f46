"""Helpers for repository tests: a small world of domains, users and policies."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from glide import GlideClient
from sqlalchemy import event, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from atomic_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    AppConfigPolicyRepository,
    ScopeType,
    ScriptRegistry,
    create_valkey_client,
)
from atomic_cache.cache.scripts import ValkeyClient
from atomic_cache.db import cache_prefixes, invalidation_outbox
from atomic_cache.policy import domains, users
from atomic_cache.policy.consistency import CHECK_LABEL
from atomic_cache.resilience.breaker import CircuitBreaker
from atomic_cache.resilience.guard import GuardedCache
from atomic_cache.tools.embedded import EmbeddedValkey

ALL_SCOPES = [ScopeType.PUBLIC, ScopeType.DOMAIN, ScopeType.DOMAIN_USER_DEFAULTS, ScopeType.USER]


@dataclass
class World:
    """alpha: a1, a2; beta: b1. Policies webui, theme, limits allow every scope."""

    domains: dict[str, list[uuid.UUID]] = field(default_factory=dict)
    names: tuple[str, ...] = ("limits", "theme", "webui")

    @property
    def users(self) -> list[uuid.UUID]:
        return [user for members in self.domains.values() for user in members]

    def domain_of(self, user: uuid.UUID) -> str:
        return next(d for d, members in self.domains.items() if user in members)


async def add_users(engine: AsyncEngine, layout: dict[str, int]) -> dict[str, list[uuid.UUID]]:
    made = {domain: [uuid.uuid4() for _ in range(count)] for domain, count in layout.items()}
    async with engine.begin() as conn:
        await conn.execute(insert(domains), [{"name": d} for d in made])
        rows = [{"uuid": u, "domain_name": d} for d, members in made.items() for u in members]
        if rows:
            await conn.execute(insert(users), rows)
    return made


async def make_world(engine: AsyncEngine, cache: AppConfigFragmentCacheSource | None) -> World:
    world = World(domains=await add_users(engine, {"alpha": 2, "beta": 1}))
    policies = AppConfigPolicyRepository(engine, cache=cache)
    for name in world.names:
        await policies.create(name, ALL_SCOPES)
    return world


@dataclass
class StatementCounter:
    statements: list[str] = field(default_factory=list)
    parameters: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.statements)


@contextmanager
def count_sql(engine: AsyncEngine) -> Iterator[StatementCounter]:
    """Every SQL statement the engine sends inside the block."""
    counter = StatementCounter()

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if invalidation_outbox.name in statement or cache_prefixes.name in statement:
            return  # the replayer polls and beats in the background: not the calls counted
        if "pg_stat_activity" in statement or "clock_timestamp" in statement:
            return  # a cache's registration waits for writes in flight, once
        if CHECK_LABEL in statement:
            return  # a sampled consistency check, in the background
        counter.statements.append(statement)
        counter.parameters.append(repr(parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield counter
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


@dataclass
class Rig:
    server: EmbeddedValkey
    client: GlideClient
    cache: AppConfigFragmentCacheSource
    repo: AppConfigFragmentRepository
    world: World
    engine: AsyncEngine


async def open_rig(engine: AsyncEngine, server: EmbeddedValkey) -> Rig:
    client = await create_valkey_client(server.url, request_timeout_ms=300, connect_timeout_ms=300)
    registry = ScriptRegistry()
    await registry.load(client)
    cache = AppConfigFragmentCacheSource(client, registry)
    # A short cool-down: fault tests wait for recovery in tenths of a second, not seconds.
    GuardedCache.of(cache).breaker = CircuitBreaker(cooldown_s=0.05)
    world = await make_world(engine, cache)
    return Rig(
        server, client, cache, AppConfigFragmentRepository(engine, cache=cache), world, engine
    )


async def until_cached(rig: Rig, user: object, name: str) -> None:
    """Read until a read is served by Valkey (the client reconnects on its own schedule)."""
    for _ in range(100):
        await rig.repo.app_config(user, name)  # type: ignore[arg-type]
        with count_sql(rig.engine) as sql:
            await rig.repo.app_config(user, name)  # type: ignore[arg-type]
        if len(sql) == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("Valkey never served the entry again")


class CountingRegistry(ScriptRegistry):
    """Counts the script calls (Valkey round trips) made through it, by script."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}

    async def call(
        self, client: ValkeyClient, name: str, keys: Sequence[str], args: Any = ()
    ) -> object:
        self.calls[name] = self.calls.get(name, 0) + 1
        return await super().call(client, name, keys, args)

    @property
    def total(self) -> int:
        return sum(self.calls.values())
