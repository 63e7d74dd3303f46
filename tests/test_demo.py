"""The demo, on a small data set, against the real servers of the suite; and
``atomic-cache demo`` as a new user runs it: piped, on embedded servers."""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from glide import GlideClient
from rich.console import Console
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from atomic_cache import CacheStats
from atomic_cache.cache.client import create_valkey_client, redact_url
from atomic_cache.tools import demo
from atomic_cache.tools.cli import database_server, main
from atomic_cache.tools.demo import (
    COUNTERS_HEADING,
    COUNTERS_NOTES,
    DEMO_PREFIX,
    LEFT_HEADING,
    NOT_APPLICABLE,
    READS_HEADING,
    WRITES_HEADING,
    WRITES_NOTES,
    DemoReport,
    Steps,
    counters,
    duration,
    reads_notes,
    reads_table,
    run_demo,
    writes_table,
)
from atomic_cache.tools.embedded import EmbeddedValkey, free_port
from atomic_cache.tools.ranked_demo import (
    PUBLIC_READ_HEADING,
    RANKED_DEMO_PREFIX,
    RANKED_WRITES_NOTES,
    run_ranked_demo,
)
from atomic_cache.tools.seed import SeedPlan, plan_rows

from .valkey_tools import keys_under

PLAN = SeedPlan(domains=3, users=60)
READERS = 5
# What rich gives a pipe when nothing says otherwise, and a common terminal's width.
WIDTH = 80
HEADINGS = (READS_HEADING, WRITES_HEADING, COUNTERS_HEADING)
HEADER_CELLS = ("pass", "write", "counter")  # the first column of each section's table


@dataclass
class DemoRun:
    report: DemoReport
    output: str
    log: str  # its progress, as a pipe gets it
    left_running: list[asyncio.Task[Any]]  # tasks the demo started and did not end


def replayers() -> set[asyncio.Task[Any]]:
    return {
        task
        for task in asyncio.all_tasks()
        if not task.done() and task.get_coro().__qualname__ == "OutboxReplayer._run"  # type: ignore[union-attr]
    }


@pytest.fixture(scope="module")
async def own_valkey() -> AsyncIterator[GlideClient]:
    """A Valkey of this module's own: the demos count every script call the server sees
    (INFO commandstats), so no other test's background work (a replayer, a clean-up
    step) may reach it."""
    with EmbeddedValkey() as server:
        client = await create_valkey_client(server.url, request_timeout_ms=5000)
        yield client
        await client.close()


@pytest.fixture(scope="module")
async def demo_run(own_valkey: GlideClient, database_url: str) -> DemoRun:
    out, log = io.StringIO(), io.StringIO()
    console = Console(file=out, width=WIDTH)
    before = replayers()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo, "PROGRESS_EVERY_S", 0.0)  # a progress line after every call
        report = await run_demo(
            own_valkey, database_url, console, PLAN, readers=READERS, log=Console(file=log)
        )
    return DemoRun(report, out.getvalue(), log.getvalue(), list(replayers() - before))


def cells(text: str) -> set[str]:
    """Every table cell of a rendering, as the reader sees it on one line."""
    return {
        cell.strip()
        for line in text.splitlines()
        if line.startswith(("│", "┃"))
        for cell in line.strip("│┃").split("│" if line.startswith("│") else "┃")
    }


def numbers(table: Table) -> set[str]:
    """The values of a table's right-aligned (numeric) columns."""
    return {
        str(cell) for column in table.columns if column.justify == "right" for cell in column.cells
    }


def heading_line(lines: list[str], heading: str) -> int:
    found = [i for i, line in enumerate(lines) if line.startswith(heading)]
    assert len(found) == 1, f"{heading!r} heads {len(found)} lines"
    return found[0]


