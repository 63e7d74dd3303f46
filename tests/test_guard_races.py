"""The guard under interleavings that a failed invalidation makes possible: single-flight,
the catalogue, shared replays, failed script reloads, probes, corrupt index keys."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from glide import TimeoutError as GlideTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine

from atomic_cache import AppConfigPolicyRepository, MyFragmentInput
from atomic_cache.resilience.breaker import BreakerState, CircuitBreaker
from atomic_cache.resilience.guard import GuardedCache
from atomic_cache.tools.embedded import EmbeddedValkey

from .repo_tools import ALL_SCOPES, Rig, count_sql, open_rig, until_cached
from .valkey_tools import raw_command


@pytest.fixture
async def rig(clean_db: AsyncEngine) -> AsyncIterator[Rig]:
    with EmbeddedValkey() as server:
        made = await open_rig(clean_db, server)
        yield made
        await made.client.close()


async def make_read_only(rig: Rig) -> None:
    """The node becomes a replica (of a primary that is not there): reads still work,
    every write answers READONLY, as on an old primary after a failover."""
    await raw_command(rig.server.port, "REPLICAOF", "127.0.0.1", "1")


async def write(rig: Rig, user: uuid.UUID, v: int) -> None:
    result = await rig.repo.bulk_update_my(
        user, [MyFragmentInput(name="webui", extra_config={"v": v})]
    )
    assert result.failures == [] and len(result.successes) == 1


async def seed(rig: Rig, *users: uuid.UUID) -> None:
    for user in users:
        await rig.repo.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"v": 1})])
        await until_cached(rig, user, "webui")


async def test_a_read_after_a_failed_invalidation_never_joins_an_older_flight(
    rig: Rig,
) -> None:
    """READONLY leaves the epoch where it was, so the fill token alone cannot tell a
    flight started before the write from a read started after it."""
    a1 = rig.world.users[0]
    await rig.repo.bulk_create_my(a1, [MyFragmentInput(name="webui", extra_config={"v": 1})])
    real = rig.repo._db.merged_configs
    reached, release = asyncio.Event(), asyncio.Event()

    async def first_query_waits(user: uuid.UUID, names: Sequence[str] | None = None) -> Any:
        result = await real(user, names)
        if not reached.is_set():
            reached.set()  # the early reader has read v1 and holds it
            await release.wait()
        return result

    rig.repo._db.merged_configs = first_query_waits  # type: ignore[method-assign,assignment]
    flights = rig.repo._flights
    real_run = flights.run
    second_flight_call = asyncio.Event()
    calls = 0

    async def run(key: Any, compute: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            second_flight_call.set()
        return await real_run(key, compute)

    flights.run = run  # type: ignore[method-assign]
    early = asyncio.create_task(rig.repo.app_config(a1, "webui"))
    await reached.wait()
    await make_read_only(rig)
    await write(rig, a1, 2)
    assert rig.repo._cache.pending  # READONLY: kept for replay, epoch unchanged
    late = asyncio.create_task(rig.repo.app_config(a1, "webui"))  # after the write
    await second_flight_call.wait()  # the late reader asked for a flight
    await asyncio.sleep(0.05)  # and, if it joined the early one, now waits on it
    release.set()
    assert (await early).config == {"v": 1}  # began before the write: allowed
    assert (await late).config == {"v": 2}


async def test_a_new_policy_shows_while_the_catalogue_invalidation_is_pending(
    rig: Rig,
) -> None:
    a1 = rig.world.users[0]
    await rig.repo.my_app_configs(a1)
    with count_sql(rig.engine) as sql:
        assert [c.name for c in await rig.repo.my_app_configs(a1)] == ["limits", "theme", "webui"]
    assert len(sql) == 0  # the catalogue is cached
    await make_read_only(rig)
    await AppConfigPolicyRepository(rig.engine, cache=rig.cache).create("zeta", ALL_SCOPES)
    assert rig.repo._cache.pending.drop_catalogue
    names = [c.name for c in await rig.repo.my_app_configs(rig.world.users[0])]
    assert names == ["limits", "theme", "webui", "zeta"]


async def test_readers_share_one_failing_replay_and_space_the_next(rig: Rig) -> None:
    """READONLY: the replay fails, reads of other slices go on hitting the cache; a burst
    of readers costs one replay round trip, and none follows within the cool-down."""
    a1, a2 = rig.world.domains["alpha"]
    await seed(rig, a1, a2)
    guard = GuardedCache.of(rig.cache)
    guard.breaker = CircuitBreaker(cooldown_s=3600)  # the replay's retry spacing
    await make_read_only(rig)
    await write(rig, a1, 2)
    before = rig.repo.stats().fall_throughs["readonly"]
    with count_sql(rig.engine) as sql:
        burst = await asyncio.gather(*(rig.repo.app_config(a2, "webui") for _ in range(50)))
    assert {tuple(sorted((d.config or {}).items())) for d in burst} == {(("v", 1),)}
    assert len(sql) == 0  # the uncovered slice is still served by Valkey
    assert rig.repo.stats().fall_throughs["readonly"] == before + 1  # one replay for all
    await rig.repo.app_config(a2, "webui")
    assert rig.repo.stats().fall_throughs["readonly"] == before + 1  # none in the cool-down
    assert (await rig.repo.app_config(a1, "webui")).config == {"v": 2}  # covered: database


async def test_readers_share_one_replay_that_times_out_and_skip_their_reads(
    rig: Rig,
) -> None:
    """Paused server: readers that waited on the failed replay do not send a read too."""
    a1, a2 = rig.world.domains["alpha"]
    await seed(rig, a1, a2)
    guard = GuardedCache.of(rig.cache)
    guard.breaker = CircuitBreaker(failure_threshold=100, cooldown_s=3600)
    real = rig.cache.invalidate_many
    failing = GlideTimeoutError("timed out")

    async def timing_out(*args: Any, **kwargs: Any) -> int:
        raise failing

    rig.cache.invalidate_many = timing_out  # type: ignore[method-assign]
    await write(rig, a1, 2)  # its invalidation "timed out": pending
    rig.cache.invalidate_many = real  # type: ignore[method-assign]
    before = rig.repo.stats().fall_throughs
    rig.server.pause()
    try:
        configs = await asyncio.gather(*(rig.repo.app_config(a2, "webui") for _ in range(6)))
    finally:
        rig.server.resume()
    assert [c.config for c in configs] == [{"v": 1}] * 6  # from PostgreSQL
    after = rig.repo.stats().fall_throughs
    assert after["timeout"] - before["timeout"] == 1  # the one shared replay
    assert after["pending_invalidation"] - before.get("pending_invalidation", 0) == 6


class ScriptLoadTimesOut:
    """A glide client whose next ``fail_loads`` SCRIPT LOADs time out, as when the server
    stalls between a NOSCRIPT reply and the reload."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.fail_loads = 0

    async def custom_command(self, command: list[str]) -> Any:
        if command[:2] == ["SCRIPT", "LOAD"] and self.fail_loads:
            self.fail_loads -= 1
            raise GlideTimeoutError("timed out")
        return await self.inner.custom_command(command)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_failed_script_reload_never_escapes_a_write_or_a_read(rig: Rig) -> None:
    a1 = rig.world.users[0]
    await seed(rig, a1)
    flaky = ScriptLoadTimesOut(rig.client)
    rig.cache._client = flaky  # type: ignore[assignment]
    await raw_command(rig.server.port, "SCRIPT", "FLUSH")
    flaky.fail_loads = 1
    await write(rig, a1, 2)  # NOSCRIPT, then the reload times out: no exception
    assert rig.repo._cache.pending
    assert (await rig.repo.app_config(a1, "webui")).config == {"v": 2}
    await until_cached(rig, a1, "webui")
    assert not rig.repo._cache.pending
    assert (await rig.repo.app_config(a1, "webui")).config == {"v": 2}


