"""Scenario d: DOMAIN and PUBLIC invalidation fan-out. The new design's call (stamps),
its background clean-up steps and its longest server command, beside the one-script
design's single call, each with the same users; and one invalidation naming every user
as a USER target (split into calls of at most MAX_TARGETS_PER_CALL targets)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

from glide import GlideClient

from ...cache.client import create_valkey_client
from ...cache.source import AppConfigFragmentCacheSource
from ...models import PUBLIC_SCOPE_ID, ScopeType
from .data import fill_users
from .kit import (
    BENCH_REQUEST_TIMEOUT_MS,
    BenchContext,
    BenchRow,
    Extra,
    gather_limited,
    percentile,
)
from .legacy import LegacyCache
from .server import (
    as_text,
    command,
    command_stats,
    count_keys,
    longest_us,
    script_runs,
    slowlog_slower_than,
)

FANOUT_PREFIX = "d. "
FANOUT_SCOPES = (ScopeType.DOMAIN, ScopeType.PUBLIC, ScopeType.USER)
# The one-script design blocks the server for seconds past this many users: not run there.
LEGACY_FANOUT_MAX_USERS = 10_000
# Covered users whose entries are looked up right after an invalidation returns.
FANOUT_SAMPLE_USERS = 200
# d's slow-log threshold. Every script call of d runs longer; a lower one would log each
# of the thousands of commands the scripts run, and the server time that costs would
# land in the figures.
FANOUT_SLOWLOG_US = 20
# The scripts of the clean-up steps (invalidate.lua is the call's).
CLEANUP_SCRIPTS = ("reclaim", "sweep")


async def scenario_fanout(ctx: BenchContext) -> list[BenchRow]:
    """DOMAIN and PUBLIC invalidation of every user of the prefix (all in one domain):
    the new design's call, clean-up and longest command, the one-script design's call
    beside it up to LEGACY_FANOUT_MAX_USERS."""
    keys = ctx.keys("d")
    probe = await create_valkey_client(
        ctx.url, request_timeout_ms=BENCH_REQUEST_TIMEOUT_MS, client_name="atomic_cache-bench"
    )
    fanout = _Fanouts(ctx, probe, ctx.cache(keys), ctx.legacy(keys))
    rows: list[BenchRow] = []
    try:
        for size in ctx.sizes.fanout_users:
            users = [uuid.uuid4() for _ in range(size)]
            for scope in FANOUT_SCOPES:
                rows += await fanout.rows(scope, users)
    finally:
        await probe.close()
    return rows


@dataclass
class _Fanouts:
    """Scenario d's side-by-side runs: fill, invalidate, measure, one design after the
    other, each with the same users."""

    ctx: BenchContext
    probe: GlideClient
    cache: AppConfigFragmentCacheSource
    legacy: LegacyCache

    async def rows(self, scope: ScopeType, users: Sequence[uuid.UUID]) -> list[BenchRow]:
        ctx, size = self.ctx, len(users)
        names = [f"name{i}" for i in range(ctx.sizes.fanout_names)]
        domain = f"fanout-{size}"
        scenario = f"{FANOUT_PREFIX}{scope.name} invalidation, {size:,} users x {len(names)} names"
        invalidate: Callable[[], Awaitable[int]]
        if scope is ScopeType.USER:  # one target per user, in one invalidate_many
            targets = [(ScopeType.USER, str(user)) for user in users]
            invalidate = partial(self.cache.invalidate_many, targets)
            scenario = f"{FANOUT_PREFIX}USER invalidation of {size:,} users x {len(names)} names"
        else:
            target = (scope, domain if scope is ScopeType.DOMAIN else PUBLIC_SCOPE_ID)
            invalidate = partial(self.cache.invalidate_for_scope, *target)
        rows: list[BenchRow] = []
        if size <= LEGACY_FANOUT_MAX_USERS and scope is not ScopeType.USER:
            ctx.log(f"{scenario}: one-script design")
            await fill_users(ctx, self.legacy.set_many, users, domain, names)
            measured = await _measure_legacy_fanout(
                ctx, self.probe, partial(self.legacy.invalidate, *target)
            )
            rows.append(_legacy_fanout_row(scenario, scope, size, measured))
        ctx.log(f"{scenario}: stamps and clean-up steps")
        began = time.perf_counter()
        await fill_users(ctx, self.cache.set_many, users, domain, names)
        fill_s = time.perf_counter() - began
        sample = random.Random(size).sample(users, min(FANOUT_SAMPLE_USERS, size))
        fanout = await _measure_fanout(
            ctx,
            self.probe,
            self.cache,
            invalidate,
            sample,
            names,
        )
        row = _fanout_row(scenario, scope, size, fanout)
        row.extra["fill_entries_per_s"] = round(size * len(names) / fill_s)
        return [*rows, row]


@dataclass
class StallProbe:
    """Another client's GET of a missing key, in a loop: its longest wait is what a
    concurrent request felt while the server ran something else."""

    longest_ns: int = 0


@asynccontextmanager
async def stall_probe(probe: GlideClient, key: str) -> AsyncIterator[StallProbe]:
    found = StallProbe()
    stop = asyncio.Event()

    async def reader() -> None:
        while not stop.is_set():
            began = time.perf_counter_ns()
            await probe.get(key)
            found.longest_ns = max(found.longest_ns, time.perf_counter_ns() - began)
            await asyncio.sleep(0.0005)

    probing = asyncio.create_task(reader())
    await asyncio.sleep(0.01)
    try:
        yield found
    finally:
        stop.set()
        await probing


@dataclass(frozen=True, slots=True)
class _LegacyFanout:
    call_us: float
    deleted: int
    server_block_us: int | None
    stall_us: float


async def _measure_legacy_fanout(
    ctx: BenchContext, probe: GlideClient, invalidate: Callable[[], Awaitable[int]]
) -> _LegacyFanout:
    """One call deletes everything it covers: its wall time, its slow-log duration and
    the longest wait of another client's GET meanwhile."""
    sha1 = ctx.legacy_registry["invalidate"].sha1
    async with (
        slowlog_slower_than(ctx.client, FANOUT_SLOWLOG_US),
        stall_probe(probe, f"{ctx.keys('d').prefix}:probe") as stall,
    ):
        began = time.perf_counter_ns()
        deleted = await invalidate()
        call_ns = time.perf_counter_ns() - began
        runs = await script_runs(ctx.client, sha1)
    return _LegacyFanout(call_ns / 1000, deleted, longest_us(runs), stall.longest_ns / 1000)


