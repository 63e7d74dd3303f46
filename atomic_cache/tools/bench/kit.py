"""The bench's measuring kit: the rows a scenario returns, the context it gets, and the
interleaved timing every comparison uses (DESIGN §6).

Timings on a shared machine drift, so every comparison runs its variants interleaved in
rounds (the order rotates each round) and reports ratios to a baseline measured in the
same rounds, with p50/p99 and throughput.
"""

from __future__ import annotations

import asyncio
import gc
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

from glide import GlideClient

from ...cache.scripts import ScriptRegistry
from ...cache.source import AppConfigFragmentCacheSource
from ...keys import KeySchema
from .legacy import LegacyCache, LegacyKeys, legacy_scripts
from .sizes import BenchSizes

# A bench command may legitimately block the server for seconds (a 100k-user domain
# invalidation): the bench clients wait, unlike an application's 250 ms default.
BENCH_REQUEST_TIMEOUT_MS = 60_000

Extra: TypeAlias = dict[str, float | int | str]
Op: TypeAlias = Callable[[int], Awaitable[object]]
T = TypeVar("T")


# -- results ------------------------------------------------------------------------------


@dataclass
class BenchRow:
    """One measured line. Latencies in µs; ``samples`` is how many operations (or, for
    one-shot measurements, how many runs) the figures come from. ``baseline`` marks the
    row the other rows of the same ``scenario`` are compared with (``p50 ratio`` column)."""

    scenario: str
    variant: str
    p50_us: float | None = None
    p99_us: float | None = None
    ops_per_s: float | None = None
    samples: int = 0
    baseline: bool = False
    extra: Extra = field(default_factory=dict)


@dataclass
class BenchReport:
    meta: dict[str, Any]
    rows: list[BenchRow] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def baseline_p50(self, scenario: str) -> float | None:
        for row in self.rows:
            if row.scenario == scenario and row.baseline:
                return row.p50_us
        return None

    def ratio(self, row: BenchRow) -> float | None:
        base = self.baseline_p50(row.scenario)
        if base is None or row.p50_us is None or base <= 0:
            return None
        return row.p50_us / base


# -- what a scenario gets -----------------------------------------------------------------


def _quiet(message: str) -> None:
    del message


@dataclass
class BenchContext:
    """What a scenario gets: a connected client with the scripts loaded, the sizes, the
    server's URL (for extra clients) and, when the run has one, a PostgreSQL URL.
    ``legacy_registry`` holds the one-script design's scripts (loaded by ``run_bench``)."""

    client: GlideClient
    registry: ScriptRegistry
    url: str
    sizes: BenchSizes
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    database_url: str | None = None
    log: Callable[[str], None] = _quiet
    legacy_registry: ScriptRegistry = field(default_factory=legacy_scripts)

    def keys(self, scenario: str) -> KeySchema:
        """A key prefix of this run and scenario: never collides on a shared server."""
        return KeySchema(prefix=f"bench-{self.run_id}-{scenario}")

    def cache(self, keys: KeySchema, ttl_seconds: int = 600) -> AppConfigFragmentCacheSource:
        return AppConfigFragmentCacheSource(
            self.client, self.registry, ttl_seconds=ttl_seconds, keys=keys
        )

    def legacy(self, keys: KeySchema, ttl_seconds: int = 600) -> LegacyCache:
        """The one-script design beside ``keys``: under ``{prefix}:legacy``, so the
        scenario's clean-up removes it too and no key of one design meets the other."""
        return LegacyCache(
            self.client,
            self.legacy_registry,
            LegacyKeys(f"{keys.prefix}:legacy"),
            ttl_seconds=ttl_seconds,
        )


ScenarioFn: TypeAlias = Callable[[BenchContext], Awaitable[list[BenchRow]]]


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str  # short id, also the key prefix suffix: "a", "c", "d"...
    title: str
    run: ScenarioFn
    needs_database: bool = False


class ScenarioSkipped(Exception):
    """Raised by a scenario that cannot run here; the message says why (listed as skipped)."""


