"""The bench outside a run: its PNG (drawn from a report made here, so every figure is
known), what importing it loads, and ``make bench QUICK=1``. The runs themselves, on real
servers, are tested in test_cli.py."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.text import Annotation

from atomic_cache.tools.bench import BenchReport, BenchRow, cluster, plot
from atomic_cache.tools.bench.fanout import FANOUT_PREFIX
from atomic_cache.tools.bench.index_churn import CHURN_SCENARIO
from atomic_cache.tools.bench.plot import figure_of
from atomic_cache.tools.bench.refusals import REFUSAL_SCENARIO
from atomic_cache.tools.bench.writes import RACE_SCENARIO, RACE_SHAPES, TOKEN_RACE_SHAPE

from .test_package_shape import PACKAGE, imports_of, modules_after

ROOT = Path(__file__).resolve().parent.parent

# A label longer than any line of a panel's margin: drawn whole, it must wrap.
LONG_VARIANT = (
    "new: the fill token is checked against the stamps that cover the entry, and only"
    " against those, so that an invalidation of another scope never refuses it"
)


def race_rows() -> list[BenchRow]:
    """c.'s races: no stale entry with a fill token, 11 and 14 without."""
    return [
        BenchRow(
            RACE_SCENARIO,
            f"{shape}; {at_a_time}",
            samples=20,
            extra={"stale_entries": 0 if shape == TOKEN_RACE_SHAPE else stale},
        )
        for at_a_time, stale in (("one at a time", 11), ("10 at a time", 14))
        for shape in RACE_SHAPES
    ]


def fanout_rows() -> list[BenchRow]:
    return [
        BenchRow(
            f"{FANOUT_PREFIX}{scope} invalidation, {users:,} users x 5 names",
            design,
            p50_us=users * (10.0 if design == "legacy" else 1.0),
            samples=1,
            extra={
                "users": users,
                "scope": scope,
                "design": design,
                "reclaimed_ms": users / 100,
                "longest_call_us": users / 2,
            },
        )
        for users in (50, 200)
        for scope in ("DOMAIN", "PUBLIC")
        for design in ("legacy", "new")
    ]


def full_report() -> BenchReport:
    """A report with a row of every kind the plot draws, zeros among them."""
    latency = [
        BenchRow("a. cached read, 1 task", "raw GET of the entry key (glide)", 90.0, 200.0,
                 samples=40, baseline=True),
        BenchRow("a. cached read, 1 task", "get_merged_config (get.lua + JSON decode)", 140.0,
                 260.0, samples=40),
        BenchRow("g. app_config, Valkey dead or paused, 1 task", "no cache (SQL merged view)",
                 9000.0, 20000.0, samples=40, baseline=True),
        BenchRow("g. app_config, Valkey dead or paused, 1 task", "cache, Valkey paused (breaker)",
                 3000.0, 260000.0, samples=40),
        BenchRow(REFUSAL_SCENARIO, "legacy: one global epoch is the fill token", 5000.0, 9000.0,
                 samples=40, baseline=True, extra={"refused_pct": 100.0}),
        BenchRow(REFUSAL_SCENARIO, LONG_VARIANT, 6000.0, 11000.0, samples=40,
                 extra={"refused_pct": 0.0}),
    ]  # fmt: skip
    memory = [
        BenchRow("e. memory per cached entry", "entry key, MEMORY USAGE", samples=250,
                 extra={"bytes_per_entry": 1721}),
        BenchRow("e. memory per cached entry", "index sorted sets, MEMORY USAGE", samples=250,
                 extra={"bytes_per_entry": 65}),
    ]  # fmt: skip
    churn = [
        BenchRow(CHURN_SCENARIO, "index at the peak: 100 users x 5 names", samples=500,
                 extra={"index_bytes": 31_000}),
        BenchRow(CHURN_SCENARIO, "index after churn: 5 other users' traffic", samples=30,
                 extra={"index_bytes": 0, "pct_of_peak": 0.0}),
    ]  # fmt: skip
    rows = [*latency, *fanout_rows(), *race_rows(), *memory, *churn]
    meta = {"sizes": {"name": "tiny"}, "server": "valkey 9", "machine": "2 CPUs"}
    return BenchReport(meta=meta, rows=rows)


@pytest.fixture(scope="module")
def drawn() -> Figure:
    """The full report's figure, laid out as when saved (extents are then final)."""
    figure = figure_of(full_report())
    figure.draw_without_rendering()
    return figure


def panel(figure: Figure, title: str) -> Axes:
    (found,) = [ax for ax in figure.axes if ax.get_title().startswith(title)]
    return found


def labels_of(ax: Axes) -> list[str]:
    """The y tick labels as written, the lines of a wrapped one joined again."""
    return [label.get_text().replace("\n", " ") for label in ax.get_yticklabels()]


