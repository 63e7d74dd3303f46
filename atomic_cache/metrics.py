"""CacheMetrics: in-process counters of what the cache did, a ``stats()`` snapshot, and an
optional Prometheus collector (``pip install atomic_cache[prometheus]``).

Plain ints mutated from one event loop: no locks needed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    fills: int
    refused_fills: int
    fall_throughs: dict[str, int]
    invalidations: int
    entries_dropped: int
    failed_invalidations: int
    replayed_invalidations: int
    breaker_transitions: dict[str, int]

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


@dataclass
class CacheMetrics:
    hits: int = 0
    misses: int = 0
    fills: int = 0
    refused_fills: int = 0
    fall_throughs: Counter[str] = field(default_factory=Counter)  # by cause
    invalidations: int = 0
    entries_dropped: int = 0
    failed_invalidations: int = 0
    replayed_invalidations: int = 0
    breaker_transitions: Counter[str] = field(default_factory=Counter)  # by new state

    def stats(self) -> CacheStats:
        return CacheStats(
            hits=self.hits,
            misses=self.misses,
            fills=self.fills,
            refused_fills=self.refused_fills,
            fall_throughs=dict(self.fall_throughs),
            invalidations=self.invalidations,
            entries_dropped=self.entries_dropped,
            failed_invalidations=self.failed_invalidations,
            replayed_invalidations=self.replayed_invalidations,
            breaker_transitions=dict(self.breaker_transitions),
        )

    def reset(self) -> None:
        fresh = CacheMetrics()
        self.__dict__.update(fresh.__dict__)


def register_prometheus(
    metrics: CacheMetrics, registry: Any = None, namespace: str = "atomic_cache"
) -> Any:
    """Expose ``metrics`` to Prometheus, read at scrape time (no double bookkeeping)."""
    try:
        from prometheus_client import REGISTRY
        from prometheus_client.core import CounterMetricFamily
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "the Prometheus exporter needs prometheus_client: install atomic_cache[prometheus]"
        ) from error

    class Collector:
        def collect(self) -> Iterator[Any]:
            stats = metrics.stats()
            for name in (
                "hits", "misses", "fills", "refused_fills", "invalidations",
                "entries_dropped", "failed_invalidations", "replayed_invalidations",
            ):  # fmt: skip
                yield CounterMetricFamily(
                    f"{namespace}_{name}", f"atomic_cache {name}", value=getattr(stats, name)
                )
            by_cause = CounterMetricFamily(
                f"{namespace}_fall_throughs", "cache calls served by the database", labels=["cause"]
            )
            for cause, count in sorted(stats.fall_throughs.items()):
                by_cause.add_metric([cause], count)
            yield by_cause
            breaker = CounterMetricFamily(
                f"{namespace}_breaker_transitions", "circuit breaker changes", labels=["state"]
            )
            for state, count in sorted(stats.breaker_transitions.items()):
                breaker.add_metric([state], count)
            yield breaker

    collector = Collector()
    (registry if registry is not None else REGISTRY).register(collector)
    return collector