def assert_sections_in_order(text: str) -> None:
    """Each heading once, in order, its own table right under it and no other table
    before the next heading."""
    lines = text.splitlines()
    at = [heading_line(lines, heading) for heading in HEADINGS]
    assert at == sorted(at)
    for start, end, header in zip(at, [*at[1:], len(lines)], HEADER_CELLS, strict=True):
        assert lines[start + 1].startswith("┏"), lines[start : start + 3]
        below = lines[start + 2 :]
        header_rows = below[: next(i for i, line in enumerate(below) if line.startswith("┡"))]
        assert " ".join(row.split("┃")[1].strip() for row in header_rows).strip() == header
        section = lines[start + 1 : end]
        assert sum(line.startswith("┏") for line in section) == 1


async def test_demo_runs_and_reports_exact_invalidations(demo_run: DemoRun) -> None:
    report = demo_run.report
    assert report.reads == 120
    assert report.hit_ratio == 0.5  # the cold pass fills, the warm pass only hits
    assert report.commands_per_read == 1.5  # cold: read + fill; warm: read
    # Per pass: one SQL statement per cold call and none warm; the SQL-only pass sends
    # Valkey nothing.
    passes = (report.cold, report.warm, report.sql_only)
    assert [p.calls for p in passes] == [60, 60, 60]
    assert [p.sql_statements for p in passes] == [60, 0, 60]
    assert [p.valkey_commands for p in passes] == [120, 60, 0]
    reads = report.read_stats  # per name: 60 users x 5 names, missed once, then hit
    assert (reads.hits, reads.misses, reads.fills, reads.refused_fills) == (300, 300, 300, 0)
    assert reads.fall_throughs == {} and reads.breaker_state == "closed"
    final = report.stats
    deleted = (final.entries_dropped + final.entries_reclaimed) - (
        reads.entries_dropped + reads.entries_reclaimed
    )
    assert deleted == sum(r.dropped for r in report.writes)
    assert final.fills - reads.fills == sum(r.refills for r in report.writes)
    rows = {row.label.split(":")[0]: row for row in report.writes}
    assert rows["USER"].users == rows["USER"].dropped == 1
    assert rows["PUBLIC"].dropped == 60 and rows["policy update"].dropped == 60
    for row in report.writes:  # one entry per affected user, each refilled by one statement
        assert row.users == row.refills == row.dropped == row.sql_statements
    assert 0 < rows["DOMAIN"].dropped < 60
    assert rows["DOMAIN"].users == rows["DOMAIN_USER_DEFAULTS"].users
    # Its repositories' outbox replayers are stopped before its engine is disposed of.
    assert demo_run.left_running == []


async def test_each_heading_sits_directly_above_its_own_table(demo_run: DemoRun) -> None:
    assert_sections_in_order(demo_run.output)


async def test_no_number_or_note_is_broken_across_lines(demo_run: DemoRun) -> None:
    report, output = demo_run.report, demo_run.output
    lines = output.splitlines()
    assert max(len(line) for line in lines) <= WIDTH
    shown = cells(output)
    for table in (reads_table(report), writes_table(report.writes), counters(report.stats)):
        assert numbers(table) <= shown  # every value whole, in one cell of one line
    # Outside the tables: the seeding line, the headings and the notes, each one line.
    notes = (*reads_notes(report), *WRITES_NOTES, *COUNTERS_NOTES)
    assert f"{READS_HEADING}: my_app_configs (5 names) for 60 users, 5 calls at a time" in lines
    assert all(note in lines for note in notes)
    prose = [line for line in lines if line and line[0] not in "┏┃┡│└"]
    assert re.fullmatch(
        rf"seeded 3 domains, 60 users, 5 policies, {report.seeded.split(', ')[3]} in \d+\.\d s",
        prose[0],
    )
    assert report.seeded.startswith("3 domains, 60 users, 5 policies, ")
    assert [line for line in prose[1:] if line not in notes] == [
        lines[heading_line(lines, heading)] for heading in HEADINGS
    ]


