"""The data the scenarios cache and read: merged configs of two sizes, bulk fills, a
current fill token, and the seeded PostgreSQL data set of the repository scenarios."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ...cache.source import AppConfigFragmentCacheSource
from ...keys import token_sequence
from ...models import AppConfigData, AppConfigFragment, ScopeType
from ...policy import create_schema
from ..seed import SeedPlan, plan_rows, reset, write_rows
from .kit import BenchContext, gather_limited

CONFIG_NAMES: tuple[str, ...] = ("webui", "theme", "notebook", "limits", "shortcuts")


def sample_config(user: uuid.UUID, domain: str, name: str, *, version: int = 0) -> AppConfigData:
    """A merged config shaped like a WebUI one: four fragments, about 1.5 KB of JSON."""
    public: dict[str, Any] = {
        "theme": {"mode": "light", "accent": "#3c8dbc", "font_size": 14},
        "features": {"notebook": True, "terminal": True, "vscode": False, "pipelines": True},
        "limits": {"max_sessions": 4, "max_upload_mb": 512},
        "links": ["https://docs.example.com", "https://status.example.com"],
    }
    domain_config = {"theme": {"accent": "#7b1fa2"}, "features": {"vscode": True}}
    defaults = {"limits": {"max_sessions": 8}, "shortcuts": {"open": "ctrl+o", "run": "f5"}}
    personal = {"theme": {"mode": "dark"}, "recent": [f"project-{i}" for i in range(8)]}
    scopes = [
        (ScopeType.PUBLIC, "public", public),
        (ScopeType.DOMAIN, domain, domain_config),
        (ScopeType.DOMAIN_USER_DEFAULTS, domain, defaults),
        (ScopeType.USER, str(user), personal),
    ]
    fragments = [
        AppConfigFragment(scope_type=scope, scope_id=scope_id, name=name, extra_config=config)
        for scope, scope_id, config in scopes
    ]
    merged = {
        "theme": {"mode": "dark", "accent": "#7b1fa2", "font_size": 14},
        "features": {"notebook": True, "terminal": True, "vscode": True, "pipelines": True},
        "limits": {"max_sessions": 8, "max_upload_mb": 512},
        "links": public["links"],
        "shortcuts": defaults["shortcuts"],
        "recent": personal["recent"],
        "version": version,
    }
    return AppConfigData(
        user_id=user, domain_name=domain, name=name, fragments=fragments, config=merged
    )


def small_config(user: uuid.UUID, domain: str, name: str, *, version: int = 0) -> AppConfigData:
    """A small merged config (about 150 bytes of JSON) for the fan-out and race runs."""
    return AppConfigData(
        user_id=user, domain_name=domain, name=name, config={"version": version, "v": name}
    )


Store: TypeAlias = Callable[[uuid.UUID, list[AppConfigData]], Awaitable[object]]


async def fill_users(
    ctx: BenchContext,
    store: Store,
    users: Sequence[uuid.UUID],
    domain: str,
    names: Sequence[str],
    make: Callable[[uuid.UUID, str, str], AppConfigData] = small_config,
) -> None:
    """Cache ``names`` for every user, one script call per user, ``fill_concurrency`` in
    flight; ``store`` is a cache source's or a LegacyCache's ``set_many``."""

    def job(user: uuid.UUID) -> Callable[[], Awaitable[object]]:
        return lambda: store(user, [make(user, domain, name) for name in names])

    await gather_limited((job(user) for user in users), ctx.sizes.fill_concurrency)


async def current_fill_token(cache: AppConfigFragmentCacheSource) -> str:
    """A fill token of now, as a miss hands it out. A prefix without a sequence yet gets
    one first: get.lua's token of a missing sequence is refused by set.lua, so on a new
    prefix every fill whose lookup ran before the first write is refused."""
    nobody = uuid.UUID(int=0)
    token = (await cache.lookup(nobody, "-")).fill_token
    if token is not None and token_sequence(token) == "0":
        await cache.invalidate_for_scope(ScopeType.USER, str(nobody))
        token = (await cache.lookup(nobody, "-")).fill_token
    if token is None:
        raise RuntimeError("a lookup of an entry nobody cached was a hit")
    return token


async def fill_across(
    ctx: BenchContext,
    store: Store,
    users: Sequence[uuid.UUID],
    domains: Sequence[str],
    make: Callable[[uuid.UUID, str, str], AppConfigData] = small_config,
) -> None:
    """Cache every CONFIG_NAMES of ``users``, spread over ``domains`` in turn."""
    for index, domain in enumerate(domains):
        await fill_users(ctx, store, users[index :: len(domains)], domain, CONFIG_NAMES, make)


@dataclass(frozen=True, slots=True)
class SeededDatabase:
    engine: AsyncEngine
    users: list[uuid.UUID]


@asynccontextmanager
async def seeded_database(ctx: BenchContext) -> AsyncIterator[SeededDatabase]:
    """The seeded data set (20 domains) in ``ctx.database_url``, whose BEP-1052 tables
    are reset first, behind an engine with a connection per concurrent task; disposed
    when the block ends."""
    assert ctx.database_url is not None
    engine = create_async_engine(ctx.database_url, pool_size=ctx.sizes.tasks, max_overflow=10)
    try:
        await create_schema(engine)
        await reset(engine)
        plan = SeedPlan(domains=20, users=max(200, ctx.sizes.memory_users // 10))
        data = await write_rows(engine, plan_rows(plan))
        yield SeededDatabase(engine, list(data.users))
    finally:
        await engine.dispose()
