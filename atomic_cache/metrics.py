"""What the cache did for this process: counters, a ``stats()`` snapshot, and an optional
Prometheus collector (``pip install 'atomic_cache[prometheus]'``).

The counters are plain ints bumped from one event loop, so they need no lock and cost a
dict lookup at most. One ``CacheMetrics`` belongs to one cache source and is shared by
every repository that uses it; ``repository.stats()`` snapshots it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, computed_field

from .resilience.errors import FALL_THROUGH_CAUSES

# Why a local cache emptied itself (cache/local.py): a message skipped a sequence number,
# the index started a new life, the server's sequence went back (restart, failover) or
# was found ahead of the messages (one was lost), the subscription was lost, or a
# message could not be read.
LOCAL_FLUSH_REASONS = (
    "gap",
    "new_life",
    "went_back",
    "missed",
    "subscription_lost",
    "unreadable",
    "failover",
)


class CacheStats(BaseModel):
    """A snapshot of the counters (all monotonic since start-up, except those marked
    "now")."""

    model_config = ConfigDict(frozen=True)

    hits: int = 0  # values served from Valkey
    misses: int = 0  # names Valkey did not hold, read from PostgreSQL
    fills: int = 0  # values stored after a miss
    refused_fills: int = 0  # fills refused: an invalidation ran since the lookup, or too large
    fall_throughs: dict[str, int] = {}  # cache calls failed or skipped, by cause
    invalidations: int = 0  # invalidation round trips that succeeded (replays included)
    entries_dropped: int = 0  # cached entries those invalidation calls deleted
    entries_reclaimed: int = 0  # covered entries deleted later, by clean-up steps
    failed_invalidations: int = 0  # post-commit invalidations kept for replay
    replayed_invalidations: int = 0  # successful round trips that carried a replay
    outbox_replayed: int = 0  # outbox rows other writes left behind, replayed here
    outbox_retries: int = 0  # outbox rows whose replay failed here (retried with back-off)
    outbox_unreadable: int = 0  # outbox rows no replay could read: covered by an index reset
    consistency_checks: int = 0  # cache hits re-read from PostgreSQL (verify_sample)
    consistency_mismatches: int = 0  # of those, confirmed different on a second look (healed)
    new_registrations: int = 0  # this cache registered as new with the database: all dropped
    corrupt_entries_removed: int = 0  # undecodable or wrong-type entries found and deleted
    index_resets: int = 0  # new index lives: a wrong-type key, lost writes, unreadable rows
    script_reloads: int = 0  # lost script caches reloaded (restart, failover, SCRIPT FLUSH)
    breaker_transitions: dict[str, int] = {}  # circuit breaker changes, by the new state
    breaker_state: str = "closed"  # now: closed, open or half_open
    pending_invalidations: int = 0  # now: slices waiting for a replay
    # The in-process local cache, when the source has one (all zero otherwise):
    local_hits: int = 0  # values served from process memory, no round trip
    local_misses: int = 0  # reads the local cache could not serve (absent, expired, unsure)
    local_stores: int = 0  # values Valkey served or accepted, copied into process memory
    local_refused_stores: int = 0  # not copied: an invalidation reached this process meanwhile
    local_evictions: int = 0  # entries pushed out by the entry or byte bound (LRU)
    local_drops: int = 0  # entries dropped because an invalidation covered them
    local_flushes: dict[str, int] = {}  # times it emptied itself, by reason
    local_entries: int = 0  # now: entries held

    @computed_field  # type: ignore[prop-decorator]
    @property
    def hit_ratio(self) -> float:
        """Hits over hits + misses (fall-throughs are counted apart, by cause)."""
        looked_up = self.hits + self.misses
        return self.hits / looked_up if looked_up else 0.0


@dataclass
class LocalCacheCounters:
    """The live counters of one local cache (``CacheStats.local_*``)."""

    hits: int = 0
    misses: int = 0
    stores: int = 0
    refused_stores: int = 0
    evictions: int = 0
    drops: int = 0
    flushes: Counter[str] = field(default_factory=Counter)
    entries: int = 0


@dataclass
class CacheMetrics:
    """The live counters of one cache source."""

    hits: int = 0
    misses: int = 0
    fills: int = 0
    refused_fills: int = 0
    fall_throughs: Counter[str] = field(default_factory=Counter)
    invalidations: int = 0
    entries_dropped: int = 0
    entries_reclaimed: int = 0
    failed_invalidations: int = 0
    replayed_invalidations: int = 0
    outbox_replayed: int = 0
    outbox_retries: int = 0
    outbox_unreadable: int = 0
    consistency_checks: int = 0
    consistency_mismatches: int = 0
    new_registrations: int = 0
    corrupt_entries_removed: int = 0
    index_resets: int = 0
    breaker_transitions: Counter[str] = field(default_factory=Counter)
    # Those of the local cache the source serves from, if any (it links them).
    local: LocalCacheCounters | None = None

    def snapshot(
        self, *, script_reloads: int, breaker_state: str, pending_invalidations: int
    ) -> CacheStats:
        local = self.local if self.local is not None else LocalCacheCounters()
        return CacheStats(
            hits=self.hits,
            misses=self.misses,
            fills=self.fills,
            refused_fills=self.refused_fills,
            fall_throughs=dict(self.fall_throughs),
            invalidations=self.invalidations,
            entries_dropped=self.entries_dropped,
            entries_reclaimed=self.entries_reclaimed,
            failed_invalidations=self.failed_invalidations,
            replayed_invalidations=self.replayed_invalidations,
            outbox_replayed=self.outbox_replayed,
            outbox_retries=self.outbox_retries,
            outbox_unreadable=self.outbox_unreadable,
            consistency_checks=self.consistency_checks,
            consistency_mismatches=self.consistency_mismatches,
            new_registrations=self.new_registrations,
            corrupt_entries_removed=self.corrupt_entries_removed,
            index_resets=self.index_resets,
            script_reloads=script_reloads,
            breaker_transitions=dict(self.breaker_transitions),
            breaker_state=breaker_state,
            pending_invalidations=pending_invalidations,
            local_hits=local.hits,
            local_misses=local.misses,
            local_stores=local.stores,
            local_refused_stores=local.refused_stores,
            local_evictions=local.evictions,
            local_drops=local.drops,
            local_flushes=dict(local.flushes),
            local_entries=local.entries,
        )


class HasStats(Protocol):
    """A repository, or anything else that can snapshot the cache's counters."""

    def stats(self) -> CacheStats: ...