def _legacy_fanout_row(
    scenario: str, scope: ScopeType, users: int, measured: _LegacyFanout
) -> BenchRow:
    extra: Extra = {"users": users, "scope": scope.name, "design": "legacy"}
    if measured.server_block_us is not None:
        extra["longest_call_us"] = measured.server_block_us
    extra |= {
        "reclaimed_ms": round(measured.call_us / 1000, 1),
        "deleted": measured.deleted,
        "reader_stall_us": round(measured.stall_us),
    }
    return BenchRow(
        scenario=scenario,
        variant="legacy: one script deletes every covered entry",
        p50_us=measured.call_us,
        ops_per_s=measured.deleted / (measured.call_us / 1e6),
        samples=1,
        baseline=True,
        extra=extra,
    )


@dataclass(frozen=True, slots=True)
class _Fanout:
    call_us: float
    calls: int  # script calls that named targets (one, or several for many USER targets)
    reclaimed_us: float  # from the call's start until the clean-up ended
    deleted: int  # by the call and its clean-up
    cleanup_steps: int
    longest_call_us: int | None
    cleanup_us: list[int]  # the slow-log durations of the clean-up steps
    sampled: int  # covered entries looked up right after the call
    served: int  # of those, how many a reader was served (must be 0)
    stored: int  # of those, how many were still stored then
    entries_left: int  # entry keys under the prefix once the clean-up ended
    index_keys_left: int
    stall_us: float


