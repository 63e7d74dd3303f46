"""CircuitBreaker: stop paying the request timeout while Valkey is down or stalled.

After ``failure_threshold`` consecutive health failures the breaker opens and the cache
is bypassed (the repositories go straight to PostgreSQL) for ``cooldown_s``; then one
probe is let through (half-open): success closes it, failure opens it again. One log
line per state change, none per request.

Why not (only) glide 2.6's ``ClientCircuitBreakerConfiguration``: its defaults need 50
errors in a 10 s window and do not count timeouts, and a paused or overloaded server
produces nothing but timeouts, so each request would still wait the full request timeout.
This breaker counts them, trips after three, and also covers BUSY and LOADING.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import StrEnum

from glide import ClosingError, GlideError
from glide import ConnectionError as GlideConnectionError
from glide import TimeoutError as GlideTimeoutError

log = logging.getLogger("atomic_cache")

# Server replies that mean "the data is odd", not "the server is unwell": they must not
# open the breaker (reads keep working under OOM or on a read-only replica).
_NOT_HEALTH = ("WRONGTYPE", "OOM", "READONLY", "NoScriptError", "NOSCRIPT")


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def counts_against_health(error: BaseException) -> bool:
    """Connection trouble, timeouts, BUSY, LOADING: yes. Data and capacity errors: no."""
    if not isinstance(error, GlideError):
        return False
    message = str(error)
    return not any(marker in message for marker in _NOT_HEALTH)


# Server error prefixes and the cause label each gets in metrics and logs.
_CAUSES = (
    ("BUSY", "busy"),
    ("LOADING", "loading"),
    ("READONLY", "readonly"),
    ("OOM", "oom"),
    ("WRONGTYPE", "wrongtype"),
)


def cause_of(error: BaseException) -> str:
    """A stable cause label (one of ``metrics.FALL_THROUGH_CAUSES``) for a failed call."""
    if isinstance(error, GlideTimeoutError):
        return "timeout"
    if isinstance(error, GlideConnectionError | ClosingError):
        return "connection"
    message = str(error)
    for marker, cause in _CAUSES:
        if marker in message:
            return cause
    # glide reports a broken or refused connection as a plain RequestError at times.
    if isinstance(error, GlideError) and any(
        word in message.lower() for word in ("connection", "broken pipe", "closed")
    ):
        return "connection"
    return "error"


class CircuitBreaker:
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
        if self.state is BreakerState.OPEN and self._clock() - self._opened_at >= self.cooldown_s:
            self._move(BreakerState.HALF_OPEN, "cool-down over, letting one probe through")
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        if self.state is not BreakerState.CLOSED:
            self._move(BreakerState.CLOSED, "probe succeeded, using the cache again")

    def record_failure(self, error: BaseException) -> None:
        if not counts_against_health(error):
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