async def test_a_probe_whose_reload_fails_reopens_the_breaker(rig: Rig) -> None:
    guard = GuardedCache.of(rig.cache)
    guard.breaker = CircuitBreaker(failure_threshold=1, cooldown_s=0.01)
    flaky = ScriptLoadTimesOut(rig.client)
    rig.cache._client = flaky  # type: ignore[assignment]
    a1 = rig.world.users[0]
    guard.breaker.record_failure(GlideTimeoutError("timed out"))
    await raw_command(rig.server.port, "SCRIPT", "FLUSH")
    flaky.fail_loads = 1
    await asyncio.sleep(0.02)
    await rig.repo.app_config(a1, "webui")  # sets off the probe: NOSCRIPT, reload fails
    assert guard._probe is not None
    await guard._probe
    assert guard.stats().breaker_state == "open"
    await asyncio.sleep(0.02)
    await rig.repo.app_config(a1, "webui")  # the next probe reloads and succeeds
    assert guard._probe is not None
    await guard._probe
    assert guard.stats().breaker_state == "closed"


async def test_probes_never_pile_up(rig: Rig) -> None:
    """A probe may take the whole request timeout (300 ms here), longer than the
    cool-down (50 ms): still only one is out at a time."""
    a1 = rig.world.users[0]
    guard = GuardedCache.of(rig.cache)
    rig.server.pause()
    try:
        most = 0
        for _ in range(40):
            await rig.repo.app_config(a1, "webui")
            probes = [
                task
                for task in asyncio.all_tasks()
                if "_send_probe" in repr(task.get_coro()) and not task.done()
            ]
            most = max(most, len(probes))
            await asyncio.sleep(0.01)
    finally:
        rig.server.resume()
    assert most == 1
    assert guard.stats().breaker_state != "closed"