# -- measuring ----------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty sequence."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class Samples:
    latencies_ns: list[int] = field(default_factory=list)
    wall_ns: int = 0

    def add(self, other: Samples) -> None:
        """Add another phase's samples (its wall time adds up too)."""
        self.latencies_ns += other.latencies_ns
        self.wall_ns += other.wall_ns

    def row(self, scenario: str, variant: str, *, baseline: bool = False) -> BenchRow:
        ordered = sorted(self.latencies_ns)
        ops = len(ordered)
        return BenchRow(
            scenario=scenario,
            variant=variant,
            p50_us=percentile(ordered, 0.50) / 1000 if ops else None,
            p99_us=percentile(ordered, 0.99) / 1000 if ops else None,
            ops_per_s=ops / (self.wall_ns / 1e9) if self.wall_ns else None,
            samples=ops,
            baseline=baseline,
        )


async def run_phase(op: Op, *, ops: int, tasks: int, start: int = 0) -> Samples:
    """``tasks`` concurrent tasks, each running ``op`` ``ops`` times; per-op latencies."""
    samples = Samples()

    async def worker(worker_index: int) -> None:
        base = start + worker_index * ops
        for i in range(ops):
            began = time.perf_counter_ns()
            await op(base + i)
            samples.latencies_ns.append(time.perf_counter_ns() - began)

    began = time.perf_counter_ns()
    if tasks == 1:
        await worker(0)
    else:
        await asyncio.gather(*(worker(w) for w in range(tasks)))
    samples.wall_ns = time.perf_counter_ns() - began
    return samples


def rotated(items: Sequence[T], round_index: int) -> list[T]:
    """``items`` in the order of round ``round_index``: shifted by one each round, so
    drift and warm-up hit every item alike."""
    shift = round_index % len(items)
    return [*items[shift:], *items[:shift]]


async def compare(
    variants: Sequence[tuple[str, Op]], *, rounds: int, ops: int, tasks: int
) -> dict[str, Samples]:
    """Run the variants interleaved: each round runs every variant once, in an order
    rotated by one each round, so drift and warm-up hit all of them alike.

    Before each phase the garbage of the previous one is collected, so that no variant
    pays for another's. What lived before the comparison is collected once and frozen
    meanwhile (``gc.freeze``): a full collection walks every object of the process
    (about 0.1 s here), the collection of what the comparison made only those."""
    results = {name: Samples() for name, _ in variants}
    counter = 0
    gc.collect()
    gc.freeze()
    try:
        for round_index in range(rounds):
            for name, op in rotated(variants, round_index):
                gc.collect()
                phase = await run_phase(op, ops=ops, tasks=tasks, start=counter)
                counter += ops * tasks
                results[name].add(phase)
    finally:
        gc.unfreeze()
    return results


def with_tasks(title: str, tasks: int) -> str:
    """A comparison's scenario name: its title and how many tasks ran each variant."""
    return f"{title}, {tasks} task{'s' if tasks > 1 else ''}"


async def compare_rows(
    ctx: BenchContext,
    scenario: str,
    variants: Sequence[tuple[str, Op]],
    *,
    rounds: int,
    ops: int,
    tasks: int,
) -> list[tuple[BenchRow, Samples]]:
    """:func:`compare`, then one row per variant, in order, the first the baseline; each
    with the samples it came from."""
    ctx.log(f"{scenario}: {len(variants)} variants x {rounds} rounds")
    results = await compare(variants, rounds=rounds, ops=ops, tasks=tasks)
    return [
        (results[name].row(scenario, name, baseline=index == 0), results[name])
        for index, (name, _) in enumerate(variants)
    ]


async def gather_limited(jobs: Iterable[Callable[[], Awaitable[object]]], limit: int) -> None:
    """Run the jobs with at most ``limit`` in flight."""
    iterator = iter(jobs)

    async def worker() -> None:
        for job in iterator:
            await job()

    await asyncio.gather(*(worker() for _ in range(limit)))