async def _measure_fanout(
    ctx: BenchContext,
    probe: GlideClient,
    cache: AppConfigFragmentCacheSource,
    invalidate: Callable[[], Awaitable[int]],
    sample: Sequence[uuid.UUID],
    names: Sequence[str],
) -> _Fanout:
    """One invalidation of the new design: the call returns after the logical step; the
    source's own background task runs the clean-up steps, as in production. Right after
    the call, the sampled covered entries are looked up; the clean-up ends when that task
    does. The slow log gives the longest script call of each part; INFO commandstats
    (EVALSHA calls, the lookups are EVALSHA_RO) how many steps ran."""
    client = ctx.client
    sha1 = ctx.registry["invalidate"].sha1
    reclaimed_before = cache.metrics.entries_reclaimed
    async with (
        slowlog_slower_than(client, FANOUT_SLOWLOG_US),
        stall_probe(probe, f"{cache.keys.prefix}:probe") as stall,
    ):
        calls_before = await _evalsha_calls(client)
        began = time.perf_counter_ns()
        deleted = await invalidate()
        call_ns = time.perf_counter_ns() - began
        stored, served = await _check_covered(client, cache, sample, names)
        await cache.reclaiming()
        reclaimed_ns = time.perf_counter_ns() - began
        runs = await script_runs(client, sha1)
        step_runs = [
            run
            for name in CLEANUP_SCRIPTS
            for run in await script_runs(client, ctx.registry[name].sha1)
        ]
        calls = len(runs)
        steps = await _evalsha_calls(client) - calls_before - calls
    await cache.reclaim()  # one more step, which finds the queue empty
    deleted += cache.metrics.entries_reclaimed - reclaimed_before
    prefix = cache.keys.prefix
    return _Fanout(
        call_us=call_ns / 1000,
        calls=calls,
        reclaimed_us=reclaimed_ns / 1000,
        deleted=deleted,
        cleanup_steps=steps,
        longest_call_us=longest_us(runs),
        cleanup_us=sorted(run.duration_us for run in step_runs),
        sampled=len(sample) * len(names),
        served=served,
        stored=stored,
        entries_left=await count_keys(client, f"{prefix}:merged:*"),
        index_keys_left=await count_keys(client, f"{prefix}:idx:*"),
        stall_us=stall.longest_ns / 1000,
    )


async def _evalsha_calls(client: GlideClient) -> int:
    stat = (await command_stats(client)).get("evalsha")
    return stat.calls if stat else 0


async def _check_covered(
    client: GlideClient,
    cache: AppConfigFragmentCacheSource,
    sample: Sequence[uuid.UUID],
    names: Sequence[str],
) -> tuple[int, int]:
    """How many of the sampled users' entries are still stored, and how many of them a
    lookup serves (an invalidation that returned must leave none servable)."""
    entry_keys = [cache.keys.entry(user, name) for user in sample for name in names]
    stored = int(as_text(await command(client, "EXISTS", *entry_keys)))
    served = 0

    async def look_up(user: uuid.UUID) -> None:
        nonlocal served
        found = await cache.lookup_many(user, names)
        served += sum(1 for hit in found.values() if hit.value is not None)

    # A few at a time, as readers would: the clean-up steps run meanwhile.
    await gather_limited((partial(look_up, user) for user in sample), 8)
    return stored, served


def _fanout_row(scenario: str, scope: ScopeType, users: int, measured: _Fanout) -> BenchRow:
    extra: Extra = {"users": users, "scope": scope.name, "design": "new"}
    if measured.longest_call_us is not None:
        extra["longest_call_us"] = measured.longest_call_us
    if measured.cleanup_us:
        # The longest step, and the usual ones: one long step among a thousand short
        # ones points at the machine (a descheduled server), not at the step's work.
        extra["longest_cleanup_us"] = measured.cleanup_us[-1]
        extra["cleanup_step_p50_us"] = percentile(measured.cleanup_us, 0.50)
        extra["cleanup_step_p99_us"] = percentile(measured.cleanup_us, 0.99)
    extra |= {
        "calls": measured.calls,
        "cleanup_steps": measured.cleanup_steps,
        "reclaimed_ms": round(measured.reclaimed_us / 1000, 1),
        "deleted": measured.deleted,
        "sampled": measured.sampled,
        "served_after_call": measured.served,
        "stored_after_call": measured.stored,
        "entries_left": measured.entries_left,
        "index_keys_left": measured.index_keys_left,
        "reader_stall_us": round(measured.stall_us),
    }
    return BenchRow(
        scenario=scenario,
        variant="new: stamps in the call, clean-up steps in the background",
        p50_us=measured.call_us,
        ops_per_s=measured.deleted / (measured.reclaimed_us / 1e6),
        samples=1,
        extra=extra,
    )