@pytest.mark.parametrize("width", [50, 120])
async def test_tables_keep_their_numbers_whole_at_any_width(demo_run: DemoRun, width: int) -> None:
    """A narrow terminal squeezes the text columns, never a number."""
    report = demo_run.report
    for table in (reads_table(report), writes_table(report.writes), counters(report.stats)):
        out = io.StringIO()
        Console(file=out, width=width).print(table)
        assert numbers(table) <= cells(out.getvalue())


async def test_each_hit_ratio_says_what_it_counts(demo_run: DemoRun) -> None:
    report, lines = demo_run.report, demo_run.output.splitlines()
    # The read passes' ratio counts calls that needed no SQL...
    assert "hit ratio of the read passes (cold then warm): 50.0% of calls needed no SQL" in lines
    # ...the counters' counts every name looked up, writes' re-reads included: another number.
    final = report.stats.hit_ratio
    assert final == report.stats.hits / (report.stats.hits + report.stats.misses) != 0.5
    assert f"hit_ratio {final:.1%}" in " ".join(" ".join(lines).replace("│", " ").split())
    assert "hit_ratio: all cache lookups since start, including the writes' re-reads" in lines
    assert "hits, misses, fills: config names (5 per call), over the whole demo" in lines
    mentions = [line for line in lines if re.search(r"hit[ _]ratio", line)]
    assert len(mentions) == 3, mentions  # the two labelled notes and the counter's row


@pytest.mark.parametrize("model", ["policy", "ranked"])
async def test_one_user_in_more_domains_than_users_is_a_demo_too(
    valkey: GlideClient, database_url: str, model: str
) -> None:
    """The smallest numbers the options allow, domains outnumbering users: no error."""
    out = io.StringIO()
    run = run_ranked_demo if model == "ranked" else run_demo
    report = await run(
        valkey, database_url, Console(file=out, width=WIDTH), SeedPlan(domains=3, users=1), 5
    )
    assert [p.calls for p in (report.cold, report.warm, report.sql_only)] == [1, 1, 1]
    lines = out.getvalue().splitlines()
    heading = next(line for line in lines if line.startswith(READS_HEADING))
    assert heading.endswith(" for 1 user, 1 call at a time")
    assert lines[0].startswith("seeded ") and " 3 domains, 1 user, " in lines[0]


def test_a_time_is_in_ms_or_s_when_it_is_large() -> None:
    us = (0.4, 812.4, 999.7, 1_000, 12_345.6, 9_999_949, 9_999_951, 12_345_678)
    assert [duration(value) for value in us] == [
        "0 µs", "812 µs", "1.0 ms", "1.0 ms", "12.3 ms", "9,999.9 ms", "10.0 s", "12.3 s",
    ]  # fmt: skip


async def test_the_reads_table_gives_each_time_with_its_unit(demo_run: DemoRun) -> None:
    report, lines = demo_run.report, demo_run.output.splitlines()
    header = next(line for line in lines if line.startswith("┃ pass"))
    assert [cell.strip() for cell in header.strip("┃").split("┃")][1:3] == ["p50", "p99"]
    passes = (report.cold, report.warm, report.sql_only)
    rows = [line for line in lines if line.startswith("│") and "pass" not in line]
    for read, row in zip(passes, rows[:3], strict=True):
        cells = [cell.strip() for cell in row.strip("│").split("│")]
        assert cells[1:3] == [duration(read.p50()), duration(read.p99())]
        assert all(re.fullmatch(r"[\d,]+(\.\d)? (µs|ms|s)", cell) for cell in cells[1:3])


def counter_names(table: Table) -> list[str]:
    return [str(cell) for cell in table.columns[0].cells]