async def test_writes_while_the_breaker_is_open_log_once(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    guard = GuardedCache.of(rig.cache)
    guard.breaker = CircuitBreaker(failure_threshold=1, cooldown_s=3600)
    a1 = rig.world.users[0]
    await rig.repo.bulk_create_my(a1, [MyFragmentInput(name="webui", extra_config={"v": 0})])
    rig.server.kill()
    await rig.repo.app_config(a1, "webui")
    assert guard.breaker.state is BreakerState.OPEN
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="atomic_cache"):
        for v in range(1, 21):
            await write(rig, a1, v)
    assert len(caplog.records) == 1
    assert f"not invalidated: USER {a1}[webui]" in caplog.records[0].getMessage()
    assert rig.repo.stats().failed_invalidations == 20
    rig.server.start()


@pytest.mark.parametrize("key", ["users index", "sequence"])
async def test_a_corrupt_index_key_is_reset_by_the_first_call_it_breaks(rig: Rig, key: str) -> None:
    """A fill (p:idx:users) or a read (the sequence) meets WRONGTYPE: the guard resets
    the index once, and the cache works again; nothing stale is served meanwhile."""
    a1 = rig.world.users[0]
    await seed(rig, a1)
    await write(rig, a1, 2)  # (an invalidation that meets a corrupt key resets it itself)
    target = rig.cache.keys.users_index if key == "users index" else rig.cache.keys.seq
    await rig.client.delete([target])
    await rig.client.custom_command(["SADD", target, "x"])
    for _ in range(3):
        assert (await rig.repo.app_config(a1, "webui")).config == {"v": 2}
    await until_cached(rig, a1, "webui")
    stats = rig.repo.stats()
    assert stats.index_resets == 1
    assert stats.fall_throughs["wrongtype"] >= 1
    kind = await rig.client.custom_command(["TYPE", target])
    assert kind in ({b"zset", "zset"} if key == "users index" else {b"hash", "hash"})


def test_the_guard_lives_and_dies_with_its_source(rig: Rig) -> None:
    import gc
    import weakref

    from atomic_cache import AppConfigFragmentCacheSource

    source = AppConfigFragmentCacheSource(rig.client, rig.cache._registry)
    guard = GuardedCache.of(source)
    assert GuardedCache.of(source) is guard
    gone = weakref.ref(source)
    del source, guard
    gc.collect()
    assert gone() is None


async def test_a_write_cancelled_after_its_commit_still_invalidates(rig: Rig) -> None:
    """A deadline or a disconnect cancels the write while its invalidation is out: the
    invalidation still lands, so no stale value outlives the write."""
    a1 = rig.world.users[0]
    await seed(rig, a1)
    real = rig.cache.invalidate_many
    started, go_on = asyncio.Event(), asyncio.Event()

    async def slow_invalidation(*args: Any, **kwargs: Any) -> int:
        started.set()
        await go_on.wait()
        return await real(*args, **kwargs)

    rig.cache.invalidate_many = slow_invalidation  # type: ignore[method-assign]
    writing = asyncio.create_task(write(rig, a1, 2))
    await started.wait()  # committed; the invalidation is on its way
    writing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writing
    go_on.set()
    for _ in range(100):  # the shielded invalidation finishes on its own
        if (await rig.cache.lookup(a1, "webui")).value is None:
            break
        await asyncio.sleep(0.01)
    rig.cache.invalidate_many = real  # type: ignore[method-assign]
    assert (await rig.cache.lookup(a1, "webui")).value is None
    assert (await rig.repo.app_config(a1, "webui")).config == {"v": 2}


async def test_a_policy_refused_by_the_database_invalidates_nothing(rig: Rig) -> None:
    a1 = rig.world.users[0]
    await seed(rig, a1)
    policies = AppConfigPolicyRepository(rig.engine, cache=rig.cache)
    before = rig.repo.stats().invalidations
    with pytest.raises(ValueError, match="exists already"):
        await policies.create("webui", ALL_SCOPES)
    assert rig.repo.stats().invalidations == before
    assert (await rig.cache.lookup(a1, "webui")).value is not None  # still cached


