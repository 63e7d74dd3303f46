"""The demo, on a small data set, against the real servers of the suite; and
``atomic-cache demo`` as a new user runs it: piped, on embedded servers."""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from glide import GlideClient
from rich.console import Console
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from atomic_cache.tools.cli import database_server, main
from atomic_cache.tools.demo import (
    COUNTERS_HEADING,
    COUNTERS_NOTES,
    READS_HEADING,
    WRITES_HEADING,
    WRITES_NOTES,
    DemoReport,
    counters,
    reads_notes,
    reads_table,
    run_demo,
    writes_table,
)
from atomic_cache.tools.ranked_demo import (
    PUBLIC_READ_HEADING,
    RANKED_WRITES_NOTES,
    run_ranked_demo,
)
from atomic_cache.tools.seed import SeedPlan

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
    left_running: list[asyncio.Task[Any]]  # tasks the demo started and did not end


def replayers() -> set[asyncio.Task[Any]]:
    return {
        task
        for task in asyncio.all_tasks()
        if not task.done() and task.get_coro().__qualname__ == "OutboxReplayer._run"  # type: ignore[union-attr]
    }


@pytest.fixture(scope="module")
async def demo_run(valkey: GlideClient, database_url: str) -> DemoRun:
    out = io.StringIO()
    console = Console(file=out, width=WIDTH)
    before = replayers()
    report = await run_demo(valkey, database_url, console, PLAN, readers=READERS)
    return DemoRun(report, out.getvalue(), list(replayers() - before))


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
    assert prose[0].startswith("seeding 3 domains, 60 users, ")
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
    valkey: GlideClient, database_url: str
) -> None:
    out = io.StringIO()
    before = await demo_databases(database_url)
    report = await run_ranked_demo(
        valkey, database_url, Console(file=out, width=WIDTH), RANKED_PLAN, readers=READERS
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


def test_the_ranked_demo_from_the_command_line(valkey_url: str, database_url: str) -> None:
    command = [str(Path(sys.executable).with_name("atomic-cache")), "demo", "--model", "ranked"]
    args = ["--users", "20", "--domains", "2", "--readers", str(READERS)]
    servers = ["--valkey-url", valkey_url, "--database-url", database_url]
    result = subprocess.run(
        [*command, *args, *servers],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("seeding 5 definitions x 3 grants, 2 domains, 20 users, ")
    for heading in (*HEADINGS, PUBLIC_READ_HEADING):
        assert sum(line.startswith(heading) for line in lines) == 1, heading
    write = r"│ ([^│]+?) +(│ +[\d,]+ ){4}│ (\S+) +│"
    rows = [match for line in lines if (match := re.fullmatch(write, line))]
    assert [row.group(1).split(":")[0] for row in rows] == list(RANKED_WRITES)
    assert [row.group(3) for row in rows] == ["yes"] * 6  # each re-read matched SQL


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--model", "nonsense"], "Error: --model: 'nonsense' is not one of policy, ranked"),
        (["--users", "0"], "Error: --users: 0 is not a positive number"),
        (["--model", "ranked", "--domains", "-1"], "Error: --domains: -1 is not a positive number"),
    ],
)
def test_a_bad_demo_option_is_one_usage_line(args: list[str], line: str) -> None:
    result = CliRunner().invoke(
        main, ["demo", *args], env={"VALKEY_URL": None, "DATABASE_URL": None}
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.splitlines() == [line]