async def test_only_the_counters_that_apply_are_shown(demo_run: DemoRun) -> None:
    """No local cache and no sampled checks in the demo: none of their counters."""
    applying = [name for name in CacheStats.model_fields if name not in NOT_APPLICABLE]
    assert counter_names(counters(demo_run.report.stats)) == [*applying, "hit_ratio"]
    assert {"local_hits", "local_flushes", "consistency_checks"} <= set(NOT_APPLICABLE)
    assert len([name for name in NOT_APPLICABLE if name.startswith("local_")]) == 8
    rows = [line for line in demo_run.output.splitlines() if line.startswith("│")]
    assert not [row for row in rows if "local_" in row or "consistency_" in row]
    note = "not shown: local_* (no local cache here), consistency_* (no sampled checks)"
    assert note in demo_run.output.splitlines()


def said(log: str) -> list[str]:
    """The progress lines of a pipe, without the seconds before each."""
    found = [re.fullmatch(r" *\d+\.\ds (.+)", line) for line in log.splitlines()]
    assert all(found), log
    return [match.group(1) for match in found if match]


PROGRESS = re.compile(r"(.+): ([\d,]+) of ([\d,]+) (\w+)")


async def test_a_pipe_hears_of_every_step_and_every_call(demo_run: DemoRun) -> None:
    """With a line every 0 s (the fixture's setting), a pipe hears of each step as it
    starts and of every call while it runs: no stretch of the demo is silent."""
    report, lines = demo_run.report, said(demo_run.log)
    rows = plan_rows(PLAN).total
    starts = [line for line in lines if not PROGRESS.fullmatch(line)]

    def calls(n: int) -> str:
        return "1 call" if n == 1 else f"{n:,} calls"

    writes = []
    for number, row in enumerate(report.writes, 1):
        step = f"write {number} of 5, {row.label}"
        writes += [
            f"{step}: the write, and the clean-up of what it covered",
            f"{step}: re-read: {calls(row.users)}",
        ]
    assert starts == [
        "creating the BEP-1052 tables where missing, emptying them",
        f"seeding {report.seeded}: {rows:,} rows",
        "registering the demo's cache with the database",
        "cold pass (misses, fills): 60 calls",
        "warm pass (hits): 60 calls",
        "SQL merged view, no cache: 60 calls",
        *writes,
        f"counting the keys under {DEMO_PREFIX}:",
    ]
    # Under each counted step, a line after every call but its last.
    counted = {match.group(1): int(match.group(2).replace(",", "")) for line in starts
               if (match := re.fullmatch(r"(.+): ([\d,]+) (calls?|rows)", line))}  # fmt: skip
    progress = [match.groups() for line in lines if (match := PROGRESS.fullmatch(line))]
    for step, total in counted.items():
        done = [int(n.replace(",", "")) for name, n, of, _ in progress if name == step]
        assert all(int(of.replace(",", "")) == total for name, _, of, _ in progress
                   if name == step)  # fmt: skip
        if step.startswith("seeding"):  # a line per batch of rows
            assert done == sorted(done) and done and done[-1] < total
        else:
            assert done == list(range(1, total)), step


def test_progress_is_live_on_a_terminal_else_lines_on_the_log_else_nothing() -> None:
    pipe, log = Console(file=io.StringIO()), Console(file=io.StringIO())
    terminal = Console(file=io.StringIO(), force_terminal=True)
    for out, err, live, logged in (
        (terminal, log, terminal, None),  # the output's terminal first
        (pipe, terminal, terminal, None),  # else the log's
        (pipe, log, None, log),  # else lines on the log
        (pipe, None, None, None),  # else nothing
    ):
        steps = Steps(out, err)
        assert (steps.live, steps.log) == (live, logged)
    quiet = Steps(pipe)
    with quiet.status("a step"), quiet.counted("another", 3) as advance:
        advance(3)
    assert pipe.file.getvalue() == ""  # type: ignore[attr-defined]


