"""The circuit breaker: states on a fake clock, and on a dead real server."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from glide import ClosingError, GlideClient, RequestError
from glide import ConnectionError as GlideConnectionError
from glide import TimeoutError as GlideTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine

from atomic_cache import (
    AppConfigFragmentCacheSource,
    CacheError,
    KeySchema,
    MyFragmentInput,
    ScriptRegistry,
    create_valkey_client,
)
from atomic_cache.glide_compat import (
    HAS_CLIENT_CIRCUIT_BREAKER,
    CircuitBreakerError,
    ClientCircuitBreakerConfiguration,
)
from atomic_cache.resilience.breaker import BreakerState, CircuitBreaker
from atomic_cache.resilience.errors import (
    FALL_THROUGH_CAUSES,
    CircuitOpen,
    cause_of,
    counts_against_health,
)
from atomic_cache.resilience.guard import GuardedCache
from atomic_cache.resilience.logs import LogThrottle
from atomic_cache.tools.embedded import EmbeddedValkey

from .repo_tools import Rig, count_sql, open_rig, until_cached


def state_of(breaker: CircuitBreaker) -> BreakerState:
    return breaker.state  # a call, so the checker does not narrow between transitions


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_probes_once_and_closes(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=5, clock=clock)
    timeout = GlideTimeoutError("timed out")
    with caplog.at_level(logging.WARNING, logger="atomic_cache"):
        for _ in range(2):
            assert breaker.allow()
            breaker.record_failure(timeout)
        assert state_of(breaker) is BreakerState.CLOSED
        breaker.record_failure(timeout)
        assert state_of(breaker) is BreakerState.OPEN
        assert [breaker.allow() for _ in range(5)] == [False] * 5
        clock.now += 5
        assert breaker.allow() is True  # the one probe
        assert state_of(breaker) is BreakerState.HALF_OPEN
        assert breaker.allow() is False  # others keep bypassing while it is out
        breaker.record_failure(timeout)
        assert state_of(breaker) is BreakerState.OPEN and breaker.allow() is False
        clock.now += 5
        assert breaker.allow() is True
        breaker.record_success()
        assert state_of(breaker) is BreakerState.CLOSED and breaker.allow() is True
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "cache circuit closed -> open",
        "cache circuit open -> half_open",
        "cache circuit half_open -> open",
        "cache circuit open -> half_open",
        "cache circuit half_open -> closed",
    ]
    assert breaker.transitions == 5


def test_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker(failure_threshold=2, clock=FakeClock())
    breaker.record_failure(GlideConnectionError("refused"))
    breaker.record_success()
    breaker.record_failure(GlideConnectionError("refused"))
    assert state_of(breaker) is BreakerState.CLOSED


@pytest.mark.parametrize(
    ("error", "counts", "cause"),
    [
        (GlideTimeoutError("timed out"), True, "timeout"),
        (GlideConnectionError("Connection refused"), True, "connection"),
        (ClosingError("the client was closed"), True, "connection"),
        (RequestError("Received connection error `Broken pipe`"), True, "connection"),
        # As glide 2.6 words them (measured), then as the server sends them.
        (RequestError("BUSY: Valkey is busy running a script. You can only call"), True, "busy"),
        (
            RequestError(
                "An error was signalled by the server: - BusyLoadingError:"
                " Valkey is loading the dataset in memory"
            ),
            True,
            "loading",
        ),
        (
            RequestError(
                "An error was signalled by the server: - ReadOnly:"
                " You can't write against a read only replica."
            ),
            False,
            "readonly",
        ),
        (RequestError("OOM: command not allowed when used memory > 'maxmemory'."), False, "oom"),
        (
            RequestError("WRONGTYPE: Operation against a key holding the wrong kind of value"),
            False,
            "wrongtype",
        ),
        (
            RequestError("An error was signalled by the server: - NoScriptError: No matching"),
            False,
            "noscript",
        ),
        (
            RequestError("An error was signalled by the server: - ResponseError: unknown command"),
            True,
            "error",
        ),
        (RequestError("BUSY Valkey is busy running a script"), True, "busy"),
        (RequestError("LOADING Valkey is loading the dataset in memory"), True, "loading"),
        (
            RequestError("WRONGTYPE Operation against a key holding the wrong kind of value"),
            False,
            "wrongtype",
        ),
        (RequestError("OOM command not allowed when used memory > 'maxmemory'"), False, "oom"),
        (RequestError("READONLY You can't write against a read only replica."), False, "readonly"),
        (CircuitBreakerError("Client circuit breaker is open"), True, "circuit_open"),
        (CacheError("get.lua answered 'x'"), False, "error"),
        (CircuitOpen("cache circuit open"), True, "circuit_open"),
        (RuntimeError("something unexpected"), True, "error"),  # unknown trouble: counts
        (ValueError("name is longer than 256 characters"), False, "invalid"),  # bad input
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), False, "invalid"),
    ],
)
def test_which_errors_count_and_their_cause(error: BaseException, counts: bool, cause: str) -> None:
    assert counts_against_health(error) is counts
    assert cause_of(error) == cause
    assert cause in FALL_THROUGH_CAUSES


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(failure_threshold=0)


@asynccontextmanager
async def clocked_rig(
    engine: AsyncEngine, failure_threshold: int = 1
) -> AsyncIterator[tuple[Rig, GuardedCache, FakeClock, uuid.UUID]]:
    """A rig whose breaker keeps a fake clock (30 s cool-down), and a user whose webui
    (v1) is cached."""
    with EmbeddedValkey() as server:
        rig = await open_rig(engine, server)
        try:
            clock = FakeClock()
            guard = GuardedCache.of(rig.cache)
            guard.breaker = CircuitBreaker(
                failure_threshold=failure_threshold, cooldown_s=30, clock=clock
            )
            a1 = rig.world.users[0]
            await rig.repo.bulk_create_my(
                a1, [MyFragmentInput(name="webui", extra_config={"v": 1})]
            )
            await until_cached(rig, a1, "webui")
            yield rig, guard, clock, a1
        finally:
            await rig.client.close()


async def test_dead_valkey_is_bypassed_then_used_again(
    clean_db: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    async with clocked_rig(clean_db, failure_threshold=3) as (rig, guard, clock, a1):
        server = rig.server
        server.kill()
        for _ in range(10):
            assert (await rig.repo.app_config(a1, "webui")).config == {"v": 1}
        assert state_of(guard.breaker) is BreakerState.OPEN
        assert guard.stats().fall_throughs["circuit_open"] == 10 - 3  # three paid the timeout
        result = await rig.repo.bulk_update_my(
            a1, [MyFragmentInput(name="webui", extra_config={"v": 2})]
        )
        assert len(result.successes) == 1 and guard.pending  # kept for replay, no I/O
        assert guard.stats().fall_throughs["circuit_open"] == 10 - 3 + 1

        # While it stays open, requests log nothing: one line per state change only.
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="atomic_cache"):
            for _ in range(50):
                assert (await rig.repo.app_config(a1, "webui")).config == {"v": 2}
        assert caplog.records == []
        stats = rig.repo.stats()
        assert stats.fall_throughs["circuit_open"] == 7 + 1 + 50  # no replay tried: open
        assert "pending_invalidation" not in stats.fall_throughs  # no value came back
        assert stats.breaker_transitions == {"open": 1}

        server.start()
        assert (await rig.repo.app_config(a1, "webui")).config == {"v": 2}  # still open
        for _ in range(100):  # the client reconnects on its own schedule
            clock.now += 30
            await rig.repo.app_config(a1, "webui")
            if state_of(guard.breaker) is BreakerState.CLOSED and not guard.pending:
                break
            await asyncio.sleep(0.05)
        await until_cached(rig, a1, "webui")
        assert state_of(guard.breaker) is BreakerState.CLOSED and not guard.pending
        assert (await rig.repo.app_config(a1, "webui")).config == {"v": 2}


async def test_glide_client_breaker_rejections_fall_through(clean_db: AsyncEngine) -> None:
    """With glide's own breaker on the client (counting timeouts), its fast rejections
    are served from PostgreSQL like any other open circuit."""
    if not HAS_CLIENT_CIRCUIT_BREAKER:  # glide before 2.6 has none: asking for it says so
        with pytest.raises(ValueError, match=r"valkey-glide 2\.6"):
            await create_valkey_client("valkey://127.0.0.1:1/0", client_circuit_breaker=object())
        return
    with EmbeddedValkey() as server:
        rig = await open_rig(clean_db, server)
        glide_breaker = ClientCircuitBreakerConfiguration(
            min_errors=3, count_timeouts=True, open_timeout_ms=60_000
        )
        client = await create_valkey_client(
            server.url, request_timeout_ms=300, client_circuit_breaker=glide_breaker
        )
        rig.cache._client = client
        guard = GuardedCache.of(rig.cache)
        guard.breaker = CircuitBreaker(failure_threshold=1000)  # glide's trips first
        try:
            a1 = rig.world.users[0]
            await rig.repo.bulk_create_my(
                a1, [MyFragmentInput(name="webui", extra_config={"v": 1})]
            )
            await until_cached(rig, a1, "webui")
            server.pause()
            try:
                for _ in range(10):
                    assert (await rig.repo.app_config(a1, "webui")).config == {"v": 1}
            finally:
                server.resume()
            causes = rig.repo.stats().fall_throughs
            assert causes.get("timeout", 0) >= 3 and causes.get("circuit_open", 0) >= 1
            assert sum(causes.values()) == 10
        finally:
            await client.close()
            await rig.client.close()


def test_a_server_answer_closes_a_half_open_breaker() -> None:
    """A probe that meets OOM, WRONGTYPE or READONLY reached a live server: the breaker
    closes instead of waiting half-open for a success that may never come."""
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=5, clock=clock)
    breaker.record_failure(GlideTimeoutError("timed out"))
    clock.now += 5
    assert breaker.allow() is True and state_of(breaker) is BreakerState.HALF_OPEN
    breaker.record_failure(RequestError("OOM: command not allowed when used memory"))
    assert state_of(breaker) is BreakerState.CLOSED and breaker.allow() is True


def test_a_lost_probe_is_replaced_after_a_cool_down() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=5, clock=clock)
    breaker.record_failure(GlideTimeoutError("timed out"))
    clock.now += 5
    assert breaker.allow() is True  # the probe, which never reports back
    clock.now += 4.9
    assert breaker.allow() is False
    clock.now += 0.1
    assert breaker.allow() is True and state_of(breaker) is BreakerState.HALF_OPEN
    assert breaker.transitions == 2  # closed -> open -> half_open; no new state


async def test_no_request_waits_on_the_probe(clean_db: AsyncEngine) -> None:
    """Valkey paused: once open, the breaker's probe goes out in the background and the
    request that set it off is answered by PostgreSQL while the probe still waits."""
    async with clocked_rig(clean_db) as (rig, guard, clock, a1):
        server = rig.server
        # The probe's round trip is held until the read has returned: no race with the
        # request timeout, whatever the machine's speed.
        real_ping, probe_may_go = rig.cache.ping, asyncio.Event()

        async def held_ping() -> str:
            await probe_may_go.wait()
            return await real_ping()

        rig.cache.ping = held_ping  # type: ignore[method-assign]
        server.pause()
        try:
            assert (await rig.repo.app_config(a1, "webui")).config == {"v": 1}  # opens it
            assert state_of(guard.breaker) is BreakerState.OPEN
            clock.now += 30
            with count_sql(rig.engine) as sql:
                assert (await rig.repo.app_config(a1, "webui")).config == {"v": 1}
            assert len(sql) == 1  # served by PostgreSQL, without waiting on the probe
            probe = guard._probe
            assert probe is not None and not probe.done()
            assert state_of(guard.breaker) is BreakerState.HALF_OPEN
            probe_may_go.set()
            await probe
            assert state_of(guard.breaker) is BreakerState.OPEN  # it timed out
        finally:
            server.resume()
        clock.now += 30
        await rig.repo.app_config(a1, "webui")  # sets off the next probe
        assert guard._probe is not None
        await guard._probe
        assert state_of(guard.breaker) is BreakerState.CLOSED
        assert rig.repo.stats().breaker_transitions == {
            "open": 2,
            "half_open": 2,
            "closed": 1,
        }


def test_breaker_settings_come_from_the_cache_source(
    valkey: GlideClient, registry: ScriptRegistry, keys: KeySchema
) -> None:
    breaker = CircuitBreaker(failure_threshold=7, cooldown_s=0.5)
    cache = AppConfigFragmentCacheSource(valkey, registry, keys=keys, breaker=breaker)
    assert GuardedCache.of(cache).breaker is breaker
    default = AppConfigFragmentCacheSource(valkey, registry, keys=keys)
    assert (default.breaker.failure_threshold, default.breaker.cooldown_s) == (3, 2.0)


async def test_the_probe_replays_missed_invalidations_at_once(clean_db: AsyncEngine) -> None:
    """Other processes may serve an entry until its invalidation lands, so a successful
    probe replays the missed ones itself instead of waiting for the next request."""
    async with clocked_rig(clean_db) as (rig, guard, clock, a1):
        server = rig.server
        server.pause()
        try:
            assert (await rig.repo.app_config(a1, "webui")).config == {"v": 1}  # opens it
            await rig.repo.bulk_update_my(
                a1, [MyFragmentInput(name="webui", extra_config={"v": 2})]
            )
            assert guard.pending  # kept, with no I/O
        finally:
            server.resume()
        assert (await rig.cache.lookup(a1, "webui")).value is not None  # the old entry

        clock.now += 30
        assert (await rig.repo.app_config(a1, "webui")).config == {"v": 2}  # probe starts
        assert guard._probe is not None
        await guard._probe
        assert not guard.pending and state_of(guard.breaker) is BreakerState.CLOSED
        assert (await rig.cache.lookup(a1, "webui")).value is None  # dropped by the probe
        stats = rig.repo.stats()
        assert (stats.failed_invalidations, stats.replayed_invalidations) == (1, 1)


def test_log_throttle_lets_one_line_through_per_interval() -> None:
    clock = FakeClock()
    throttle = LogThrottle(interval_s=10, clock=clock)
    assert throttle.due("fill/oom") == 0
    assert [throttle.due("fill/oom") for _ in range(4)] == [None] * 4
    assert throttle.due("read/timeout") == 0  # another kind of failure has its own
    clock.now += 10
    assert throttle.due("fill/oom") == 4  # and says how many it held back
    assert throttle.due("fill/oom") is None
