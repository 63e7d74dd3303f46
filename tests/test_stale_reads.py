"""Stale reads that once went unnoticed, each pinned by a deterministic test: two
processes sharing one server, the order of commit and invalidation, the catalogue."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from atomic_cache import (
    AppConfigData,
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    AppConfigPolicyRepository,
    FragmentInput,
    FragmentKey,
    KeySchema,
    MyFragmentInput,
    ScopeType,
    ScriptRegistry,
    create_valkey_client,
)
from atomic_cache.policy.schema import app_config_fragments, app_config_policies

from .repo_tools import make_world
from .test_concurrency import run_mixed_load


def version(data: AppConfigData) -> int:
    assert data.config is not None
    return int(data.config["v"])


@pytest.fixture
async def other_process(
    valkey_url: str, registry: ScriptRegistry, keys: KeySchema
) -> AsyncIterator[AppConfigFragmentCacheSource]:
    """A second cache source on its own connection, same server and prefix: what another
    process of the service would hold."""
    client = await create_valkey_client(valkey_url, request_timeout_ms=5000)
    yield AppConfigFragmentCacheSource(client, registry, keys=keys)
    await client.close()


async def test_a_reader_never_joins_a_flight_older_than_another_process_write(
    clean_db: AsyncEngine,
    cache: AppConfigFragmentCacheSource,
    other_process: AppConfigFragmentCacheSource,
) -> None:
    """Process A reads v0 from the database and holds its fill; process B writes v1 and
    returns. A read in A that starts now must not share A's older query: its lookup saw
    B's invalidation (the sequence moved), though A's own generation did not."""
    world = await make_world(clean_db, cache)
    user = world.users[0]
    here = AppConfigFragmentRepository(clean_db, cache=cache)
    there = AppConfigFragmentRepository(clean_db, cache=other_process)
    await there.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"v": 0})])

    real = here._db.merged_configs
    first_read, release = asyncio.Event(), asyncio.Event()

    async def first_query_waits(user_id: uuid.UUID, names: Sequence[str] | None = None) -> Any:
        result = await real(user_id, names)
        if not first_read.is_set():
            first_read.set()
            await release.wait()
        return result

    here._db.merged_configs = first_query_waits  # type: ignore[method-assign]
    older = asyncio.create_task(here.app_config(user, "webui"))
    await first_read.wait()
    await there.bulk_update_my(user, [MyFragmentInput(name="webui", extra_config={"v": 1})])
    newer = asyncio.create_task(here.app_config(user, "webui"))
    await asyncio.wait({newer}, timeout=2)  # a read of its own completes; a joiner waits
    release.set()
    assert version(await older) == 0  # began before the write returned: allowed
    assert version(await newer) == 1


async def test_every_write_invalidates_only_after_its_commit(
    clean_db: AsyncEngine, cache: AppConfigFragmentCacheSource
) -> None:
    """When an invalidation runs, its change must be visible to every other connection:
    an invalidation before the commit lets a reader refill the old value in between."""
    world = await make_world(clean_db, cache)
    user = world.users[0]
    repo = AppConfigFragmentRepository(clean_db, cache=cache)
    policies = AppConfigPolicyRepository(clean_db, cache=cache)
    seen: list[tuple[list[object], object]] = []
    real = cache.invalidate_many

    async def committed_first(targets: Any, **kwargs: Any) -> int:
        async with clean_db.connect() as conn:  # another connection: sees commits only
            fragments = (
                await conn.execute(
                    select(app_config_fragments.c.extra_config).where(
                        app_config_fragments.c.scope_id == str(user)
                    )
                )
            ).all()
            policy = (
                await conn.execute(
                    select(app_config_policies.c.scope_sources).where(
                        app_config_policies.c.config_name == "webui"
                    )
                )
            ).scalar_one_or_none()
        seen.append(([row[0] for row in fragments], policy))
        result: int = await real(targets, **kwargs)
        return result

    cache.invalidate_many = committed_first  # type: ignore[method-assign]
    await repo.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"v": 1})])
    await repo.bulk_update_my(user, [MyFragmentInput(name="webui", extra_config={"v": 2})])
    await repo.admin_bulk_update(
        [
            FragmentInput(
                scope_type=ScopeType.USER, scope_id=str(user), name="webui", extra_config={"v": 3}
            )
        ]
    )
    await repo.admin_bulk_delete(
        [FragmentKey(scope_type=ScopeType.USER, scope_id=str(user), name="webui")]
    )
    await policies.update("webui", [ScopeType.PUBLIC, ScopeType.USER])
    await policies.delete("webui")
    assert [fragments for fragments, _ in seen] == [[{"v": 1}], [{"v": 2}], [{"v": 3}], [], [], []]
    assert [policy for _, policy in seen][3:] == [
        ["public", "domain", "domain_user_defaults", "user"],
        ["public", "user"],
        None,
    ]


async def test_a_stale_catalogue_fill_leaves_the_catalogue_alone(
    cache: AppConfigFragmentCacheSource,
) -> None:
    """A policy created while a reader lists every name: the reader's fill must neither
    land nor replace the catalogue (which would hide the new name)."""
    user = uuid.uuid4()
    await cache.invalidate_for_scope(ScopeType.USER, str(uuid.uuid4()))  # a sequence
    found = await cache.lookup_all(user)
    assert found.names is None
    await cache.invalidate_for_policy("new")  # the policy "new" was created meanwhile
    stale = AppConfigData(user_id=user, domain_name="d", name="webui", config={"v": 0})
    assert not await cache.set_many(user, [stale], found.fill_token, catalogue=["webui"])
    after = await cache.lookup_all(user)
    assert after.names is None and after.values == {}
    fresh = await cache.lookup_all(user)
    assert await cache.set_many(user, [stale], fresh.fill_token, catalogue=["new", "webui"])
    assert (await cache.lookup_all(user)).names == ["new", "webui"]


async def test_two_processes_under_load_never_read_older_than_a_returned_write(
    clean_db: AsyncEngine,
    cache: AppConfigFragmentCacheSource,
    other_process: AppConfigFragmentCacheSource,
) -> None:
    reads, stale = await run_mixed_load(clean_db, [cache, other_process], use_tokens=True)
    assert reads > 100
    assert stale == 0
