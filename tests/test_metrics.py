"""Counters, the stats() snapshot and the Prometheus exporter, on real servers."""

from __future__ import annotations

import asyncio

import pytest
from glide import GlideClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from atomic_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    AppConfigPolicyRepository,
    CacheStats,
    KeySchema,
    MyFragmentInput,
    ScriptRegistry,
    register_prometheus,
)
from atomic_cache.tools.embedded import EmbeddedValkey

from .repo_tools import World, make_world, open_rig


@pytest.fixture
async def cache(valkey: GlideClient, keys: KeySchema) -> AppConfigFragmentCacheSource:
    """A registry of its own: the shared one may have reloaded after other tests flushed
    the server's scripts, and script_reloads is asserted exactly here."""
    registry = ScriptRegistry()
    await registry.load(valkey)
    return AppConfigFragmentCacheSource(valkey, registry, keys=keys)


@pytest.fixture
async def world(clean_db: AsyncEngine, cache: AppConfigFragmentCacheSource) -> World:
    return await make_world(clean_db, cache)  # three policy creations: three invalidations


@pytest.fixture
def repo(clean_db: AsyncEngine, cache: AppConfigFragmentCacheSource) -> AppConfigFragmentRepository:
    return AppConfigFragmentRepository(clean_db, cache=cache)


async def test_counters_follow_reads_fills_and_invalidations(
    clean_db: AsyncEngine,
    cache: AppConfigFragmentCacheSource,
    repo: AppConfigFragmentRepository,
    world: World,
) -> None:
    user = world.users[0]
    await repo.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"v": 1})])
    await repo.app_config(user, "webui")  # miss, fill
    await repo.app_config(user, "webui")  # hit
    await repo.my_app_configs(user)  # no catalogue yet: 3 misses, 3 values filled at once
    await repo.my_app_configs(user)  # 3 hits
    await repo.bulk_update_my(user, [MyFragmentInput(name="webui", extra_config={"v": 2})])

    stats = repo.stats()
    assert stats == CacheStats(
        hits=4,
        misses=4,
        fills=4,
        refused_fills=0,
        fall_throughs={},
        invalidations=3 + 2,
        entries_dropped=1,  # the update dropped the user's webui entry
        failed_invalidations=0,
        replayed_invalidations=0,
        corrupt_entries_removed=0,
        script_reloads=0,
        breaker_transitions={},
        breaker_state="closed",
        pending_invalidations=0,
        new_registrations=1,  # its first use registered the cache with the database
    )
    assert stats.hit_ratio == 0.5
    assert stats.model_dump()["hit_ratio"] == 0.5
    # One set of counters per cache source, whichever repository asks.
    assert AppConfigPolicyRepository(clean_db, cache=cache).stats() == stats
    assert AppConfigFragmentRepository(clean_db, cache=cache).stats() == stats


async def test_without_a_cache_every_counter_is_zero(clean_db: AsyncEngine, world: World) -> None:
    plain = AppConfigFragmentRepository(clean_db)
    await plain.app_config(world.users[0], "webui")
    assert plain.stats() == CacheStats()
    assert plain.stats().hit_ratio == 0.0


async def test_corrupt_entry_is_counted_removed_and_refilled(
    repo: AppConfigFragmentRepository,
    world: World,
    valkey: GlideClient,
    keys: KeySchema,
) -> None:
    user = world.users[0]
    await valkey.set(keys.entry(user, "webui"), "{not json")
    assert (await repo.app_config(user, "webui")).config is None
    stats = repo.stats()
    assert (stats.corrupt_entries_removed, stats.misses, stats.fills, stats.hits) == (1, 1, 1, 0)
    await repo.app_config(user, "webui")
    assert repo.stats().hits == 1


async def test_a_fill_refused_by_an_invalidation_is_counted(
    repo: AppConfigFragmentRepository, cache: AppConfigFragmentCacheSource, world: World
) -> None:
    user = world.users[0]
    await cache.invalidate_for_policy("theme")  # the prefix has a sequence now
    missed = await cache.lookup(user, "webui")
    assert missed.value is None and missed.fill_token is not None
    await cache.invalidate_for_policy("webui")  # covers the entry
    await repo._fill(user, [await repo._load(user, "webui")], missed.fill_token)
    assert (repo.stats().fills, repo.stats().refused_fills) == (0, 1)
    assert (await cache.lookup(user, "webui")).value is None


async def test_prometheus_exporter_reads_the_snapshot_at_scrape_time(
    repo: AppConfigFragmentRepository, world: World
) -> None:
    registry = CollectorRegistry()
    register_prometheus(repo, registry=registry)
    user = world.users[0]
    await repo.app_config(user, "webui")
    await repo.app_config(user, "webui")

    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    assert samples[("atomic_cache_hits_total", ())] == 1
    assert samples[("atomic_cache_misses_total", ())] == 1
    assert samples[("atomic_cache_fills_total", ())] == 1
    assert samples[("atomic_cache_invalidations_total", ())] == 3
    assert samples[("atomic_cache_fall_throughs_total", (("cause", "timeout"),))] == 0
    assert samples[("atomic_cache_breaker_state", (("state", "closed"),))] == 1
    assert samples[("atomic_cache_breaker_state", (("state", "open"),))] == 0
    assert samples[("atomic_cache_pending_invalidations", ())] == 0

    await repo.app_config(user, "webui")  # a scrape sees the counters as they are now
    again = generate_latest(registry).decode()
    assert "atomic_cache_hits_total 2.0" in again.splitlines()


async def test_dead_server_counts_causes_breaker_changes_and_replays(
    clean_db: AsyncEngine,
) -> None:
    with EmbeddedValkey() as server:
        rig = await open_rig(clean_db, server)
        try:
            user = rig.world.users[0]
            await rig.repo.bulk_create_my(
                user, [MyFragmentInput(name="webui", extra_config={"v": 1})]
            )
            await rig.repo.app_config(user, "webui")
            before = rig.repo.stats()
            server.kill()
            for _ in range(3):
                await rig.repo.app_config(user, "webui")
            down = rig.repo.stats()
            assert down.breaker_state == "open"
            assert down.breaker_transitions == {"open": 1}
            assert sum(down.fall_throughs.values()) == 3
            assert set(down.fall_throughs) <= {"connection", "timeout"}

            await rig.repo.bulk_update_my(
                user, [MyFragmentInput(name="webui", extra_config={"v": 2})]
            )
            pending = rig.repo.stats()
            assert (pending.failed_invalidations, pending.pending_invalidations) == (1, 1)
            assert pending.invalidations == before.invalidations

            server.start()
            for _ in range(200):
                if (await rig.repo.app_config(user, "webui")).config == {"v": 2} and not (
                    rig.repo.stats().pending_invalidations
                ):
                    break
                await asyncio.sleep(0.02)  # the breaker's probe runs in the background
            after = rig.repo.stats()
            assert after.pending_invalidations == 0
            assert after.replayed_invalidations == 1
            assert after.invalidations == before.invalidations + 1
            assert after.breaker_state == "closed"
            assert after.breaker_transitions["closed"] >= 1
        finally:
            await rig.client.close()
