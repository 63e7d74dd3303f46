"""The bench report as text: table cells (the CLI's table), markdown and JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

from .kit import BenchReport, Extra


def _number(value: float | None, *, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _extra_text(extra: Extra) -> str:
    parts = []
    for key, value in extra.items():
        shown = f"{value:,}" if isinstance(value, int) else str(value)
        parts.append(f"{key}={shown}")
    return "; ".join(parts)


COLUMNS = ("scenario", "variant", "n", "p50 µs", "p99 µs", "ops/s", "p50 ratio", "notes")


def table_cells(report: BenchReport) -> list[list[str]]:
    """The report as table rows of text, in COLUMNS order."""
    cells = []
    for row in report.rows:
        ratio = report.ratio(row)
        cells.append(
            [
                row.scenario,
                row.variant + (" (baseline)" if row.baseline else ""),
                f"{row.samples:,}",
                _number(row.p50_us),
                _number(row.p99_us),
                _number(row.ops_per_s, digits=0),
                f"{ratio:.2f}" if ratio is not None else "",
                _extra_text(row.extra),
            ]
        )
    return cells


def to_markdown(report: BenchReport) -> str:
    meta = report.meta
    lines = [
        "# atomic_cache bench",
        "",
        f"- run: {meta.get('sizes', {}).get('name', '?')}, started {meta.get('started_at')},"
        f" {meta.get('duration_s', '?')} s",
        f"- server: {meta.get('server')} ({meta.get('server_where')})",
        f"- client: {meta.get('client')}, Python {meta.get('python')}",
        f"- machine: {meta.get('machine')}; load average (1, 5, 15 min)"
        f" {meta.get('load_average_at_start', '?')} at the start,"
        f" {meta.get('load_average_at_end', '?')} at the end",
        "",
        "Variants of one scenario ran interleaved in rounds; `p50 ratio` is the p50 relative to"
        " the scenario's baseline. Rows named legacy run the former one-script design"
        " (tools/bench/legacy_lua/) in the same run. For d. (one invalidation per row, n = 1)"
        " the p50 column is the call's wall time and ops/s the entries deleted per second"
        " until reclaimed; longest_call_us and longest_cleanup_us are the longest script runs (slow"
        " log) of the call and of its clean-up steps (cleanup_step_p50_us / _p99_us: the"
        " usual steps), reclaimed_ms the time from the call's"
        " start until the covered entries were deleted, served_after_call how many of the"
        " sampled covered entries a lookup right after the call was served (stored_after_call:"
        " how many were still stored), reader_stall_us the longest wait of another client's"
        " GET meanwhile; a legacy call deletes everything itself, so its call time is its"
        " server block. For g. bypassed counts the reads that skipped Valkey (breaker open, no"
        " I/O), failed_calls the cache calls that went out and failed, timeouts those of them"
        " that waited the full request timeout. For h. a sample is a fill's lookup + write"
        " (the database read between them left out). For i. index_bytes sums MEMORY USAGE"
        " over the index keys (p:idx:*). For j. every cluster key is in the slot of"
        " {app_config}, so one shard serves it all; server_reads is how many reads the"
        " serving server counted (INFO commandstats, equal to n), server_cpu_us_per_read its"
        " CPU per read (INFO cpu), one_core_reads_per_s what one core would serve at that"
        " cost; waits is how many WAIT commands the invalidations' server counted during"
        " the timed calls; bytes_per_entry is the growth of used_memory, less replication"
        " and client buffers, per entry held.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for cells in table_cells(report):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    if report.skipped:
        lines += ["", "Skipped:", *(f"- {reason}" for reason in report.skipped)]
    return "\n".join(lines) + "\n"


def to_json(report: BenchReport) -> str:
    def clean(value: object) -> object:
        if isinstance(value, float) and math.isnan(value):
            return None
        return value

    rows = [
        {key: clean(value) for key, value in asdict(row).items()} | {"ratio_p50": report.ratio(row)}
        for row in report.rows
    ]
    return json.dumps(
        {"meta": report.meta, "rows": rows, "skipped": report.skipped}, indent=2, default=str
    )
