"""One classification of what a cache call can fail with, for the breaker (does it count
against the server's health?), the metrics (its cause label) and the script registry (is
the server there at all?)."""

from __future__ import annotations

import re

from glide import ClosingError, GlideError
from glide import ConnectionError as GlideConnectionError
from glide import TimeoutError as GlideTimeoutError

from ..glide_compat import CircuitBreakerError


class CacheError(Exception):
    """The cache source could not serve a call (bad reply shape, oversized value...)."""


class ReplicasBehindError(CacheError):
    """An invalidation reached the primary, but not every replica within the bound: a
    read on a lagging replica, or that replica promoted by a failover, could still see
    what it covers. It counts as a failed invalidation (queued and replayed)."""


# Everything a cache call can raise when Valkey is down, slow, full or confused. glide's
# ConnectionError and TimeoutError derive from its RequestError, itself a GlideError.
CACHE_ERRORS: tuple[type[BaseException], ...] = (GlideError, ClosingError, CacheError)
"""What a call of the cache source can raise when Valkey is down, slow, full or confused:
``except CACHE_ERRORS`` around a direct call (the repositories catch them themselves)."""

# Why a cache call (read, fill or invalidation) did not happen or failed, so that the
# database answered alone: the labels of ``cause_of``, plus ``pending_invalidation`` (a
# cached value not served, or a read skipped, because a missed invalidation covering it is
# still pending). ``circuit_open`` and ``pending_invalidation`` cost no I/O.
FALL_THROUGH_CAUSES = (
    "circuit_open",
    "pending_invalidation",
    "connection",
    "timeout",
    "busy",
    "loading",
    "readonly",
    "oom",
    "wrongtype",
    "noscript",
    "invalid",
    "replicas_behind",
    "error",
)


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
_NOT_HEALTH = frozenset({"readonly", "oom", "wrongtype", "noscript", "invalid", "replicas_behind"})


class CircuitOpen(Exception):
    """Stands for a call the breaker did not let out (no I/O happened)."""


def cause_of(error: BaseException) -> str:
    """A stable cause label (one of ``FALL_THROUGH_CAUSES``) for a failed call."""
    if isinstance(error, ReplicasBehindError):
        return "replicas_behind"  # the primary answered: not a health failure either
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