def test_the_plot_has_one_panel_per_kind_of_figure(drawn: Figure) -> None:
    figure = drawn
    titles = [ax.get_title() for ax in figure.axes]
    assert [title.split(" ")[0] for title in titles] == [
        "Client-side", "Invalidation", "Stale", "Fills", "Memory:", "Index",
    ]  # fmt: skip


def test_every_label_is_whole_and_inside_the_figure(drawn: Figure) -> None:
    figure = drawn
    latency = panel(figure, "Client-side latency")
    assert labels_of(latency) == [
        "a. cached read, 1 task",
        "raw GET of the entry key (glide) (baseline)",
        "get_merged_config (get.lua + JSON decode)",
        "g. app_config, Valkey dead or paused, 1 task",
        "no cache (SQL merged view) (baseline)",
        "cache, Valkey paused (breaker)",
        f"{REFUSAL_SCENARIO}",
        "legacy: one global epoch is the fill token (baseline)",
        f"{LONG_VARIANT}",
    ]
    races = panel(figure, "Stale entries")
    assert labels_of(races) == [row.variant for row in race_rows()]
    refusals = panel(figure, "Fills refused")
    assert labels_of(refusals) == ["legacy: one global epoch is the fill token", LONG_VARIANT]

    width, height = figure.bbox.width, figure.bbox.height
    for ax in figure.axes:
        # All that is drawn of a panel (labels, title, values, legend) is in the picture.
        box = ax.get_tightbbox()
        assert box is not None
        assert box.x0 >= 0 and box.x1 <= width and box.y0 >= 0 and box.y1 <= height, box
        # Wrapped labels fit their rows: no two overlap.
        boxes = sorted(
            (label.get_window_extent() for label in ax.get_yticklabels()),
            key=lambda box: box.y0,
        )
        for lower, upper in itertools.pairwise(boxes):
            assert upper.y0 >= lower.y1 - 1, (ax.get_title(), lower, upper)
        # The labels leave the bars most of the width.
        assert ax.get_window_extent().width >= 0.6 * width, ax.get_title()


def test_a_zero_is_drawn_and_the_headline_says_it(drawn: Figure) -> None:
    figure = drawn
    races = panel(figure, "Stale entries")
    assert races.get_title() == (
        "Stale entries left, 20 races per bar (c.): 0 with a fill token, 11-14 without"
    )
    zero_rows = [i for i, row in enumerate(race_rows()) if row.extra["stale_entries"] == 0]
    assert zero_rows == [2, 5]
    for ax, zeros in (
        (races, zero_rows),
        (panel(figure, "Fills refused"), [1]),
        (panel(figure, "Index bytes"), [1]),
    ):
        # A bold "0" beside each zero bar...
        labels = [text for text in ax.texts if isinstance(text, Annotation)]
        shown = [
            (text.xy[0], round(text.xy[1]), text.get_fontweight())
            for text in labels
            if text.get_text() == "0"
        ]
        assert shown == [(0, row, "bold") for row in zeros], ax.get_title()
        # ...and a mark at the axis where the bar would start.
        marks = [
            line for line in ax.lines if np.asarray(line.get_xdata()).tolist() == [0] * len(zeros)
        ]
        assert [np.asarray(mark.get_ydata()).tolist() for mark in marks] == [zeros]
        assert marks[0].get_marker() == "|" and not marks[0].get_clip_on()
    assert panel(figure, "Fills refused").get_title().endswith(": legacy 100 %, new 0 %")
    assert panel(figure, "Index bytes").get_title().endswith("after churn, 0.0 % of the peak")


def test_panels_follow_each_other_and_bars_keep_one_size(drawn: Figure) -> None:
    figure = drawn
    dpi = figure.dpi
    found = [ax.get_tightbbox() for ax in figure.axes]
    boxes = sorted((box for box in found if box is not None), key=lambda box: -box.y1)
    assert len(boxes) == len(found) == 6
    for above, below in itertools.pairwise(boxes):
        assert above.y0 - below.y1 < 0.35 * dpi  # no empty band between two panels
    for title, bars in (("Client-side", 9), ("Stale", 6), ("Fills", 2), ("Memory", 2)):
        inches_per_bar = panel(figure, title).get_window_extent().height / dpi / bars
        assert 0.2 <= inches_per_bar <= 0.45, title