_COUNTERS: dict[str, str] = {
    "hits": "Merged configs served from Valkey",
    "misses": "Merged configs Valkey did not hold, read from PostgreSQL",
    "fills": "Merged configs stored in Valkey after a miss",
    "refused_fills": "Fills refused because an invalidation ran since the lookup, or too large",
    "invalidations": "Invalidation round trips that succeeded",
    "entries_dropped": "Cached entries deleted by invalidation calls",
    "entries_reclaimed": "Invalidated entries deleted later by clean-up steps",
    "failed_invalidations": "Post-commit invalidations that failed and were kept for replay",
    "replayed_invalidations": "Invalidation round trips that replayed missed invalidations",
    "outbox_replayed": "Outbox rows left by other writes, replayed by this process",
    "outbox_retries": "Outbox rows whose replay failed here and were postponed",
    "outbox_unreadable": "Outbox rows no replay could read, covered by a new index life",
    "consistency_checks": "Cache hits re-read from PostgreSQL by the sampled consistency check",
    "consistency_mismatches": "Cache hits confirmed different from PostgreSQL (healed)",
    "new_registrations": "Registrations of this cache as new with the database (all dropped)",
    "corrupt_entries_removed": "Undecodable or wrong-type cache entries removed",
    "index_resets": "New index lives: a wrong-type key, lost writes, unreadable outbox rows",
    "script_reloads": "Script caches reloaded after NOSCRIPT",
    "local_hits": "Merged configs served from the in-process local cache",
    "local_misses": "Reads the local cache could not serve",
    "local_stores": "Values copied into the local cache",
    "local_refused_stores": "Values not copied locally: an invalidation arrived meanwhile",
    "local_evictions": "Local cache entries evicted by its bounds",
    "local_drops": "Local cache entries dropped by invalidations",
}
_BREAKER_STATES = ("closed", "open", "half_open")


def register_prometheus(
    source: HasStats, registry: Any = None, namespace: str = "atomic_cache"
) -> Any:
    """Expose ``source.stats()`` to Prometheus, read at scrape time (no second set of
    counters to keep in step). Returns the collector; ``registry.unregister`` removes it.

    Counters are named ``{namespace}_{counter}_total``; fall-throughs carry a ``cause``
    label and breaker transitions a ``state`` label; ``{namespace}_breaker_state`` is 1 for
    the current state, and ``{namespace}_pending_invalidations`` a gauge.
    """
    try:
        from prometheus_client import REGISTRY
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "the Prometheus exporter needs prometheus_client:"
            " pip install 'atomic_cache[prometheus]'"
        ) from error

    def labelled(family: Any, values: Mapping[str, float], names: Iterable[str]) -> Any:
        """One sample per name (0 when absent), so every series exists from the start."""
        for name in sorted({*names, *values}):
            family.add_metric([name], values.get(name, 0))
        return family

    class AtomicCacheCollector:
        def collect(self) -> Iterator[Any]:
            stats = source.stats()
            for name, help_text in _COUNTERS.items():
                yield CounterMetricFamily(
                    f"{namespace}_{name}", help_text, value=getattr(stats, name)
                )
            yield labelled(
                CounterMetricFamily(
                    f"{namespace}_fall_throughs",
                    "Cache calls (reads, fills, invalidations) that failed or were skipped,"
                    " by cause",
                    labels=["cause"],
                ),
                dict(stats.fall_throughs),
                FALL_THROUGH_CAUSES,
            )
            yield labelled(
                CounterMetricFamily(
                    f"{namespace}_breaker_transitions",
                    "Circuit breaker state changes, by the new state",
                    labels=["state"],
                ),
                dict(stats.breaker_transitions),
                _BREAKER_STATES,
            )
            yield labelled(
                GaugeMetricFamily(
                    f"{namespace}_breaker_state",
                    "1 for the circuit breaker's current state",
                    labels=["state"],
                ),
                {stats.breaker_state: 1.0},
                _BREAKER_STATES,
            )
            yield GaugeMetricFamily(
                f"{namespace}_pending_invalidations",
                "Invalidated slices waiting to be replayed",
                value=stats.pending_invalidations,
            )
            yield labelled(
                CounterMetricFamily(
                    f"{namespace}_local_flushes",
                    "Times the local cache emptied itself, by reason",
                    labels=["reason"],
                ),
                dict(stats.local_flushes),
                LOCAL_FLUSH_REASONS,
            )
            yield GaugeMetricFamily(
                f"{namespace}_local_entries",
                "Entries held by the local cache",
                value=stats.local_entries,
            )

    collector = AtomicCacheCollector()
    (registry if registry is not None else REGISTRY).register(collector)
    return collector