async def test_the_demo_leaves_no_cache_registered(demo_run: DemoRun, engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        registered = await conn.scalar(
            text("SELECT count(*) FROM app_config_cache_prefixes WHERE prefix = :prefix"),
            {"prefix": DEMO_PREFIX},
        )
    assert registered == 0
    left = demo_run.report.keys_left
    assert left is not None and left.prefix == DEMO_PREFIX and left.keys > 0
    assert left.persistent == [f"{DEMO_PREFIX}:seq", f"{DEMO_PREFIX}:stamp:public"]


def test_a_given_database_url_is_used_and_nothing_is_announced(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with database_server("postgresql://app@db.example:5433/config") as url:
        assert url == "postgresql+asyncpg://app@db.example:5433/config"
    assert capsys.readouterr() == ("", "")


def test_the_piped_demo_on_embedded_servers_reads_in_order() -> None:
    """``atomic-cache demo | cat`` on a machine without XDG_RUNTIME_DIR (CI, containers),
    with no server URL: both embedded servers are announced on stderr, no warning shows,
    the sections read in order, and the layout is one fixed width whatever COLUMNS says."""
    unset = ("VALKEY_URL", "DATABASE_URL", "XDG_RUNTIME_DIR", "PYTHONWARNINGS")
    env = {key: value for key, value in os.environ.items() if key not in unset}
    env["COLUMNS"] = "60"
    command = [str(Path(sys.executable).with_name("atomic-cache")), "demo"]
    args = ["--users", str(PLAN.users), "--domains", str(PLAN.domains)]
    result = subprocess.run(
        [*command, *args, "--readers", str(READERS)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stderr
    assert "RuntimeDirWarning" not in result.stdout + result.stderr
    announced = result.stderr.splitlines()
    assert any(
        re.fullmatch(r"embedded valkey-server on \S+, stopped on exit", x) for x in announced
    )
    postgres = r"(embedded PostgreSQL (in|on) (\S+)|PostgreSQL container \S+ on \S+), \S+ on exit"
    started = [match for line in announced if (match := re.fullmatch(postgres, line))]
    assert len(started) == 1, announced
    if started[0].group(2) == "in":  # pgserver's data dir, its socket in it: gone on exit
        assert not Path(started[0].group(3)).exists()
    assert_sections_in_order(result.stdout)
    lines = result.stdout.splitlines()
    # Laid out at 120 columns, not COLUMNS=60: every write on one row, notes whole.
    write = r"│ (USER|DOMAIN|DOMAIN_USER_DEFAULTS|PUBLIC|policy update): .*?(│ +[\d,]+ ){4}│"
    rows = [line for line in lines if re.fullmatch(write, line)]
    assert len(rows) == 5, lines
    assert all(note in lines for note in (*WRITES_NOTES, *COUNTERS_NOTES))
    # The embedded servers are removed on exit: nothing is left to speak of.
    assert LEFT_HEADING not in result.stdout
    # Its progress went to stderr, a line per step at least.
    steps = [line.strip() for line in announced if re.fullmatch(r" *\d+\.\ds .+", line)]
    assert len(steps) >= 13, announced


def left_section(lines: list[str]) -> list[str]:
    """The demo's last section, from its heading to the end."""
    return lines[heading_line(lines, LEFT_HEADING) :]


async def test_the_policy_demo_on_given_servers_says_what_it_leaves_there(
    valkey_url: str, database_url: str, valkey: GlideClient
) -> None:
    command = [str(Path(sys.executable).with_name("atomic-cache")), "demo"]
    args = ["--users", "20", "--domains", "2", "--readers", str(READERS)]
    servers = ["--valkey-url", valkey_url, "--database-url", database_url]
    result = await asyncio.to_thread(
        subprocess.run,
        [*command, *args, *servers],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    seeded = re.fullmatch(r"seeded (.+) in \d+\.\d s", lines[0])
    assert seeded is not None, lines[0]
    # What is there now, as the server says.
    keys = await keys_under(valkey, DEMO_PREFIX)
    ttls = {key: await valkey.custom_command(["PTTL", key]) for key in keys}
    persistent = sorted(key for key, ttl in ttls.items() if ttl == -1)
    longest = max(ttl for ttl in ttls.values() if isinstance(ttl, int))
    assert persistent == [f"{DEMO_PREFIX}:seq", f"{DEMO_PREFIX}:stamp:public"]
    assert 600_000 < longest <= 660_000  # the stamps outlive the entries by 60 s
    assert left_section(lines) == [
        LEFT_HEADING,
        f"Valkey {redact_url(valkey_url)}, database 0: {len(keys):,} keys under {DEMO_PREFIX}:",
        f"  2 never expire: {DEMO_PREFIX}:seq, {DEMO_PREFIX}:stamp:public",
        f"  the other {len(keys) - 2:,} expire within 11 min",
        f"  to remove them all: SCAN MATCH '{DEMO_PREFIX}:*', then UNLINK",
        f"PostgreSQL {redact_url(database_url)}:",
        "  domains, users, app_config_policies, app_config_fragments and",
        "  app_config_invalidation_outbox were emptied (TRUNCATE ... CASCADE) and, where",
        "  missing, created with their triggers; the first four hold the demo's data set:",
        f"  {seeded.group(1)};",
        "  its cache is no longer registered there (app_config_cache_prefixes)",
    ]


# -- the ranked model: atomic-cache demo --model ranked -------------------------------------

RANKED_PLAN = SeedPlan(domains=2, users=20)
RANKED_WRITES = (
    "USER fragment",
    "DOMAIN fragment",
    "PUBLIC fragment",
    "rank",
    "grant purge",
    "definition purge",
)


async def demo_databases(server_url: str) -> set[str]:
    admin = create_async_engine(server_url, pool_size=1)
    try:
        async with admin.connect() as conn:
            rows = await conn.execute(
                text("SELECT datname FROM pg_database WHERE datname LIKE 'atomic_cache_demo_%'")
            )
            return {row[0] for row in rows}
    finally:
        await admin.dispose()


async def test_the_ranked_demo_reports_exact_invalidations_and_matches_sql(
    own_valkey: GlideClient, database_url: str
) -> None:
    out = io.StringIO()
    before = await demo_databases(database_url)
    report = await run_ranked_demo(
        own_valkey, database_url, Console(file=out, width=WIDTH), RANKED_PLAN, readers=READERS
    )
    lines = out.getvalue().splitlines()
    passes = (report.cold, report.warm, report.sql_only)
    assert [p.sql_statements for p in passes] == [20, 0, 20]
    assert [p.valkey_commands for p in passes] == [40, 20, 0]
    assert report.hit_ratio == 0.5
    assert [row.label.split(":")[0] for row in report.writes] == list(RANKED_WRITES)
    assert all(row.matches_sql is True for row in report.writes)
    rows = {row.label.split(":")[0]: row for row in report.writes}
    assert rows["USER fragment"].dropped == rows["USER fragment"].refills == 1
    # Everyone's slice: each user's entry of that name, and the anonymous read's.
    assert rows["PUBLIC fragment"].dropped == rows["rank"].dropped == 21
    assert rows["definition purge"].refills == 0  # an unregistered name is never cached
    for heading in (*HEADINGS, PUBLIC_READ_HEADING):
        assert sum(line.startswith(heading) for line in lines) == 1, heading
    assert (
        f"{READS_HEADING}: resolve(user, domain, 5 names) for 20 users, 5 calls at a time" in lines
    )
    assert f"{PUBLIC_READ_HEADING}: resolve_public(5 names): 5 of 5 set, matches SQL" in lines
    assert all(note in lines for note in (*WRITES_NOTES, *RANKED_WRITES_NOTES, *COUNTERS_NOTES))
    assert max(len(line) for line in lines) <= WIDTH
    # Its own database is dropped at the end.
    assert await demo_databases(database_url) == before


async def test_the_ranked_demo_from_the_command_line(valkey_url: str, database_url: str) -> None:
    command = [str(Path(sys.executable).with_name("atomic-cache")), "demo", "--model", "ranked"]
    args = ["--users", "20", "--domains", "2", "--readers", str(READERS)]
    servers = ["--valkey-url", valkey_url, "--database-url", database_url]
    result = await asyncio.to_thread(
        subprocess.run,
        [*command, *args, *servers],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("seeded 5 definitions x 3 grants, 2 domains, 20 users, ")
    for heading in (*HEADINGS, PUBLIC_READ_HEADING):
        assert sum(line.startswith(heading) for line in lines) == 1, heading
    write = r"│ ([^│]+?) +(│ +[\d,]+ ){4}│ (\S+) +│"
    rows = [match for line in lines if (match := re.fullmatch(write, line))]
    assert [row.group(1).split(":")[0] for row in rows] == list(RANKED_WRITES)
    assert [row.group(3) for row in rows] == ["yes"] * 6  # each re-read matched SQL
    left = left_section(lines)
    assert left[1] == f"Valkey {redact_url(valkey_url)}, database 0: {left[1].split(': ')[1]}"
    assert left[1].endswith(f" keys under {RANKED_DEMO_PREFIX}:")
    assert left[2] == (
        f"  2 never expire: {RANKED_DEMO_PREFIX}:seq, {RANKED_DEMO_PREFIX}:stamp:public"
    )
    dropped = re.fullmatch(
        r"  nothing; the demo's own database, (atomic_cache_demo_ranked_[0-9a-f]{10}),"
        r" was dropped at the end",
        left[-1],
    )
    assert left[-2] == f"PostgreSQL {redact_url(database_url)}:" and dropped is not None, left
    assert dropped.group(1) not in await demo_databases(database_url)


IN_MEMORY = "(the data set is built in memory before it is written)"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--model", "nonsense"], "Error: --model: 'nonsense' is not one of policy, ranked"),
        (["--users", "0"], "Error: --users: 0 is not a positive number"),
        (["--users", "-5"], "Error: --users: -5 is not a positive number"),
        (["--domains", "0"], "Error: --domains: 0 is not a positive number"),
        (["--model", "ranked", "--domains", "-1"], "Error: --domains: -1 is not a positive number"),
        (["--readers", "0"], "Error: --readers: 0 is not a positive number"),
        (["--users", "many"], "Error: --users: 'many' is not a whole number"),
        (["--readers", "2.5"], "Error: --readers: '2.5' is not a whole number"),
        (
            ["--readers", "81"],
            "Error: --readers: 81 is more than 80 (each holds a PostgreSQL connection;"
            " the default limit is 100)",
        ),
        (["--users", "1000001"], f"Error: --users: 1,000,001 is more than 1,000,000 {IN_MEMORY}"),
        (["--domains", "10001"], f"Error: --domains: 10,001 is more than 10,000 {IN_MEMORY}"),
    ],
)
def test_a_bad_demo_option_is_one_usage_line(args: list[str], line: str) -> None:
    result = CliRunner().invoke(
        main, ["demo", *args], env={"VALKEY_URL": None, "DATABASE_URL": None}
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.splitlines() == [line]


@pytest.mark.parametrize("first", [True, False], ids=["database first", "database last"])
def test_a_bad_number_is_named_before_the_database_is_connected_to(first: bool) -> None:
    """However the options are ordered, a bad number stops the demo before it reaches
    for PostgreSQL (here refused: that would be exit 1, 'cannot reach')."""
    refused = ["--database-url", f"postgresql://app@127.0.0.1:{free_port()}/app"]
    args = [*refused, "--users", "0"] if first else ["--users", "0", *refused]
    result = CliRunner().invoke(main, ["demo", *args], env={"VALKEY_URL": None})
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == ["Error: --users: 0 is not a positive number"]
