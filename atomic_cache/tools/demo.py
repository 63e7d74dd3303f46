"""``atomic-cache demo``: seed a realistic data set, run a WebUI-bootstrap-like read load,
write at every scope, and show what the cache did.

The output reads top to bottom: each section prints its heading, runs, then prints its
table right under it (a progress bar in between shows only on a terminal, and goes away).
"""

from __future__ import annotations

import asyncio
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
from ..db import cache_prefixes, invalidation_outbox, outbox
from ..keys import KeySchema
from ..metrics import CacheStats
from ..models import ScopeType
from ..policy import create_schema
from ..policy.consistency import CHECK_LABEL
from ..policy.models import FragmentInput, MyFragmentInput
from ..policy.repository import AppConfigFragmentRepository, AppConfigPolicyRepository
from .seed import POLICIES, SeededData, SeedPlan, plan_rows, reset, write_rows

DEMO_PREFIX = "atomic_cache_demo"

# Section headings, printed before each section runs, its table right under it.
READS_HEADING = "Reads"
WRITES_HEADING = "Writes at every scope"
COUNTERS_HEADING = "Cache counters"


@dataclass
class SqlCounter:
    count: int = 0


@contextmanager
def counting_sql(engine: AsyncEngine) -> Iterator[SqlCounter]:
    counter = SqlCounter()

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        # The outbox replayer polls and beats in the background: not the reads counted.
        background = (invalidation_outbox.name, cache_prefixes.name, CHECK_LABEL)
        if not any(word in statement for word in background):
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
    users: Sequence[uuid.UUID],
    call: Callable[[uuid.UUID], Awaitable[object]],
    concurrency: int,
    on_call: Callable[[], None] | None = None,
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
            if on_call is not None:
                on_call()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


@contextmanager
def progress_bar(console: Console, description: str, total: int) -> Iterator[Callable[[], None]]:
    """Advance-by-one for a bar shown while a step runs, on a terminal only: it vanishes
    when the step ends, so each heading stays directly above its table; a pipe or a log
    gets nothing (rich would leave a blank line there)."""
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


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
    """EVALSHA + EVALSHA_RO calls the server counted so far (INFO commandstats). The demo
    takes differences, so it never resets the statistics of a server it was given."""
    raw = await client.custom_command(["INFO", "commandstats"])
    info = raw.decode() if isinstance(raw, bytes) else str(raw)
    calls = 0
    for line in info.splitlines():
        if line.startswith(("cmdstat_evalsha:", "cmdstat_evalsha_ro:")):
            calls += int(line.split("calls=")[1].split(",")[0])
    return calls


@dataclass
class ReadPass:
    """One my_app_configs call per user: latencies, and what the calls sent the servers."""

    latencies_us: list[float] = field(default_factory=list)
    sql_statements: int = 0
    valkey_commands: int = 0  # script calls (EVALSHA / EVALSHA_RO)

    @property
    def calls(self) -> int:
        return len(self.latencies_us)

    def p50(self) -> float:
        return percentile(self.latencies_us, 0.5)

    def p99(self) -> float:
        return percentile(self.latencies_us, 0.99)


@dataclass
class WriteRow:
    label: str
    users: int  # users whose merged configs the write changed, re-read afterwards
    dropped: int  # cached entries gone: deleted by the call, or after it by clean-up steps
    refills: int
    sql_statements: int
    matches_sql: bool | None = None  # the re-read agreed with SQL (ranked demo only)


@dataclass
class DemoReport:
    cold: ReadPass = field(default_factory=ReadPass)  # through the cache, starting empty
    warm: ReadPass = field(default_factory=ReadPass)  # through the cache, filled
    sql_only: ReadPass = field(default_factory=ReadPass)  # the SQL merged view, no cache
    writes: list[WriteRow] = field(default_factory=list)
    read_stats: CacheStats = field(default_factory=CacheStats)  # after the read passes
    stats: CacheStats = field(default_factory=CacheStats)  # at the end

    @property
    def reads(self) -> int:
        """my_app_configs calls through the cache: the cold pass and the warm pass."""
        return self.cold.calls + self.warm.calls

    @property
    def hit_ratio(self) -> float:
        """Share of the cold and warm passes' calls that needed no SQL (per call, where
        ``CacheStats.hit_ratio`` counts per config name over the whole demo)."""
        return 1 - (self.cold.sql_statements + self.warm.sql_statements) / self.reads

    @property
    def commands_per_read(self) -> float:
        return (self.cold.valkey_commands + self.warm.valkey_commands) / self.reads

    @property
    def speed_up(self) -> float:
        """The SQL merged view's p50 over the warm pass's p50."""
        return self.sql_only.p50() / self.warm.p50()


async def run_demo(
    client: GlideClient,
    database_url: str,
    console: Console,
    plan: SeedPlan | None = None,
    readers: int = 50,
) -> DemoReport:
    """Run the demo, printing each section to ``console`` as it completes."""
    plan = plan or SeedPlan()
    engine = create_async_engine(database_url, pool_size=readers, max_overflow=10)
    try:
        return await _demo(client, engine, console, plan, readers)
    finally:
        await engine.dispose()


