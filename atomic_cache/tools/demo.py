"""``atomic-cache demo``: seed a realistic data set, run a WebUI-bootstrap-like read load,
write at every scope, and show what the cache did.

The output reads top to bottom: each section prints its heading, runs, then prints its
table right under it. While a step runs, :class:`Steps` says what it is doing: on a
terminal a bar or spinner that goes away when the step ends; on a pipe or in a log, a
line on the log console (the CLI's stderr) when a step starts and every few seconds while
it runs.
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
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ..cache.client import ValkeyURL, redact_url
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


def counted(n: int, thing: str) -> str:
    """``n`` things, in words: "1 user", "5,000 users"."""
    return f"{n:,} {thing}" + ("" if n == 1 else "s")


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed_load(
    users: Sequence[uuid.UUID],
    call: Callable[[uuid.UUID], Awaitable[object]],
    concurrency: int,
    on_call: Callable[[int], None] | None = None,
) -> list[float]:
    """Call for every user with ``concurrency`` tasks; latencies in µs. ``on_call(1)``
    after each call."""
    latencies: list[float] = []
    queue = list(users)

    async def worker() -> None:
        while queue:
            user = queue.pop()
            began = time.perf_counter()
            await call(user)
            latencies.append((time.perf_counter() - began) * 1e6)
            if on_call is not None:
                on_call(1)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


# A pipe or a log gets a progress line at least this often while a counted step runs.
PROGRESS_EVERY_S = 2.0


class Steps:
    """Says what the demo is doing while it runs, so that no stretch of it is silent.

    On a terminal (the output's, else the log's) a live bar or spinner, which goes away
    when its step ends, so that each heading stays directly above its table. Otherwise,
    given a ``log`` console (the CLI's stderr), one line when a step starts, and for a
    counted step one every ``PROGRESS_EVERY_S`` while it runs, each with the seconds since
    the demo began. Neither (a library caller, a test): nothing."""

    def __init__(self, console: Console, log: Console | None = None) -> None:
        terminals = [each for each in (console, log) if each is not None and each.is_terminal]
        self.live: Console | None = terminals[0] if terminals else None
        self.log: Console | None = log if self.live is None else None
        self.began = time.monotonic()

    def line(self, text: str) -> None:
        """One line on the log console (a pipe or a log), after the time so far."""
        if self.log is not None:
            elapsed = time.monotonic() - self.began
            self.log.print(f"{elapsed:6.1f}s {text}", style="dim", highlight=False, soft_wrap=True)

    @contextmanager
    def status(self, description: str) -> Iterator[None]:
        """A step whose length is not known in advance."""
        if self.live is not None:
            with self.live.status(description):
                yield
            return
        self.line(description)
        yield

    @contextmanager
    def counted(
        self, description: str, total: int, unit: str = "calls"
    ) -> Iterator[Callable[[int], None]]:
        """A step of ``total`` units: yields advance(n) to call as they are done."""
        if total == 1:
            unit = unit.removesuffix("s")
        if self.live is not None:
            columns = (
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(unit),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=self.live, transient=True) as bar:
                task = bar.add_task(description, total=total)
                yield lambda n: bar.advance(task, n)
            return
        if self.log is None:
            yield lambda n: None
            return
        self.line(f"{description}: {total:,} {unit}")
        done, shown = 0, time.monotonic()

        def advance(n: int) -> None:
            nonlocal done, shown
            done += n
            if done < total and time.monotonic() - shown >= PROGRESS_EVERY_S:
                shown = time.monotonic()
                self.line(f"{description}: {done:,} of {total:,} {unit}")

        yield advance


async def count_entries(client: GlideClient, keys: KeySchema) -> int:
    return len(await scan_keys(client, f"{keys.prefix}:merged:*"))


async def scan_keys(client: GlideClient, pattern: str) -> list[str]:
    """Every key matching ``pattern`` (SCAN, a few thousand a step)."""
    cursor, found = "0", []
    while True:
        reply = await client.custom_command(["SCAN", cursor, "MATCH", pattern, "COUNT", "5000"])
        assert isinstance(reply, list)
        raw_cursor, batch = reply
        found += [key.decode() if isinstance(key, bytes) else str(key) for key in batch]
        cursor = raw_cursor.decode() if isinstance(raw_cursor, bytes) else str(raw_cursor)
        if cursor == "0":
            return found


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
class KeysLeft:
    """What the demo leaves in Valkey: its keys, and those of them without a TTL."""

    prefix: str
    keys: int = 0
    persistent: list[str] = field(default_factory=list)  # never expire: sequence, stamps
    expire_within_s: int = 0  # the longest TTL of the others


@dataclass
class DemoReport:
    cold: ReadPass = field(default_factory=ReadPass)  # through the cache, starting empty
    warm: ReadPass = field(default_factory=ReadPass)  # through the cache, filled
    sql_only: ReadPass = field(default_factory=ReadPass)  # the SQL merged view, no cache
    writes: list[WriteRow] = field(default_factory=list)
    read_stats: CacheStats = field(default_factory=CacheStats)  # after the read passes
    stats: CacheStats = field(default_factory=CacheStats)  # at the end
    seeded: str = ""  # the data set, in words: "20 domains, 5,000 users, ..."
    keys_left: KeysLeft | None = None  # in Valkey, at the end
    database: str | None = None  # the ranked demo's own database (dropped at the end)

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


DEMO_TTL_S = 600  # the demo cache's TTL


async def run_demo(
    client: GlideClient,
    database_url: str,
    console: Console,
    plan: SeedPlan | None = None,
    readers: int = 50,
    log: Console | None = None,
) -> DemoReport:
    """Run the demo, printing each section to ``console`` as it completes, and what it is
    doing meanwhile (:class:`Steps`: on a terminal, else on ``log`` if given)."""
    plan = plan or SeedPlan()
    steps = Steps(console, log)
    engine = create_async_engine(database_url, pool_size=readers, max_overflow=10)
    try:
        return await _demo(client, engine, console, steps, plan, readers)
    finally:
        await engine.dispose()


async def demo_cache(client: GlideClient, prefix: str) -> AppConfigFragmentCacheSource:
    """The demos' cache source: the scripts loaded, entries under ``prefix`` living
    ``DEMO_TTL_S``."""
    registry = ScriptRegistry()
    await registry.load(client)
    return AppConfigFragmentCacheSource(
        client, registry, ttl_seconds=DEMO_TTL_S, keys=KeySchema(prefix)
    )


async def _demo(
    client: GlideClient,
    engine: AsyncEngine,
    console: Console,
    steps: Steps,
    plan: SeedPlan,
    readers: int,
) -> DemoReport:
    cache = await demo_cache(client, DEMO_PREFIX)
    keys = cache.keys
    # No sampled consistency checks: their SQL would blur the counts the demo reports.
    repo = AppConfigFragmentRepository(engine, cache=cache, verify_sample=0)
    sql_only = AppConfigFragmentRepository(engine)
    policies = AppConfigPolicyRepository(engine, cache=cache)
    try:
        with steps.status("creating the BEP-1052 tables where missing, emptying them"):
            await create_schema(engine)
            await reset(engine)
        rows = plan_rows(plan)
        seeded = (
            f"{counted(plan.domains, 'domain')}, {counted(plan.users, 'user')},"
            f" {len(POLICIES)} policies, {rows.data.fragments:,} fragments"
        )
        began = time.monotonic()
        with steps.counted(f"seeding {seeded}", rows.total, "rows") as advance:
            data = await write_rows(engine, rows, advance)
        console.print(f"seeded {seeded} in {time.monotonic() - began:.1f} s", highlight=False)
        # A clean slate: the demo's cache is not registered while it seeds (the seeding
        # records nothing for it), then registering it makes every entry a previous run
        # left unservable.
        with steps.status("registering the demo's cache with the database"):
            async with engine.begin() as conn:
                await outbox.unregister(conn, keys.prefix)
            await repo.start()  # registers it now, not inside the timed passes
            await cache.reclaiming()  # and the clean-up of what it dropped ends before them

        users = list(data.users)
        console.print(
            f"\n[bold]{READS_HEADING}[/]: my_app_configs ({len(POLICIES)} names) for"
            f" {counted(len(users), 'user')}, {counted(min(readers, len(users)), 'call')} at a time"
        )
        report = await read_passes(
            client,
            engine,
            steps,
            console,
            users,
            repo.my_app_configs,
            sql_only.my_app_configs,
            repo.stats,
            readers,
        )
        report.seeded = seeded
        console.print(f"\n[bold]{WRITES_HEADING}[/], each followed by a re-read of its users")
        report.writes = await _writes(
            client, keys, engine, steps, repo, policies, cache, data, readers
        )
        print_writes(console, report.writes)

        report.stats = repo.stats()
        print_final_counters(console, report.stats)
    finally:
        # Their outbox replayers poll in the background: stop them before the engine
        # is disposed of.
        for each in (repo, sql_only, policies):
            await each.close()
    # Nothing follows the demo's cache once it ends: the triggers stop recording for it.
    async with engine.begin() as conn:
        await outbox.unregister(conn, keys.prefix)
    report.keys_left = await keys_left(client, keys, steps, DEMO_TTL_S)
    return report


async def keys_left(client: GlideClient, keys: KeySchema, steps: Steps, ttl_s: int) -> KeysLeft:
    """The keys under the demo's prefix at its end, and which of them never expire. The
    entries and their index expire within the cache's TTL (``ttl_s``): only the others
    (stamps, the sequence, the catalogue of names: a few) are asked."""
    with steps.status(f"counting the keys under {keys.prefix}:"):
        found = await scan_keys(client, f"{keys.prefix}:*")
        expiring = (f"{keys.prefix}:merged:", f"{keys.prefix}:idx:")
        left = KeysLeft(keys.prefix, len(found), expire_within_s=ttl_s)
        for key in sorted(key for key in found if not key.startswith(expiring)):
            pttl = await client.custom_command(["PTTL", key])
            assert isinstance(pttl, int)
            if pttl == -1:
                left.persistent.append(key)
            else:
                left.expire_within_s = max(left.expire_within_s, -(-pttl // 1000))
    return left


async def _read_pass(
    client: GlideClient,
    engine: AsyncEngine,
    steps: Steps,
    name: str,
    users: Sequence[uuid.UUID],
    call: Callable[[uuid.UUID], Awaitable[object]],
    readers: int,
) -> ReadPass:
    """One call per user, ``readers`` at a time, counting what they sent the servers."""
    commands = await script_calls(client)
    with counting_sql(engine) as sql, steps.counted(name, len(users)) as advance:
        latencies = await timed_load(users, call, readers, advance)
    return ReadPass(latencies, sql.count, await script_calls(client) - commands)


async def read_passes(
    client: GlideClient,
    engine: AsyncEngine,
    steps: Steps,
    console: Console,
    users: Sequence[uuid.UUID],
    cached: Callable[[uuid.UUID], Awaitable[object]],
    sql_only: Callable[[uuid.UUID], Awaitable[object]],
    stats: Callable[[], CacheStats],
    readers: int,
) -> DemoReport:
    """The cold and warm passes through the cache, then the SQL-only pass; printed."""
    report = DemoReport()
    report.cold = await _read_pass(
        client, engine, steps, "cold pass (misses, fills)", users, cached, readers
    )
    report.warm = await _read_pass(
        client, engine, steps, "warm pass (hits)", users, cached, readers
    )
    report.read_stats = stats()
    report.sql_only = await _read_pass(
        client, engine, steps, "SQL merged view, no cache", users, sql_only, readers
    )
    print_reads(console, report)
    return report


# One write of the demo: its label, the call, the users whose merges it can change.
Write = tuple[str, Callable[[], Awaitable[object]], Sequence[uuid.UUID]]


async def measure_writes(
    client: GlideClient,
    keys: KeySchema,
    engine: AsyncEngine,
    steps: Steps,
    cache: AppConfigFragmentCacheSource,
    writes: Sequence[Write],
    reread: Callable[[uuid.UUID], Awaitable[object]],
    readers: int,
    matches_sql: Callable[[uuid.UUID], Awaitable[bool]] | None = None,
) -> list[WriteRow]:
    """Each write, then a re-read of its users: the entries it removed, those the re-read
    refilled and the SQL that took (and, given ``matches_sql``, whether each user's
    re-read agrees with SQL, checked outside the counts)."""
    rows = []
    for number, (label, write, affected) in enumerate(writes, 1):
        step = f"write {number} of {len(writes)}, {label}"
        with steps.status(f"{step}: the write, and the clean-up of what it covered"):
            before = await count_entries(client, keys)
            await write()
            # Covered entries are unservable once the write returns; a large scope's are
            # deleted by clean-up steps in the background: count them once those are done.
            await cache.reclaiming()
            after = await count_entries(client, keys)
        with (
            counting_sql(engine) as sql,
            steps.counted(f"{step}: re-read", len(affected)) as advance,
        ):
            await timed_load(affected, reread, readers, advance)
        refilled = await count_entries(client, keys) - after
        row = WriteRow(label, len(affected), before - after, refilled, sql.count)
        if matches_sql is not None:
            with steps.counted(f"{step}: re-read vs SQL", len(affected), "users") as advance:
                agreed = await _all_agree(affected, matches_sql, readers, advance)
            row.matches_sql = agreed
        rows.append(row)
    return rows


async def _all_agree(
    users: Sequence[uuid.UUID],
    agrees: Callable[[uuid.UUID], Awaitable[bool]],
    concurrency: int,
    advance: Callable[[int], None],
) -> bool:
    disagreed: list[uuid.UUID] = []

    async def check(user: uuid.UUID) -> None:
        if not await agrees(user):
            disagreed.append(user)

    await timed_load(users, check, concurrency, advance)
    return not disagreed


async def _writes(
    client: GlideClient,
    keys: KeySchema,
    engine: AsyncEngine,
    steps: Steps,
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
        client, keys, engine, steps, cache, writes, repo.my_app_configs, readers
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


def duration(us: float) -> str:
    """A time for a reader: µs below a millisecond, ms below ten seconds, else s (as
    rounded: 999.7 µs is "1.0 ms", never "1,000 µs")."""
    if round(us) < 1_000:
        return f"{us:,.0f} µs"
    if round(us / 1_000, 1) < 10_000:
        return f"{us / 1_000:,.1f} ms"
    return f"{us / 1_000_000:,.1f} s"


def reads_table(report: DemoReport) -> Table:
    table = Table()
    table.add_column("pass")
    _numeric(table, "p50", "p99", "SQL\nstatements", "Valkey\ncommands")
    passes = (
        ("cold (misses, fills)", report.cold),
        ("warm (hits)", report.warm),
        ("SQL merged view", report.sql_only),
    )
    for label, read in passes:
        table.add_row(
            label,
            duration(read.p50()),
            duration(read.p99()),
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


# Counters of what the demo never uses: no local cache, no sampled consistency checks.
LOCAL_COUNTERS = tuple(name for name in CacheStats.model_fields if name.startswith("local_"))
CHECK_COUNTERS = ("consistency_checks", "consistency_mismatches")
NOT_APPLICABLE = (*LOCAL_COUNTERS, *CHECK_COUNTERS)


def counters(stats: CacheStats, leave_out: Sequence[str] = NOT_APPLICABLE) -> Table:
    """What ``repo.stats()`` counted over the whole demo, but for the counters of what
    it does not use (``leave_out``)."""
    table = Table()
    table.add_column("counter")
    table.add_column("value", justify="right", no_wrap=True)
    for name, value in stats.model_dump().items():
        if name in leave_out:
            continue
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
    "not shown: local_* (no local cache here), consistency_* (no sampled checks)",
)


def print_counters(console: Console, stats: CacheStats) -> None:
    console.print(counters(stats))
    notes(console, COUNTERS_NOTES)


def print_final_counters(console: Console, stats: CacheStats) -> None:
    """The last section: its heading, then the counters."""
    console.print(f"\n[bold]{COUNTERS_HEADING}[/]: repo.stats() at the end of the demo")
    print_counters(console, stats)


# -- what stays on the servers it was given -------------------------------------------------

LEFT_HEADING = "Left on the servers it was given"


def keys_left_lines(url: str, left: KeysLeft) -> list[str]:
    """What the demo leaves in the Valkey at ``url``: its keys, and which never expire."""
    where = f"Valkey {redact_url(url)}, database {ValkeyURL.parse(url).database}"
    lines = [f"{where}: {left.keys:,} keys under {left.prefix}:"]
    if left.persistent:
        lines.append(f"  {len(left.persistent)} never expire: {', '.join(left.persistent)}")
    expiring = left.keys - len(left.persistent)
    if expiring:
        minutes = -(-left.expire_within_s // 60)
        lines.append(f"  the other {expiring:,} expire within {minutes} min")
    if left.keys:
        lines.append(f"  to remove them all: SCAN MATCH '{left.prefix}:*', then UNLINK")
    return lines


def print_left_behind(
    console: Console, report: DemoReport, valkey_url: str | None, database_lines: Sequence[str]
) -> None:
    """The last section, only when a server was given (an embedded one is removed on exit):
    what the demo leaves in Valkey (``valkey_url``) and in PostgreSQL (``database_lines``)."""
    lines = [*database_lines]
    if valkey_url is not None and report.keys_left is not None:
        lines = [*keys_left_lines(valkey_url, report.keys_left), *lines]
    if not lines:
        return
    console.print(f"\n[bold]{LEFT_HEADING}[/]")
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


def policy_database_lines(database_url: str, report: DemoReport) -> list[str]:
    """What the policy demo leaves in the PostgreSQL database at ``database_url``."""
    return [
        f"PostgreSQL {redact_url(database_url)}:",
        "  domains, users, app_config_policies, app_config_fragments and",
        "  app_config_invalidation_outbox were emptied (TRUNCATE ... CASCADE) and, where",
        "  missing, created with their triggers; the first four hold the demo's data set:",
        f"  {report.seeded};",
        "  its cache is no longer registered there (app_config_cache_prefixes)",
    ]
