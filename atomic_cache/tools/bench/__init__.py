"""``atomic-cache bench``: numbers to trust, measured side by side in one run (DESIGN §6).

Timings on a shared machine drift, so every comparison runs its variants interleaved in
rounds (the order rotates each round) and reports ratios to a baseline measured in the
same rounds, with p50/p99 and throughput; server-side costs come from the server itself
(``INFO commandstats``, ``SLOWLOG``, ``INFO memory`` / ``MEMORY USAGE``).

The benchmark is a list of :class:`Scenario` objects (``SCENARIOS``). Each is an async
function taking a :class:`BenchContext` and returning :class:`BenchRow` objects, all of one
shape, so the report (markdown, JSON, PNGs) needs nothing per scenario. To add one, write
the function in a module of its own and append a ``Scenario`` here; one that needs
PostgreSQL (b, g) is marked ``needs_database=True``: it receives ``ctx.database_url`` and
is skipped, and listed as skipped, when there is none. A scenario that finds something else
it needs missing raises :class:`ScenarioSkipped`, and is listed as skipped too.

Where a scenario compares with the former one-script design (one script deletes every
entry an invalidation covers; one global epoch is the fill token), it runs that design's
scripts (``legacy_lua/``, :class:`LegacyCache`) under a prefix of its own, in the same run.

Bench keys live under a prefix of their own per run and scenario and are removed after
each scenario, but the run is meant for a server of its own: it resets ``INFO
commandstats`` and the slow log and briefly lowers ``slowlog-log-slower-than`` (restored).

The modules: ``kit`` (rows, context, interleaved timing), ``sizes``, ``server`` (what
the server says of itself), ``legacy`` (the one-script design), ``data`` (configs, fills,
the seeded database); one module per scenario (``reads`` a, ``sql`` b, ``writes`` c,
``fanout`` d, ``memory`` e, ``server_cost`` f, ``outage`` g, ``refusals`` h,
``index_churn`` i, ``cluster`` j, ``local`` k, ``following`` l, ``sentinel`` m, ``ranked`` n);
``report`` (markdown, JSON) and ``plot`` (a PNG per scenario).
Scenarios import the kit, never each other; this module puts them together.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from ..doctor import server_identity
from .cluster import scenario_cluster
from .fanout import scenario_fanout
from .following import scenario_following
from .index_churn import scenario_index_churn
from .kit import (
    BENCH_REQUEST_TIMEOUT_MS,
    BenchContext,
    BenchReport,
    BenchRow,
    Scenario,
    ScenarioSkipped,
)
from .legacy import LegacyCache, LegacyKeys
from .local import scenario_local
from .memory import scenario_memory
from .outage import scenario_outage
from .plot import plot
from .ranked import scenario_ranked
from .reads import scenario_reads
from .refusals import scenario_refusals
from .report import COLUMNS, table_cells, to_json, to_markdown
from .sentinel import scenario_sentinel
from .server import drop_prefix, info_fields
from .server_cost import scenario_server_cost
from .sizes import FULL, QUICK, SIZES, TINY, BenchSizes
from .sql import scenario_sql
from .writes import scenario_writes

__all__ = [
    "BENCH_REQUEST_TIMEOUT_MS",
    "COLUMNS",
    "FULL",
    "QUICK",
    "SCENARIOS",
    "SIZES",
    "TINY",
    "BenchContext",
    "BenchReport",
    "BenchRow",
    "BenchSizes",
    "LegacyCache",
    "LegacyKeys",
    "Results",
    "Scenario",
    "ScenarioSkipped",
    "plot",
    "run_bench",
    "table_cells",
    "to_json",
    "to_markdown",
    "write_results",
]

SCENARIOS: list[Scenario] = [
    Scenario("a", "cached read vs raw GET, 1 and 50 tasks", scenario_reads),
    Scenario("b", "repository: cached vs SQL merged view", scenario_sql, needs_database=True),
    Scenario("c", "Lua write vs client-side batches; fill vs invalidation races", scenario_writes),
    Scenario(
        "d",
        "DOMAIN and PUBLIC invalidation fan-out: call, clean-up, longest command",
        scenario_fanout,
    ),
    Scenario("e", "memory per cached entry, index included", scenario_memory),
    Scenario("f", "server-side µs per script call (INFO commandstats)", scenario_server_cost),
    Scenario(
        "g",
        "repository: Valkey dead or paused vs no cache",
        scenario_outage,
        needs_database=True,
    ),
    Scenario("h", "fills refused while other users and domains are invalidated", scenario_refusals),
    Scenario("i", "index memory after churn (short TTL)", scenario_index_churn),
    Scenario(
        "j",
        "cluster vs standalone: hits on primary and replica, invalidation with and without"
        " the replica WAIT, one shard's memory and reads",
        scenario_cluster,
    ),
    Scenario("k", "local cache: hits vs Valkey and cashews, cross-process window", scenario_local),
    Scenario(
        "l",
        "the cache follows the database: plain-SQL COMMIT to served, trigger cost, checker",
        scenario_following,
        needs_database=True,
    ),
    Scenario(
        "m",
        "Sentinel: a killed primary to the first hit on the new one; TLS vs plain hits",
        scenario_sentinel,
        needs_database=True,
    ),
    Scenario(
        "n",
        "ranked model: resolve of 5 names, SQL vs cached vs local cache, 1 and 50 tasks;"
        " anonymous read; memory per entry",
        scenario_ranked,
        needs_database=True,
    ),
]


# -- running ------------------------------------------------------------------------------


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> str:
    """What else the machine was doing: timings on a busy machine run long."""
    try:
        return " / ".join(f"{load:.2f}" for load in os.getloadavg())
    except OSError:
        return "?"


async def run_bench(
    ctx: BenchContext,
    scenarios: Sequence[Scenario] | None = None,
    *,
    server_label: str | None = None,
) -> BenchReport:
    """Run the scenarios in order; each one's keys are removed when it ends."""
    info = await info_fields(ctx.client, "server")
    name, version = server_identity(info)
    report = BenchReport(
        meta={
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "key_prefix": f"bench-{ctx.run_id}-",
            "sizes": asdict(ctx.sizes),
            "server": f"{name} {version}",
            "server_where": server_label or ctx.url,
            "client": f"valkey-glide {_package_version('valkey-glide')}",
            "python": platform.python_version(),
            "machine": f"{_cpu_model()}, {os.cpu_count()} CPUs, {platform.system()}",
            "load_average_at_start": _load_average(),
        }
    )
    await ctx.legacy_registry.load(ctx.client)
    began = time.perf_counter()
    for scenario in scenarios if scenarios is not None else SCENARIOS:
        if scenario.needs_database and not ctx.database_url:
            report.skipped.append(f"{scenario.key}. {scenario.title}: needs a database URL")
            continue
        ctx.log(f"scenario {scenario.key}: {scenario.title}")
        try:
            report.rows += await scenario.run(ctx)
        except ScenarioSkipped as why:
            report.skipped.append(f"{scenario.key}. {scenario.title}: {why}")
        finally:
            await drop_prefix(ctx.client, ctx.keys(scenario.key).prefix)
    report.meta["duration_s"] = round(time.perf_counter() - began, 1)
    report.meta["load_average_at_end"] = _load_average()
    return report


@dataclass(frozen=True, slots=True)
class Results:
    """What a run wrote: bench.md, bench.json, and the plots (one PNG per scenario, then
    bench-plots.md, which shows them)."""

    markdown: Path
    json: Path
    plots: list[Path]


def write_results(report: BenchReport, directory: Path) -> Results:
    """bench.md, bench.json and the plots in ``directory`` (created if needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    results = Results(directory / "bench.md", directory / "bench.json", [])
    results.markdown.write_text(to_markdown(report), encoding="utf-8")
    results.json.write_text(to_json(report), encoding="utf-8")
    titles = {scenario.key: scenario.title for scenario in SCENARIOS}
    results.plots.extend(plot(report, directory, titles))
    return results