async def _demo(
    client: GlideClient, engine: AsyncEngine, console: Console, plan: SeedPlan, readers: int
) -> DemoReport:
    keys = KeySchema(DEMO_PREFIX)
    registry = ScriptRegistry()
    await registry.load(client)
    cache = AppConfigFragmentCacheSource(client, registry, ttl_seconds=600, keys=keys)
    # No sampled consistency checks: their SQL would blur the counts the demo reports.
    repo = AppConfigFragmentRepository(engine, cache=cache, verify_sample=0)
    sql_only = AppConfigFragmentRepository(engine)
    policies = AppConfigPolicyRepository(engine, cache=cache)
    try:
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
        # A clean slate: the demo's cache is not registered while it seeds (the seeding
        # records nothing for it), then registering it makes every entry a previous run
        # left unservable.
        async with engine.begin() as conn:
            await outbox.unregister(conn, keys.prefix)
        await repo.start()  # registers it now, not inside the timed passes
        await cache.reclaiming()  # and the clean-up of what it dropped ends before them

        users = list(data.users)
        console.print(
            f"\n[bold]{READS_HEADING}[/]: my_app_configs ({len(POLICIES)} names) for"
            f" {len(users):,} users, {readers} calls at a time"
        )
        report = await read_passes(
            client,
            engine,
            console,
            users,
            repo.my_app_configs,
            sql_only.my_app_configs,
            repo.stats,
            readers,
        )
        console.print(f"\n[bold]{WRITES_HEADING}[/], each followed by a re-read of its users")
        report.writes = await _writes(
            client, keys, engine, console, repo, policies, cache, data, readers
        )
        print_writes(console, report.writes)

        report.stats = repo.stats()
        print_final_counters(console, report.stats)
        return report
    finally:
        # Their outbox replayers poll in the background: stop them before the engine
        # is disposed of.
        for each in (repo, sql_only, policies):
            await each.close()


async def _read_pass(
    client: GlideClient,
    engine: AsyncEngine,
    console: Console,
    name: str,
    users: Sequence[uuid.UUID],
    call: Callable[[uuid.UUID], Awaitable[object]],
    readers: int,
) -> ReadPass:
    """One call per user, ``readers`` at a time, counting what they sent the servers."""
    commands = await script_calls(client)
    with counting_sql(engine) as sql, progress_bar(console, name, len(users)) as advance:
        latencies = await timed_load(users, call, readers, advance)
    return ReadPass(latencies, sql.count, await script_calls(client) - commands)


async def read_passes(
    client: GlideClient,
    engine: AsyncEngine,
    console: Console,
    users: Sequence[uuid.UUID],
    cached: Callable[[uuid.UUID], Awaitable[object]],
    sql_only: Callable[[uuid.UUID], Awaitable[object]],
    stats: Callable[[], CacheStats],
    readers: int,
) -> DemoReport:
    """The cold and warm passes through the cache, then the SQL-only pass; printed."""
    report = DemoReport()
    report.cold = await _read_pass(client, engine, console, "cold pass", users, cached, readers)
    report.warm = await _read_pass(client, engine, console, "warm pass", users, cached, readers)
    report.read_stats = stats()
    report.sql_only = await _read_pass(
        client, engine, console, "SQL merged view", users, sql_only, readers
    )
    print_reads(console, report)
    return report


# One write of the demo: its label, the call, the users whose merges it can change, and
# (the ranked model's) a check that their re-reads match SQL.
Write = tuple[str, Callable[[], Awaitable[object]], Sequence[uuid.UUID]]


async def measure_writes(
    client: GlideClient,
    keys: KeySchema,
    engine: AsyncEngine,
    console: Console,
    cache: AppConfigFragmentCacheSource,
    writes: Sequence[Write],
    reread: Callable[[uuid.UUID], Awaitable[object]],
    readers: int,
    matches_sql: Callable[[Sequence[uuid.UUID]], Awaitable[bool]] | None = None,
) -> list[WriteRow]:
    """Each write, then a re-read of its users: the entries it removed, those the re-read
    refilled and the SQL that took (and, given ``matches_sql``, whether the re-read
    agrees with SQL, checked outside the counts)."""
    rows = []
    with progress_bar(console, "writes and re-reads", len(writes)) as advance:
        for label, write, affected in writes:
            before = await count_entries(client, keys)
            await write()
            # Covered entries are unservable once the write returns; a large scope's are
            # deleted by clean-up steps in the background: count them once those are done.
            await cache.reclaiming()
            after = await count_entries(client, keys)
            with counting_sql(engine) as sql:
                await timed_load(affected, reread, readers)
            refilled = await count_entries(client, keys) - after
            row = WriteRow(label, len(affected), before - after, refilled, sql.count)
            if matches_sql is not None:
                row.matches_sql = await matches_sql(affected)
            rows.append(row)
            advance()
    return rows