async def test_reads_cut_short_by_their_caller_still_open_the_breaker(rig: Rig) -> None:
    """Callers whose deadline (50 ms) is shorter than the request timeout (300 ms) never
    see a cache error; background health checks tell the breaker instead."""
    a1 = rig.world.users[0]
    await seed(rig, a1)
    guard = GuardedCache.of(rig.cache)
    guard.breaker = CircuitBreaker(failure_threshold=3, cooldown_s=3600)
    rig.server.pause()
    try:
        for _ in range(100):
            try:
                async with asyncio.timeout(0.05):
                    await rig.repo.app_config(a1, "webui")
            except TimeoutError:
                pass
            if guard.stats().breaker_state == "open":
                break
            await asyncio.sleep(0.05)
        assert guard.stats().breaker_state == "open"
        async with asyncio.timeout(5):  # now served by PostgreSQL without touching Valkey
            assert (await rig.repo.app_config(a1, "webui")).config == {"v": 1}
    finally:
        rig.server.resume()


async def test_an_index_reset_never_holds_up_the_read_that_asked_for_it(rig: Rig) -> None:
    a1 = rig.world.users[0]
    await seed(rig, a1)
    real_reset, may_reset = rig.cache.reset_index, asyncio.Event()

    async def held_reset() -> int:
        await may_reset.wait()
        return await real_reset()

    rig.cache.reset_index = held_reset  # type: ignore[method-assign]
    stamps = rig.cache.keys.user_stamps(a1)  # the read misses; its fill meets WRONGTYPE
    await rig.client.delete([stamps])
    await rig.client.custom_command(["SADD", stamps, "x"])
    assert (await rig.repo.app_config(a1, "webui")).config == {"v": 1}  # from PostgreSQL
    guard = GuardedCache.of(rig.cache)
    assert guard._reset is not None and not guard._reset.done()  # still waiting
    may_reset.set()
    await guard._reset
    assert rig.repo.stats().index_resets == 1
    await until_cached(rig, a1, "webui")


async def test_a_busy_server_during_a_script_reload_is_not_a_rejected_script(
    clean_db: AsyncEngine,
) -> None:
    from glide import RequestError

    from atomic_cache import ScriptLoadError, ScriptRegistry, create_valkey_client

    from .valkey_tools import busy_script

    with EmbeddedValkey(extra_args=["--busy-reply-threshold", "50"]) as server:
        client = await create_valkey_client(server.url, request_timeout_ms=2000)
        try:
            await client.custom_command(["PING"])  # connected: SCRIPT LOAD itself meets BUSY
            async with busy_script(server.port):
                assert await ScriptRegistry().load(client) is False  # start-up goes on
                with pytest.raises(RequestError, match="BUSY") as raised:
                    await ScriptRegistry().load(client, required=True)
            assert not isinstance(raised.value, ScriptLoadError)
        finally:
            await client.close()


async def test_corrupt_entries_on_a_read_only_node_are_misses_logged_once(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    a1 = rig.world.users[0]
    await rig.client.set(rig.cache.keys.entry(a1, "webui"), "{not json")
    await make_read_only(rig)
    with caplog.at_level(logging.WARNING, logger="atomic_cache"):
        for _ in range(20):
            found = await rig.cache.lookup(a1, "webui")
            assert found.value is None and found.fill_token is not None
    removals = [r for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(removals) == 1
    assert rig.cache.metrics.corrupt_entries_removed == 0


async def test_a_read_that_a_replay_overlapped_is_answered_by_the_database(rig: Rig) -> None:
    """A write's invalidation failed (READONLY), so its slice is pending. A read goes out
    and the server runs it before the replay: it holds the older value. The replay lands
    and clears the slice before that reply is looked at, so the pending check alone would
    let the older value through, after the write had returned."""
    a1 = rig.world.users[0]
    await seed(rig, a1)
    guard = GuardedCache.of(rig.cache)
    guard.breaker = CircuitBreaker(cooldown_s=30.0)  # no replay from the read itself
    await make_read_only(rig)
    await write(rig, a1, 2)  # committed; its invalidation refused, kept pending
    assert len(guard.pending) == 1
    real_lookup = rig.cache.lookup
    ran, release = asyncio.Event(), asyncio.Event()

    async def lookup_held(*args: Any, **kwargs: Any) -> Any:
        found = await real_lookup(*args, **kwargs)  # run by the server now: the older value
        ran.set()
        await release.wait()
        return found

    rig.cache.lookup = lookup_held  # type: ignore[method-assign]
    reader = asyncio.create_task(rig.repo.app_config(a1, "webui"))
    await ran.wait()
    await raw_command(rig.server.port, "REPLICAOF", "NO", "ONE")
    assert await guard.replay(retry_now=True)  # landed: nothing pending any more
    before = guard.metrics.fall_throughs["pending_invalidation"]
    release.set()
    assert (await reader).config == {"v": 2}
    assert guard.metrics.fall_throughs["pending_invalidation"] == before + 1
    rig.cache.lookup = real_lookup  # type: ignore[method-assign]
    await until_cached(rig, a1, "webui")
    assert (await rig.repo.app_config(a1, "webui")).config == {"v": 2}
