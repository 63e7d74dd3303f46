"""CircuitBreaker: stop paying the request timeout while Valkey is down or stalled.

After ``failure_threshold`` consecutive health failures the breaker opens and the cache
is bypassed (the repositories go straight to PostgreSQL) for ``cooldown_s``; then one
probe is let through (half-open): success closes it, failure opens it again. The
repositories send that probe from a background task, so after the failures that open it
no request waits on a dead or paused server. One log line per state change, none per
request.

Why not glide 2.6's ``ClientCircuitBreakerConfiguration`` (measured, see the README):
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
import re
import time
from collections.abc import Callable
from enum import StrEnum

from glide import CircuitBreakerError, ClosingError, GlideError
from glide import ConnectionError as GlideConnectionError
from glide import TimeoutError as GlideTimeoutError

from .resilience import CacheError

log = logging.getLogger("atomic_cache")


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# How a server error reads once glide has passed it on, and its cause label. glide keeps
# the code of some errors ("BUSY: Valkey is busy...", "OOM: ...", "WRONGTYPE: ...") but
# renames others ("- BusyLoadingError: Valkey is loading...", "- ReadOnly: You can't
# write...", "- NoScriptError: ..."); both spellings are matched, as whole words, in order.
_SERVER_ERRORS = (
    (re.compile(r"\b(BusyLoadingError|LOADING)\b"), "loading"),
    (re.compile(r"\bBUSY\b"), "busy"),
    (re.compile(r"\b(ReadOnly|READONLY)\b"), "readonly"),
    (re.compile(r"\bOOM\b"), "oom"),
    (re.compile(r"\bWRONGTYPE\b"), "wrongtype"),
    (re.compile(r"\b(NoScriptError|NOSCRIPT)\b"), "noscript"),
)
# glide words a refused or timed-out connect "Standalone connect failed - IoError: ...".
_CONNECTION_WORDS = re.compile(
    r"connection|connect failed|IoError|broken pipe|closed", re.IGNORECASE
)

# Causes that say the server could not serve the call at all, whatever the call was.
UNWELL_CAUSES = frozenset({"timeout", "connection", "busy", "loading", "circuit_open"})

# Causes that mean "the data is odd or the server is full", not "the server is unwell":
# they must not open the breaker (reads keep working under OOM or on a read-only replica,
# and a lost script is reloaded by the registry). "invalid": a value the cache cannot
# handle (a name too long for a key, a reply that does not decode); no server at fault.
_NOT_HEALTH = frozenset({"readonly", "oom", "wrongtype", "noscript", "invalid"})


class CircuitOpen(Exception):
    """Stands for a call the breaker did not let out (no I/O happened)."""


def cause_of(error: BaseException) -> str:
    """A stable cause label (one of ``metrics.FALL_THROUGH_CAUSES``) for a failed call."""
    if isinstance(error, CircuitOpen | CircuitBreakerError):
        return "circuit_open"  # ours, or glide's client-wide breaker, refused it: no I/O
    if isinstance(error, GlideTimeoutError):
        return "timeout"
    if isinstance(error, ValueError | TypeError):  # UnicodeDecodeError is a ValueError
        return "invalid"
    if isinstance(error, GlideConnectionError | ClosingError):
        return "connection"
    message = str(error)
    for pattern, cause in _SERVER_ERRORS:
        if pattern.search(message):
            return cause
    # glide reports a broken or refused connection as a plain RequestError at times.
    if isinstance(error, GlideError) and _CONNECTION_WORDS.search(message):
        return "connection"
    return "error"


def counts_against_health(error: BaseException | None) -> bool:
    """Connection trouble, timeouts, BUSY, LOADING, other server errors, anything
    unexpected: yes. Data and capacity errors (WRONGTYPE, OOM, READONLY, a lost script)
    and odd replies (``CacheError``), to which a live server answered: no."""
    if error is None or isinstance(error, CacheError):
        return False
    return cause_of(error) not in _NOT_HEALTH


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

    def record_success(self) -> None:
        self._failures = 0
        if self.state is not BreakerState.CLOSED:
            self._move(BreakerState.CLOSED, "probe succeeded, using the cache again")

    def record_failure(self, error: BaseException) -> None:
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