@pytest.mark.parametrize(
    ("kept", "titles"),
    [
        ("e. ", ["Memory: bytes per cached entry (e.)"]),
        (
            FANOUT_PREFIX,
            ["Invalidation fan-out (d.): the call, the longest server command, reclaimed"],
        ),
        ("nothing", [""]),
    ],
)
def test_a_report_of_one_scenario_or_none_gets_its_panel_only(
    kept: str, titles: list[str], tmp_path: Path
) -> None:
    report = full_report()
    report.rows = [row for row in report.rows if row.scenario.startswith(kept)]
    path = tmp_path / "bench.png"
    plot(report, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [ax.get_title() for ax in figure_of(report).axes] == titles


def cluster_rows() -> list[BenchRow]:
    """j.'s hits at 1 and 50 tasks and its memory rows."""
    reads = (cluster.STANDALONE, cluster.ON_PRIMARY, cluster.ON_REPLICA)
    hits = [
        BenchRow(f"{cluster.HIT_SCENARIO}, {tasks}", variant, 300.0 * (index + 1),
                 900.0, ops_per_s=rate * (index + 1), samples=40, baseline=index == 0)
        for tasks, rate in (("1 task", 3_000.0), ("50 tasks", 10_000.0))
        for index, variant in enumerate(reads)
    ]  # fmt: skip
    memory = [
        BenchRow(cluster.memory_scenario(50), variant, samples=250,
                 extra={"bytes_per_entry": 1_870 + index, "entries_per_gib": 574_000})
        for index, variant in enumerate(
            (cluster.MEMORY_STANDALONE, cluster.MEMORY_PRIMARY, cluster.MEMORY_REPLICA)
        )
    ]  # fmt: skip
    return [*hits, *memory]


def test_the_cluster_rows_get_a_hits_panel_and_share_the_memory_panel() -> None:
    """j.'s reads/s under load get a panel of their own, which says why replicas add
    nothing here; its memory bars join e.'s, each labelled with its scenario."""
    report = full_report()
    report.rows += cluster_rows()
    figure = figure_of(report)
    figure.draw_without_rendering()
    hits = panel(figure, "Hits per second")
    assert hits.get_title() == (
        "Hits per second, 50 tasks (j.): the client and every server share this one"
        " machine, so a replica adds no CPU"
    )
    assert labels_of(hits) == [cluster.STANDALONE, cluster.ON_PRIMARY, cluster.ON_REPLICA]
    assert [bar.get_width() for bar in hits.patches if isinstance(bar, Rectangle)] == [
        10_000.0,
        20_000.0,
        30_000.0,
    ]
    memory = panel(figure, "Memory")
    assert memory.get_title() == "Memory: bytes per cached entry (e., j.)"
    assert labels_of(memory) == [
        "e. entry key, MEMORY USAGE",
        "e. index sorted sets, MEMORY USAGE",
        f"j. {cluster.MEMORY_STANDALONE}",
        f"j. {cluster.MEMORY_PRIMARY}",
        f"j. {cluster.MEMORY_REPLICA}",
    ]
    assert [bar.get_width() for bar in memory.patches if isinstance(bar, Rectangle)] == [
        1721,
        65,
        1870,
        1871,
        1872,
    ]
    reads = (f"{cluster.STANDALONE} (baseline)", cluster.ON_PRIMARY, cluster.ON_REPLICA)
    assert labels_of(panel(figure, "Client-side latency"))[-8:] == [
        f"{cluster.HIT_SCENARIO}, 1 task",
        *reads,
        f"{cluster.HIT_SCENARIO}, 50 tasks",
        *reads,
    ]


SCENARIO_MODULES = (
    "reads", "sql", "writes", "fanout", "memory", "server_cost", "outage", "refusals",
    "index_churn", "cluster", "local", "ranked",
)  # fmt: skip
# What a scenario may import of the bench, and what those import in turn.
KIT_MODULES = {"kit": {"legacy", "sizes"}, "server": set(), "legacy": {"server"},
               "data": {"kit"}, "sizes": set()}  # fmt: skip


def bench_imports(name: str) -> set[str]:
    """The modules of the bench package that ``bench/<name>.py`` imports."""
    prefix = "atomic_cache.tools.bench."
    return {
        found.removeprefix(prefix).split(".")[0]
        for found in imports_of(PACKAGE / "tools" / "bench" / f"{name}.py")
        if found.startswith(prefix)
    }


def test_imports_in_the_bench_point_one_way() -> None:
    """Scenarios use the kit and never each other; the kit knows no scenario."""
    kit = set(KIT_MODULES)
    for name in SCENARIO_MODULES:
        assert bench_imports(name) <= kit, name
    for name, allowed in KIT_MODULES.items():
        assert bench_imports(name) <= allowed, name


def test_importing_the_bench_loads_no_matplotlib() -> None:
    loaded = modules_after("import atomic_cache.tools.bench, atomic_cache.tools.cli")
    assert "atomic_cache" in loaded and "matplotlib" not in loaded


@pytest.mark.parametrize(
    ("arguments", "command"),
    [
        ([], "atomic-cache bench"),
        (["QUICK=1"], "atomic-cache bench --quick"),
        (["QUICK=0"], "atomic-cache bench"),
    ],
)
def test_make_bench_runs_the_quick_bench_when_asked(arguments: list[str], command: str) -> None:
    out = subprocess.run(
        ["make", "--dry-run", "bench", *arguments],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (line,) = [line for line in out.splitlines() if "atomic-cache bench" in line]
    assert line.endswith(command)
