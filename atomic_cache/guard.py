"""GuardedCache: the cache as the repositories see it — every call may fall through.

A cache failure never reaches a repository's caller: reads return None (the caller goes
to the database) and a failed post-commit invalidation is logged with exactly the slices
it did not reach, kept in a bounded queue, and replayed before this process trusts a
cache read again; until then, cached values of those slices are not served. One
GuardedCache is shared by every repository of a cache source.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from .cache_source import AppConfigFragmentCacheSource, InvalidationTarget
from .circuit import BreakerState, CircuitBreaker, cause_of, counts_against_health
from .metrics import CacheMetrics, CacheStats
from .models import AppConfigData, ScopeType
from .resilience import CACHE_ERRORS

log = logging.getLogger("atomic_cache")

T = TypeVar("T")

_guards: weakref.WeakKeyDictionary[AppConfigFragmentCacheSource, GuardedCache] = (
    weakref.WeakKeyDictionary()
)


def describe(targets: Sequence[InvalidationTarget], drop_catalogue: bool = False) -> str:
    """A log-friendly list of slices: ``USER 1b4e…[webui], DOMAIN default[*]``."""
    parts = [
        f"{t.scope_type.name} {t.scope_id}[{','.join(t.names) if t.names is not None else '*'}]"
        for t in targets
    ]
    if drop_catalogue:
        parts.append("catalogue of names")
    return ", ".join(parts)


def merge_targets(targets: Sequence[InvalidationTarget]) -> list[InvalidationTarget]:
    """One target per (scope, id), with the union of names (None wins: every name)."""
    merged: dict[tuple[str, str], tuple[str, ...] | None] = {}
    for target in targets:
        key = (target.scope_type.value, target.scope_id)
        if key in merged and merged[key] is None:
            continue
        if target.names is None:
            merged[key] = None
        else:
            merged[key] = tuple(dict.fromkeys((*(merged.get(key) or ()), *target.names)))
    return [
        InvalidationTarget.of(scope, scope_id, names) for (scope, scope_id), names in merged.items()
    ]


def covers(target: InvalidationTarget, value: AppConfigData) -> bool:
    """Whether an invalidation of ``target`` would drop the cached ``value``."""
    if target.names is not None and value.name not in target.names:
        return False
    if target.scope_type is ScopeType.USER:
        return target.scope_id == str(value.user_id)
    if target.scope_type is ScopeType.PUBLIC:
        return True
    return target.scope_id == value.domain_name


DEFAULT_MAX_PENDING = 1000
_EVERYTHING = InvalidationTarget.of(ScopeType.PUBLIC, "public")


class PendingInvalidations:
    """Invalidations that failed after their commit, waiting to be replayed.

    An entry leaves the queue only once a replay that carried it has succeeded, so a
    reader never sees an empty queue while a replay is still in flight. Bounded: past
    ``max_targets`` the queue collapses into "drop every entry", which covers anything
    it held.
    """

    def __init__(self, max_targets: int = DEFAULT_MAX_PENDING) -> None:
        self.max_targets = max_targets
        self.targets: list[InvalidationTarget] = []
        self.drop_catalogue = False
        self._version = 0  # bumped on every change: a replay clears only what it sent

    def __bool__(self) -> bool:
        return bool(self.targets) or self.drop_catalogue

    def add(self, targets: Sequence[InvalidationTarget], drop_catalogue: bool) -> None:
        self._version += 1
        self.targets = merge_targets([*self.targets, *targets])
        self.drop_catalogue = self.drop_catalogue or drop_catalogue
        if len(self.targets) > self.max_targets:
            log.error(
                "more than %d invalidations pending: every cached entry will be dropped",
                self.max_targets,
            )
            self.targets = [_EVERYTHING]
            self.drop_catalogue = True

    def snapshot(self) -> tuple[list[InvalidationTarget], bool, int]:
        return list(self.targets), self.drop_catalogue, self._version

    def replayed(self, version: int) -> None:
        """A replay of the snapshot taken at ``version`` succeeded."""
        if version == self._version:
            self.targets, self.drop_catalogue = [], False
            self._version += 1

    def covers(self, value: AppConfigData) -> bool:
        return any(covers(target, value) for target in self.targets)


class LogThrottle:
    """Lets a repeated message through at most once per ``interval_s`` per key."""

    def __init__(
        self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def due(self, key: str) -> int | None:
        """None: stay quiet. Otherwise log now; the number is how many were held back."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._skipped[key] = self._skipped.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._skipped.pop(key, 0)


