"""CircuitBreaker: stop paying the request timeout while Valkey is down or stalled.

After ``failure_threshold`` consecutive health failures the breaker opens and the cache
is bypassed (the repositories go straight to PostgreSQL) for ``cooldown_s``; then one
probe is let through (half-open): success closes it, failure opens it again. The
repositories send that probe from a background task, so after the failures that open it
no request waits on a dead or paused server. One log line per state change, none per
request.

Why not glide 2.6's ``ClientCircuitBreakerConfiguration`` (measured, see docs/failure-modes.md):
with its defaults (50 errors in 10 s, timeouts not counted) a paused server never trips
it; set to count timeouts it trips as fast as this one, but its half-open probes are
real requests that wait the full timeout, server error replies such as BUSY do not count,
and it tells the library nothing, so invalidations could not skip the I/O while it is
open. It can still be turned on for a client shared with other work
(``create_valkey_client(client_circuit_breaker=...)``); its rejections count as an open
circuit here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import StrEnum

from .errors import counts_against_health

log = logging.getLogger("atomic_cache")


class BreakerState(StrEnum):
    """Where a ``CircuitBreaker`` is: CLOSED (the cache is used), OPEN (bypassed until the
    cool-down is over), HALF_OPEN (one probe decides). The value is what ``stats()`` and
    the logs show."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Closed -> open after ``failure_threshold`` consecutive health failures; open ->
    half-open after ``cooldown_s``, when one probe may go out; its outcome closes or
    reopens it. The repositories send that probe from a background task, so no request
    waits on it."""

    def __init__(
        self,
        failure_threshold: int = 3,
        cooldown_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or cooldown_s <= 0:
            raise ValueError("failure_threshold must be >= 1 and cooldown_s > 0")
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self.state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self.transitions = 0
        self.on_change: Callable[[BreakerState], None] | None = None

    def allow(self) -> bool:
        """May a cache call go out now? In half-open, only the single probe may."""
        if self.state is BreakerState.CLOSED:
            return True
        now = self._clock()
        if now - self._opened_at < self.cooldown_s:
            return False
        self._opened_at = now
        if self.state is BreakerState.OPEN:
            self._move(BreakerState.HALF_OPEN, "cool-down over, letting one probe through")
        # else half-open with the probe never reported (its task was cancelled): another
        return True

    def reset(self, why: str) -> None:
        """Close now: the server behind the cache changed (a failover) and has just
        answered; the failures counted were the old one's."""
        self._failures = 0
        if self.state is not BreakerState.CLOSED:
            self._move(BreakerState.CLOSED, why)

    def record_success(self) -> None:
        """A cache call succeeded: the count of consecutive failures starts over, and a
        half-open or open breaker closes."""
        self._failures = 0
        if self.state is not BreakerState.CLOSED:
            self._move(BreakerState.CLOSED, "probe succeeded, using the cache again")

    def record_failure(self, error: BaseException) -> None:
        """A cache call failed with ``error``. Failures of the server's health
        (connection, timeout, BUSY, LOADING, anything unexpected) count: the
        ``failure_threshold``-th in a row opens a closed breaker, and a failed probe
        reopens a half-open one. A data or capacity error a live server answered with
        (WRONGTYPE, OOM, READONLY, a lost script, an odd reply) counts as a success."""
        if not counts_against_health(error):
            # The server answered (OOM, WRONGTYPE, READONLY...): it is up. Counting this as
            # a success also keeps a probe that met such an error from leaving the breaker
            # half-open for ever.
            self.record_success()
            return
        self._failures += 1
        if self.state is BreakerState.HALF_OPEN or (
            self.state is BreakerState.CLOSED and self._failures >= self.failure_threshold
        ):
            self._opened_at = self._clock()
            self._move(
                BreakerState.OPEN,
                f"bypassing the cache for {self.cooldown_s:g}s after"
                f" {self._failures} failure(s); last: {error}",
            )

    def _move(self, state: BreakerState, why: str) -> None:
        log.warning("cache circuit %s -> %s: %s", self.state.value, state.value, why)
        self.state = state
        self.transitions += 1
        if self.on_change is not None:
            self.on_change(state)
