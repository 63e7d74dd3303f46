"""The demo, on a small data set, against the real servers of the suite."""

from __future__ import annotations

import io

from glide import GlideClient
from rich.console import Console

from atomic_cache.tools.demo import run_demo, summary
from atomic_cache.tools.seed import SeedPlan


async def test_demo_runs_and_reports_exact_invalidations(
    valkey: GlideClient, database_url: str
) -> None:
    out = io.StringIO()
    report = await run_demo(
        valkey, database_url, Console(file=out, width=120), SeedPlan(domains=3, users=60), readers=5
    )
    assert report.reads == 120
    assert report.hit_ratio == 0.5  # the cold pass fills, the warm pass only hits
    assert report.commands_per_read == 1.5  # cold: read + fill; warm: read
    reads = report.read_stats  # per name: 60 users x 5 names, missed once, then hit
    assert (reads.hits, reads.misses, reads.fills, reads.refused_fills) == (300, 300, 300, 0)
    assert reads.fall_throughs == {} and reads.breaker_state == "closed"
    final = report.stats
    deleted = (final.entries_dropped + final.entries_reclaimed) - (
        reads.entries_dropped + reads.entries_reclaimed
    )
    assert deleted == sum(r.dropped for r in report.writes)
    assert final.fills - reads.fills == sum(r.refills for r in report.writes)
    dropped = {row.label.split(":")[0]: row.dropped for row in report.writes}
    assert dropped["USER"] == 1
    assert dropped["PUBLIC"] == 60 and dropped["policy update"] == 60
    for row in report.writes:
        assert row.refills == row.dropped == row.sql_statements
    assert 0 < dropped["DOMAIN"] < 60
    rendered = io.StringIO()
    console = Console(file=rendered, width=160)
    for table in summary(report):
        console.print(table)
    assert "hit ratio 50.0%" in rendered.getvalue()
    assert "Cache counters" in rendered.getvalue()
