"""``atomic-cache demo``: seed a realistic data set, run a WebUI-bootstrap-like read load,
write at every scope, and show what the cache did."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from glide import GlideClient
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ..cache.scripts import ScriptRegistry
from ..cache.source import AppConfigFragmentCacheSource
from ..db import create_schema, invalidation_outbox
from ..keys import KeySchema
from ..metrics import CacheStats
from ..models import FragmentInput, MyFragmentInput, ScopeType
from ..repository import AppConfigFragmentRepository, AppConfigPolicyRepository
from .seed import SeededData, SeedPlan, plan_rows, reset, write_rows

DEMO_PREFIX = "atomic_cache_demo"


@dataclass
class SqlCounter:
    count: int = 0


@contextmanager
def counting_sql(engine: AsyncEngine) -> Iterator[SqlCounter]:
    counter = SqlCounter()

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        # The outbox replayer polls in the background: not the reads being counted.
        if invalidation_outbox.name not in statement:
            counter.count += 1

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield counter
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed_load(
    users: Sequence[uuid.UUID], call: Callable[[uuid.UUID], Awaitable[object]], concurrency: int
) -> list[float]:
    """Call for every user with ``concurrency`` tasks; latencies in µs."""
    latencies: list[float] = []
    queue = list(users)

    async def worker() -> None:
        while queue:
            user = queue.pop()
            began = time.perf_counter()
            await call(user)
            latencies.append((time.perf_counter() - began) * 1e6)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def count_entries(client: GlideClient, keys: KeySchema) -> int:
    cursor, total = "0", 0
    while True:
        reply = await client.custom_command(
            ["SCAN", cursor, "MATCH", f"{keys.prefix}:merged:*", "COUNT", "5000"]
        )
        assert isinstance(reply, list)
        raw_cursor, batch = reply
        total += len(batch)
        cursor = raw_cursor.decode() if isinstance(raw_cursor, bytes) else str(raw_cursor)
        if cursor == "0":
            return total


async def script_calls(client: GlideClient) -> int:
    """EVALSHA + EVALSHA_RO calls since the last CONFIG RESETSTAT: commands clients sent."""
    raw = await client.custom_command(["INFO", "commandstats"])
    info = raw.decode() if isinstance(raw, bytes) else str(raw)
    calls = 0
    for line in info.splitlines():
        if line.startswith(("cmdstat_evalsha:", "cmdstat_evalsha_ro:")):
            calls += int(line.split("calls=")[1].split(",")[0])
    return calls


@dataclass
class WriteRow:
    label: str
    dropped: int
    refills: int
    sql_statements: int


@dataclass
class DemoReport:
    reads: int = 0
    cached_us: list[float] = field(default_factory=list)
    sql_us: list[float] = field(default_factory=list)
    hit_ratio: float = 0.0
    commands_per_read: float = 0.0
    writes: list[WriteRow] = field(default_factory=list)
    read_stats: CacheStats = field(default_factory=CacheStats)  # after the read passes
    stats: CacheStats = field(default_factory=CacheStats)  # at the end


async def run_demo(
    client: GlideClient,
    database_url: str,
    console: Console,
    plan: SeedPlan | None = None,
    readers: int = 50,
) -> DemoReport:
    plan = plan or SeedPlan()
    engine = create_async_engine(database_url, pool_size=readers, max_overflow=10)
    try:
        return await _demo(client, engine, console, plan, readers)
    finally:
        await engine.dispose()


async def _demo(
    client: GlideClient, engine: AsyncEngine, console: Console, plan: SeedPlan, readers: int
) -> DemoReport:
    report = DemoReport()
    keys = KeySchema(DEMO_PREFIX)
    registry = ScriptRegistry()
    await registry.load(client)
    cache = AppConfigFragmentCacheSource(client, registry, ttl_seconds=600, keys=keys)
    await cache.invalidate_for_scope(ScopeType.PUBLIC, "public")  # a clean slate
    repo = AppConfigFragmentRepository(engine, cache=cache)
    sql_only = AppConfigFragmentRepository(engine)

    await create_schema(engine)
    await reset(engine)
    rows = plan_rows(plan)
    with Progress(console=console, transient=False) as progress:
        task = progress.add_task(
            f"seeding {plan.domains} domains, {plan.users:,} users,"
            f" {rows.data.fragments:,} fragments",
            total=rows.total,
        )
        data = await write_rows(engine, rows, lambda n: progress.advance(task, n))

    users = list(data.users)
    console.print(
        f"\n[bold]Read load[/]: my_app_configs for {len(users):,} users, {readers} at a time"
    )
    await client.custom_command(["CONFIG", "RESETSTAT"])
    with counting_sql(engine) as sql:
        cold = await timed_load(users, repo.my_app_configs, readers)
        warm = await timed_load(users, repo.my_app_configs, readers)
    report.reads = len(cold) + len(warm)
    report.commands_per_read = await script_calls(client) / report.reads
    report.hit_ratio = 1 - sql.count / report.reads
    report.read_stats = repo.stats()
    report.cached_us = warm
    report.sql_us = await timed_load(users, sql_only.my_app_configs, readers)
    console.print(
        f"cold pass p50 {percentile(cold, 0.5):,.0f} µs (fills), warm pass p50"
        f" {percentile(warm, 0.5):,.0f} µs, SQL only p50 {percentile(report.sql_us, 0.5):,.0f} µs"
    )

    console.print("\n[bold]Writes at every scope[/] (each invalidates its slice before returning)")
    report.writes = await _writes(client, keys, engine, repo, cache, data)
    report.stats = repo.stats()
    return report


async def _writes(
    client: GlideClient,
    keys: KeySchema,
    engine: AsyncEngine,
    repo: AppConfigFragmentRepository,
    cache: AppConfigFragmentCacheSource,
    data: SeededData,
) -> list[WriteRow]:
    user = next(iter(data.users))
    domain = data.users[user]
    policies = AppConfigPolicyRepository(engine, cache=cache)
    writes: list[tuple[str, Callable[[], Awaitable[object]], Sequence[uuid.UUID]]] = [
        (
            "USER: bulk_create_my (1 user, webui)",
            lambda: repo.bulk_create_my(
                user, [MyFragmentInput(name="webui", extra_config={"demo": 1})]
            ),
            [user],
        ),
        (
            f"DOMAIN: {domain} webui",
            lambda: _upsert(repo, ScopeType.DOMAIN, domain, "webui"),
            data.members(domain),
        ),
        (
            f"DOMAIN_USER_DEFAULTS: {domain} theme",
            lambda: _upsert(repo, ScopeType.DOMAIN_USER_DEFAULTS, domain, "theme"),
            data.members(domain),
        ),
        (
            "PUBLIC: notebook",
            lambda: _upsert(repo, ScopeType.PUBLIC, "public", "notebook"),
            list(data.users),
        ),
        (
            "policy update: shortcuts",
            lambda: policies.update("shortcuts", [ScopeType.USER, ScopeType.PUBLIC]),
            list(data.users),
        ),
    ]
    rows = []
    for label, write, affected in writes:
        before = await count_entries(client, keys)
        await write()
        # Covered entries are unservable once the write returns; a large scope's are
        # deleted by clean-up steps in the background: count them once those are done.
        await cache.reclaiming()
        after = await count_entries(client, keys)
        with counting_sql(engine) as sql:
            await timed_load(affected, repo.my_app_configs, 50)
        refilled = await count_entries(client, keys) - after
        rows.append(WriteRow(label, before - after, refilled, sql.count))
    return rows


async def _upsert(
    repo: AppConfigFragmentRepository, scope: ScopeType, scope_id: str, name: str
) -> None:
    item = FragmentInput(
        scope_type=scope, scope_id=scope_id, name=name, extra_config={"demo": True}
    )
    result = await repo.admin_bulk_update([item])
    if result.failures:
        await repo.admin_bulk_create([item])


def summary(report: DemoReport) -> list[Table]:
    reads = Table(title="Reads: my_app_configs (all 5 names per call)")
    for column in ("", "p50 µs", "p99 µs"):
        reads.add_column(column, justify="right" if column else "left")
    reads.add_row(
        "cached (warm)",
        f"{percentile(report.cached_us, 0.5):,.0f}",
        f"{percentile(report.cached_us, 0.99):,.0f}",
    )
    reads.add_row(
        "SQL merged view",
        f"{percentile(report.sql_us, 0.5):,.0f}",
        f"{percentile(report.sql_us, 0.99):,.0f}",
    )
    ratio = statistics.median(report.sql_us) / statistics.median(report.cached_us)
    reads.add_row("SQL / cached (p50)", f"{ratio:.1f}x", "")
    reads.caption = (
        f"{report.reads:,} cached reads, hit ratio {report.hit_ratio:.1%},"
        f" {report.commands_per_read:.2f} server commands per read"
    )
    writes = Table(title="Writes: entries invalidated and refilled")
    for column in (
        "write",
        "entries dropped",
        "refilled on next reads",
        "SQL statements to refill",
    ):
        writes.add_column(column, justify="left" if column == "write" else "right")
    for row in report.writes:
        writes.add_row(row.label, f"{row.dropped:,}", f"{row.refills:,}", f"{row.sql_statements:,}")
    writes.caption = "each write: one invalidation round trip after its commit"
    return [reads, writes, counters(report.stats)]


def counters(stats: CacheStats) -> Table:
    """What ``repo.stats()`` counted over the whole demo."""
    table = Table(title="Cache counters: repo.stats()")
    table.add_column("counter")
    table.add_column("value", justify="right")
    for name, value in stats.model_dump().items():
        if isinstance(value, dict):
            value = ", ".join(f"{key} {count:,}" for key, count in sorted(value.items())) or "none"
        elif isinstance(value, float):
            value = f"{value:.1%}"
        elif isinstance(value, int):
            value = f"{value:,}"
        table.add_row(name, str(value))
    return table