class GuardedCache:
    """Wraps an optional cache source so that its failures become fall-throughs."""

    def __init__(
        self,
        source: AppConfigFragmentCacheSource | None,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.source = source
        # The counters and the breaker settings live on the source, so that every guard
        # and the source itself (corrupt entries it removes) count into one place.
        self.metrics = source.metrics if source is not None else CacheMetrics()
        self.bypassed = 0  # cache calls skipped while the breaker was open
        self.breaker = breaker or (source.breaker if source is not None else CircuitBreaker())
        self.pending = PendingInvalidations(max_pending)
        self._replay_lock = asyncio.Lock()
        self._last_error: BaseException | None = None  # of the last failed invalidation
        self._log_throttle = LogThrottle()
        self._probe: asyncio.Task[None] | None = None  # held, so it is not collected

    @property
    def breaker(self) -> CircuitBreaker:
        return self._breaker

    @breaker.setter
    def breaker(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        breaker.on_change = self._breaker_moved

    def _breaker_moved(self, state: BreakerState) -> None:
        self.metrics.breaker_transitions[state.value] += 1

    @classmethod
    def of(cls, source: AppConfigFragmentCacheSource | None) -> GuardedCache:
        """The guard of a cache source (one per source, shared by its repositories)."""
        if source is None:
            return cls(None)
        guard = _guards.get(source)
        if guard is None:
            guard = _guards[source] = cls(source)
        return guard

    @property
    def enabled(self) -> bool:
        return self.source is not None

    def stats(self) -> CacheStats:
        """The counters now, with the breaker's state and the pending replays."""
        return self.metrics.snapshot(
            script_reloads=self.source.script_reloads if self.source is not None else 0,
            breaker_state=self.breaker.state.value,
            pending_invalidations=len(self.pending.targets) + self.pending.drop_catalogue,
        )

    def record_lookups(self, *, hits: int, misses: int) -> None:
        self.metrics.hits += hits
        self.metrics.misses += misses

    def record_fill(self, *, stored: bool, entries: int) -> None:
        if stored:
            self.metrics.fills += entries
        else:
            self.metrics.refused_fills += entries

    async def call(
        self, what: str, operation: Callable[[AppConfigFragmentCacheSource], Awaitable[T]]
    ) -> T | None:
        """Run one cache operation; None when there is no cache, the breaker is open, or
        it failed."""
        if self.source is None:
            return None
        if not self._admit():
            self.metrics.fall_throughs["circuit_open"] += 1
            return None
        try:
            result = await operation(self.source)
        except CACHE_ERRORS as error:
            self.breaker.record_failure(error)
            cause = cause_of(error)
            self.metrics.fall_throughs[cause] += 1
            # glide's breaker refusing is not news, and a full or read-only server fails
            # every fill alike: one line per kind of failure per interval, not per request.
            skipped = None if cause == "circuit_open" else self._log_throttle.due(f"{what}/{cause}")
            if skipped is not None:
                log.warning(
                    "cache %s failed, falling through to the database: %s%s",
                    what,
                    error,
                    f" ({skipped} more like it since the last report)" if skipped else "",
                )
            return None
        self.breaker.record_success()
        return result

    def _admit(self) -> bool:
        """Whether a cache call may go out now. While the breaker is open it may not; when
        its cool-down ends, the probe goes out from a background task and this caller,
        too, is served by the database: no request ever waits on a probe."""
        if self.breaker.allow():
            if self.breaker.state is BreakerState.CLOSED:
                return True
            self._probe = asyncio.create_task(self._send_probe())
        self.bypassed += 1
        return False

    async def _send_probe(self) -> None:
        assert self.source is not None
        try:
            await self.source.ping()
        except CACHE_ERRORS as error:
            self.breaker.record_failure(error)
            return
        self.breaker.record_success()
        # Replay at once rather than on the next request: until it lands, other processes
        # may still serve what the missed invalidations cover.
        if self.pending:
            await self.replay()

    async def read(
        self, operation: Callable[[AppConfigFragmentCacheSource], Awaitable[T]]
    ) -> T | None:
        """A cache read; missed invalidations are replayed first.

        If the replay fails, the read still goes out, and ``servable`` keeps the values
        that a pending invalidation covers from being served: only the affected slices
        bypass the cache, so one slice that cannot be invalidated (a failover to a
        read-only node, a corrupt set) does not turn the whole cache off. While the
        breaker is open no replay is tried here: its probe replays once Valkey answers.
        """
        if (
            self.pending
            and self.breaker.state is BreakerState.CLOSED
            and not await self.replay()
            and counts_against_health(self._last_error)
        ):
            return None  # the replay timed out or met BUSY...: do not wait a second time
        return await self.call("read", operation)

    def servable(self, value: AppConfigData) -> bool:
        """False for a value that a still-pending invalidation covers (counted as a
        fall-through: the caller reads it from the database)."""
        if self.pending and self.pending.covers(value):
            self.metrics.fall_throughs["pending_invalidation"] += 1
            return False
        return True

    async def replay(self) -> bool:
        """Send the pending invalidations, once, however many readers ask; True when none
        is pending any more."""
        async with self._replay_lock:
            if not self.pending:
                return True
            targets, drop_catalogue, _ = self.pending.snapshot()
            dropped = await self.invalidate([])
            if dropped is not None:
                log.warning(
                    "replayed missed invalidations (%s): %d entries dropped",
                    describe(targets, drop_catalogue),
                    dropped,
                )
            return dropped is not None

    async def invalidate(
        self, targets: Sequence[InvalidationTarget], *, drop_catalogue: bool = False
    ) -> int | None:
        """Invalidate after a commit: entries dropped, or None if it could not be done
        (then the slices wait in ``pending``). Pending ones ride along."""
        if self.source is None:
            return None
        queued, queued_catalogue, version = self.pending.snapshot()
        merged = merge_targets([*queued, *targets])
        drop_catalogue = drop_catalogue or queued_catalogue
        if not merged and not drop_catalogue:
            return 0
        fresh = bool(targets)  # a write's own invalidation, not only a replay
        if not self._admit():
            self._kept_for_replay(
                merged, drop_catalogue, fresh, "circuit_open", "cache circuit open"
            )
            return None
        try:
            dropped = await self.source.invalidate_many(merged, drop_catalogue=drop_catalogue)
        except CACHE_ERRORS as error:
            self.breaker.record_failure(error)
            self._last_error = error
            self._kept_for_replay(merged, drop_catalogue, fresh, cause_of(error), str(error))
            return None
        self.breaker.record_success()
        self.metrics.invalidations += 1
        self.metrics.entries_dropped += dropped
        if queued or queued_catalogue:
            self.pending.replayed(version)
            self.metrics.replayed_invalidations += 1
        return dropped

    def _kept_for_replay(
        self,
        targets: Sequence[InvalidationTarget],
        drop_catalogue: bool,
        fresh: bool,
        cause: str,
        why: str,
    ) -> None:
        self.pending.add(targets, drop_catalogue)
        self.metrics.fall_throughs[cause] += 1
        if fresh:
            self.metrics.failed_invalidations += 1
            log.error(
                "cache invalidation failed after commit; not invalidated: %s (%s); kept for replay",
                describe(targets, drop_catalogue),
                why,
            )
        # A replay that fails again is not logged: reads retry it, and the breaker already
        # logs each change of state, so an outage costs a few lines, not one per request.