async def _writes(
    client: GlideClient,
    keys: KeySchema,
    engine: AsyncEngine,
    console: Console,
    repo: AppConfigFragmentRepository,
    policies: AppConfigPolicyRepository,
    cache: AppConfigFragmentCacheSource,
    data: SeededData,
    readers: int,
) -> list[WriteRow]:
    user = next(iter(data.users))
    domain = data.users[user]
    writes: list[Write] = [
        (
            "USER: webui via bulk_create_my",
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
    return await measure_writes(
        client, keys, engine, console, cache, writes, repo.my_app_configs, readers
    )


async def _upsert(
    repo: AppConfigFragmentRepository, scope: ScopeType, scope_id: str, name: str
) -> None:
    item = FragmentInput(
        scope_type=scope, scope_id=scope_id, name=name, extra_config={"demo": True}
    )
    result = await repo.admin_bulk_update([item])
    if result.failures:
        await repo.admin_bulk_create([item])


# -- the tables ---------------------------------------------------------------------------
# Numbers never wrap (no_wrap): on a narrow terminal the text columns give way. The tables
# fit 80 columns at the default plan, and each note under a table is one line of at most 80.


def _numeric(table: Table, *headers: str) -> None:
    for header in headers:
        table.add_column(header, justify="right", no_wrap=True)


def notes(console: Console, lines: Sequence[str]) -> None:
    for line in lines:
        console.print(line, style="dim", highlight=False)


def reads_table(report: DemoReport) -> Table:
    table = Table()
    table.add_column("pass")
    _numeric(table, "p50 µs", "p99 µs", "SQL\nstatements", "Valkey\ncommands")
    passes = (
        ("cold (misses, fills)", report.cold),
        ("warm (hits)", report.warm),
        ("SQL merged view", report.sql_only),
    )
    for label, read in passes:
        table.add_row(
            label,
            f"{read.p50():,.0f}",
            f"{read.p99():,.0f}",
            f"{read.sql_statements:,}",
            f"{read.valkey_commands:,}",
        )
    return table


def reads_notes(report: DemoReport) -> list[str]:
    return [
        f"hit ratio of the read passes (cold then warm): {report.hit_ratio:.1%}"
        " of calls needed no SQL",
        f"Valkey commands per call over those passes: {report.commands_per_read:.2f}",
        f"warm p50: {report.speed_up:.1f}x faster than the SQL merged view, no cache",
    ]


def print_reads(console: Console, report: DemoReport) -> None:
    console.print(reads_table(report))
    notes(console, reads_notes(report))


def writes_table(rows: Sequence[WriteRow]) -> Table:
    table = Table()
    table.add_column("write")
    _numeric(table, "users", "removed", "refilled", "SQL")
    checked = any(row.matches_sql is not None for row in rows)
    if checked:
        table.add_column("= SQL", no_wrap=True)
    for row in rows:
        cells = [
            row.label,
            f"{row.users:,}",
            f"{row.dropped:,}",
            f"{row.refills:,}",
            f"{row.sql_statements:,}",
        ]
        if checked:
            cells.append({True: "yes", False: "NO", None: ""}[row.matches_sql])
        table.add_row(*cells)
    return table


WRITES_NOTES = (
    "each write invalidates what it changed: one round trip after its commit",
    "removed: cached entries (one per user and config name) deleted by that call,",
    "  or for a large scope by the clean-up steps that follow it",
    "refilled: entries the re-read stored again; SQL: the statements it ran",
)


def print_writes(console: Console, rows: Sequence[WriteRow]) -> None:
    console.print(writes_table(rows))
    notes(console, WRITES_NOTES)


def counters(stats: CacheStats) -> Table:
    """What ``repo.stats()`` counted over the whole demo."""
    table = Table()
    table.add_column("counter")
    table.add_column("value", justify="right", no_wrap=True)
    for name, value in stats.model_dump().items():
        if isinstance(value, dict):
            value = ", ".join(f"{key} {count:,}" for key, count in sorted(value.items())) or "none"
        elif isinstance(value, float):
            value = f"{value:.1%}"
        elif isinstance(value, int):
            value = f"{value:,}"
        table.add_row(name, str(value))
    return table


COUNTERS_NOTES = (
    f"hits, misses, fills: config names ({len(POLICIES)} per call), over the whole demo",
    "hit_ratio: all cache lookups since start, including the writes' re-reads",
)


def print_counters(console: Console, stats: CacheStats) -> None:
    console.print(counters(stats))
    notes(console, COUNTERS_NOTES)


def print_final_counters(console: Console, stats: CacheStats) -> None:
    """The last section: its heading, then the counters."""
    console.print(f"\n[bold]{COUNTERS_HEADING}[/]: repo.stats() at the end of the demo")
    print_counters(console, stats)
