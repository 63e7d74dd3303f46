"""GuardedCache: the cache as the repositories see it — every call may fall through.

A cache failure never reaches a repository's caller: reads return None (the caller goes
to the database) and a failed post-commit invalidation is logged with the slices it did
not reach, kept in a bounded queue (``pending.py``), and replayed as soon as Valkey
answers; until then, cached values of those slices are not served. A circuit breaker
stops paying the request timeout while Valkey is down, and its probe runs in the
background. One GuardedCache is shared by every repository of a cache source.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from ..cache.source import AppConfigFragmentCacheSource
from ..metrics import CacheMetrics, CacheStats
from ..models import AppConfigData
from ..targets import InvalidationTarget
from .breaker import BreakerState, CircuitBreaker
from .errors import CircuitOpen, cause_of, counts_against_health
from .logs import LogThrottle
from .pending import DEFAULT_MAX_PENDING, PendingInvalidations, describe, merge_targets

log = logging.getLogger("atomic_cache")

T = TypeVar("T")

# The guard of each live cache source, by id. Held weakly: the repositories that use a
# guard keep it (and, through it, its source) alive, and the source knows nothing of it.
# An id cannot be reused while its entry lives, since the guard holds the source.
_GUARDS: weakref.WeakValueDictionary[int, GuardedCache] = weakref.WeakValueDictionary()


class GuardedCache:
    """Wraps an optional cache source so that its failures become fall-throughs."""

    def __init__(
        self,
        source: AppConfigFragmentCacheSource | None,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        # The counters and the breaker settings live on the source, so that every guard
        # and the source itself (corrupt entries it removes) count into one place.
        self.metrics = source.metrics if source is not None else CacheMetrics()
        self.breaker = breaker or (source.breaker if source is not None else CircuitBreaker())
        self.pending = PendingInvalidations(max_pending)
        # Bumped by every invalidation, landed or not: part of the single-flight key, so
        # no read that starts after a write returned joins a query started before it,
        # even when the failed invalidation left the sequence where it was.
        self.generation = 0
        self._clock = clock
        self._replay: asyncio.Future[BaseException | None] | None = None  # shared attempt
        self._replay_not_before = 0.0  # after a failed replay, wait before the next
        self._reset_not_before = 0.0  # the same for index resets
        self._log_throttle = LogThrottle()
        self._probe: asyncio.Task[None] | None = None  # held, so it is not collected
        self._reset: asyncio.Task[None] | None = None

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
        """The guard of a cache source: one per source while anything holds it (the
        repositories of that source share it); the source knows nothing of it."""
        if source is None:
            return cls(None)
        guard = _GUARDS.get(id(source))
        if guard is None:
            guard = _GUARDS[id(source)] = cls(source)
        return guard

    @property
    def enabled(self) -> bool:
        return self.source is not None

    # -- counters ------------------------------------------------------------------------

    def stats(self) -> CacheStats:
        """The counters now, with the breaker's state and the pending replays."""
        return self.metrics.snapshot(
            script_reloads=self.source.script_reloads if self.source is not None else 0,
            breaker_state=self.breaker.state.value,
            pending_invalidations=len(self.pending),
        )

    def record_lookups(self, *, hits: int, misses: int) -> None:
        self.metrics.hits += hits
        self.metrics.misses += misses

    def record_fill(self, *, stored: bool, entries: int) -> None:
        if stored:
            self.metrics.fills += entries
        else:
            self.metrics.refused_fills += entries

    # -- calls ---------------------------------------------------------------------------

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
        except Exception as error:
            # Not only Valkey's errors: a name too long for a key, a reply that does not
            # decode... A cache, present or not, never changes what the caller sees: the
            # database answers (and raises what it raises without a cache).
            self._failed(what, error)
            return None
        except asyncio.CancelledError:
            # The caller gave up (its own deadline, a disconnect) before Valkey answered:
            # no verdict on Valkey, so a background check gives one to the breaker.
            # Otherwise deadlines shorter than the request timeout would hide a stall.
            self._check_health()
            raise
        self.breaker.record_success()
        return result

    def _check_health(self) -> None:
        """Send the probe from a background task, unless one is out already."""
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._send_probe())

    def _failed(self, what: str, error: BaseException) -> None:
        self.breaker.record_failure(error)
        cause = cause_of(error)
        self.metrics.fall_throughs[cause] += 1
        # glide's breaker refusing is not news, and a full or read-only server fails every
        # fill alike: one line per kind of failure per interval, not one per request.
        skipped = None if cause == "circuit_open" else self._log_throttle.due(f"{what}/{cause}")
        if skipped is not None:
            log.warning(
                "cache %s failed, falling through to the database: %s%s",
                what,
                error,
                f" ({skipped} more like it since the last report)" if skipped else "",
            )
        if cause == "wrongtype" and self._clock() >= self._reset_not_before:
            # Entry keys are read with pcall and written with SET, so WRONGTYPE comes from
            # an index, stamp or sequence key: someone else wrote there. Left alone, every
            # fill through it would fail for good. The reset runs in the background, at
            # most once per cool-down.
            self._reset_not_before = self._clock() + self.breaker.cooldown_s
            self._reset = asyncio.create_task(self._reset_index())

    async def reset(self) -> int | None:
        """Start a new life of the index (every entry and fill token of the old one is
        refused from then on): what covers a change whose extent is unknown. Returns the
        entries deleted, or None if it could not be done. Covers whatever is pending too.
        Never raises."""
        self.generation += 1
        if self.source is None or not self._admit():
            return None
        _, _, version = self.pending.snapshot()
        try:
            dropped = await self.source.reset_index()
        except Exception as error:
            self.breaker.record_failure(error)
            self.metrics.fall_throughs[cause_of(error)] += 1
            log.error("could not start a new life of the cache's index: %s", error)
            return None
        self.breaker.record_success()
        self.metrics.index_resets += 1
        self.metrics.entries_dropped += dropped
        self.pending.replayed(version)
        return dropped

    async def _reset_index(self) -> None:
        assert self.source is not None
        dropped = await self.reset()
        if dropped is None:
            return
        log.error(
            "a key of the wrong type sat in the cache's index under prefix %r: started a"
            " new life of the index (no older entry is served) and queued a sweep; %d"
            " entries deleted so far",
            self.source.keys.prefix,
            dropped,
        )

    def _admit(self) -> bool:
        """Whether a cache call may go out now. While the breaker is open it may not; when
        its cool-down ends, the probe goes out from a background task and this caller,
        too, is served by the database: no request ever waits on a probe."""
        if self.breaker.allow():
            if self.breaker.state is BreakerState.CLOSED:
                return True
            self._check_health()
        return False

    async def _send_probe(self) -> None:
        assert self.source is not None
        try:
            await self.source.ping()
        except Exception as error:  # whatever it was, the breaker must hear of it
            self.breaker.record_failure(error)
            return
        self.breaker.record_success()
        # Replay at once rather than on the next request: until it lands, other processes
        # may still serve what the missed invalidations cover.
        if self.pending:
            await self.replay(retry_now=True)

    # -- reads ---------------------------------------------------------------------------

    async def read(
        self, operation: Callable[[AppConfigFragmentCacheSource], Awaitable[T]]
    ) -> T | None:
        """A cache read; missed invalidations are replayed first.

        If the replay fails, the read still goes out, and ``servable`` keeps the values a
        pending invalidation covers from being served: only the affected slices bypass
        the cache, so a slice that cannot be invalidated (a failover to a read-only node)
        does not turn the whole cache off. Only when the replay met an unwell server
        (a timeout, BUSY...) is the read skipped, so that no request waits twice. While
        the breaker is open no replay is tried here: the probe replays. A read that a
        replay overlapped answers None (its values may predate the replay)."""
        if self.pending and self.breaker.state is BreakerState.CLOSED:
            error = await self._replay_attempt()
            if error is not None and counts_against_health(error):
                self.metrics.fall_throughs["pending_invalidation"] += 1
                return None
        clears = self.pending.clears
        result = await self.call("read", operation)
        if self.pending.clears != clears:
            # A replay landed while this read was out. The server may have run the read
            # before that invalidation, and what it covered is no longer pending, so
            # ``servable`` would let an older value through: the database answers instead.
            # (Only after a missed invalidation, and only reads that overlap its replay.)
            self.metrics.fall_throughs["pending_invalidation"] += 1
            return None
        return result

    def servable(self, value: AppConfigData) -> bool:
        """False for a value that a still-pending invalidation covers (counted as a
        fall-through: the caller reads it from the database)."""
        if self.pending and self.pending.covers(value):
            self.metrics.fall_throughs["pending_invalidation"] += 1
            return False
        return True

    def catalogue_servable(self) -> bool:
        """False while a missed invalidation of the catalogue of names is pending (a
        policy was created or deleted): the cached list may lack or hold that name."""
        return not self.pending.drop_catalogue

    # -- invalidation --------------------------------------------------------------------

    async def replay(self, *, retry_now: bool = False) -> bool:
        """Send the pending invalidations; True when none is pending any more."""
        if retry_now:
            self._replay_not_before = 0.0
        await self._replay_attempt()
        return not self.pending

    async def _replay_attempt(self) -> BaseException | None:
        """One replay round trip, shared by everyone who asks while it is out; after a
        failure, none for a cool-down (reads stay correct meanwhile: ``servable``).
        Returns the error the attempt met, None if it landed or none was due."""
        if not self.pending:
            return None
        if self._replay is None:
            if self._clock() < self._replay_not_before:
                return None
            self._replay = asyncio.ensure_future(self._replay_once())
            self._replay.add_done_callback(self._replay_landed)
        # shield: a reader that gives up must not cancel the attempt the others wait on.
        return await asyncio.shield(self._replay)

    def _replay_landed(self, attempt: asyncio.Future[BaseException | None]) -> None:
        if self._replay is attempt:
            self._replay = None

    async def _replay_once(self) -> BaseException | None:
        targets, drop_catalogue, _ = self.pending.snapshot()
        outcome = await self._send([], drop_catalogue=False)
        if isinstance(outcome, BaseException):
            self._replay_not_before = self._clock() + self.breaker.cooldown_s
            return outcome
        log.warning(
            "replayed missed invalidations (%s): %d entries dropped",
            describe(targets, drop_catalogue),
            outcome,
        )
        return None

    async def invalidate(
        self,
        targets: Sequence[InvalidationTarget],
        *,
        drop_catalogue: bool = False,
        counted: bool = True,
    ) -> int | None:
        """Invalidate after a commit: entries dropped, or None if it could not be done
        (then the slices wait in ``pending``). Pending ones ride along. Never raises: the
        commit has happened, and nothing it changed may be forgotten."""
        self.generation += 1
        if self.source is None:
            return None
        # shield: a caller cancelled now (a deadline, a disconnect) must not cancel the
        # round trip or the queueing of its failure, or the change would be forgotten.
        return await asyncio.shield(self._invalidate_after_commit(targets, drop_catalogue, counted))

    async def _invalidate_after_commit(
        self, targets: Sequence[InvalidationTarget], drop_catalogue: bool, counted: bool
    ) -> int | None:
        outcome = await self._send(targets, drop_catalogue=drop_catalogue, counted=counted)
        if isinstance(outcome, BaseException):
            self._log_missed(targets, drop_catalogue, outcome)
            return None
        return outcome

    async def _send(
        self, targets: Sequence[InvalidationTarget], *, drop_catalogue: bool, counted: bool = True
    ) -> int | BaseException:
        """One invalidation round trip for ``targets`` and everything pending: the entries
        dropped, or the error met (then all of it is pending)."""
        assert self.source is not None
        queued, queued_catalogue, version = self.pending.snapshot()
        merged = merge_targets([*queued, *targets])
        drop_catalogue = drop_catalogue or queued_catalogue
        if not merged and not drop_catalogue:
            return 0
        if not self._admit():
            self.pending.add(merged, drop_catalogue)
            self.metrics.fall_throughs["circuit_open"] += 1
            return CircuitOpen("cache circuit open")
        try:
            dropped = await self.source.invalidate_many(merged, drop_catalogue=drop_catalogue)
        except Exception as error:  # not only CACHE_ERRORS: a commit must never be lost
            self.pending.add(merged, drop_catalogue)
            self.breaker.record_failure(error)
            self.metrics.fall_throughs[cause_of(error)] += 1
            return error
        self.breaker.record_success()
        if counted:  # (not a registration's: see following.py and ``new_registrations``)
            self.metrics.invalidations += 1
            self.metrics.entries_dropped += dropped
        if queued or queued_catalogue:
            self.pending.replayed(version)
            self.metrics.replayed_invalidations += 1
        return dropped

    def _log_missed(
        self, targets: Sequence[InvalidationTarget], drop_catalogue: bool, error: BaseException
    ) -> None:
        """A write's own invalidation failed: say which slices, once per kind of failure
        per interval (an outage must not log a line per write)."""
        if not targets and not drop_catalogue:
            return
        self.metrics.failed_invalidations += 1
        skipped = self._log_throttle.due(f"invalidate/{cause_of(error)}")
        if skipped is None:
            return
        log.error(
            "cache invalidation failed after commit; not invalidated: %s (%s); kept for"
            " replay, %d slice(s) pending%s",
            describe(targets, drop_catalogue),
            error,
            len(self.pending),
            f" ({skipped} more failed invalidations since the last report)" if skipped else "",
        )
