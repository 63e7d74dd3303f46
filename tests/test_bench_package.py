"""The bench outside a run: its PNG (drawn from a report made here, so every figure is
known), what importing it loads, and ``make bench QUICK=1``. The runs themselves, on real
servers, are tested in test_cli.py."""

from __future__ import annotations

import itertools
import re
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
from atomic_cache.tools.bench.plot import figure_of, png_size, ratio_text, scenario_letters
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


def figures(report: BenchReport) -> dict[str, Figure]:
    """Each scenario's figure, laid out as when saved (extents are then final)."""
    drawn = {}
    for letter in scenario_letters(report):
        figure = figure_of(report, letter, f"title of {letter}")
        assert figure is not None, letter
        figure.draw_without_rendering()
        drawn[letter] = figure
    return drawn


@pytest.fixture(scope="module")
def drawn() -> dict[str, Figure]:
    return figures(full_report())


def panel(figure: Figure, title: str) -> Axes:
    (found,) = [ax for ax in figure.axes if ax.get_title().replace("\n", " ").startswith(title)]
    return found


def titles_of(figure: Figure) -> list[str]:
    return [ax.get_title().replace("\n", " ") for ax in figure.axes]


def labels_of(ax: Axes) -> list[str]:
    """The y tick labels as written, the lines of a wrapped one joined again."""
    return [label.get_text().replace("\n", " ") for label in ax.get_yticklabels()]


def test_one_figure_per_scenario_and_a_panel_per_question(drawn: dict[str, Figure]) -> None:
    assert {letter: titles_of(figure) for letter, figure in drawn.items()} == {
        "a": ["a. cached read, 1 task"],
        "g": ["g. app_config, Valkey dead or paused, 1 task"],
        "h": [
            "Fills refused, % (h.: only other users and domains invalidated): legacy 100 %,"
            " new 0 %",
            REFUSAL_SCENARIO,
        ],
        "d": ["The call, the longest server command, and the time until reclaimed"],
        "c": ["Stale entries left, 20 races per bar (c.): 0 with a fill token, 11-14 without"],
        "e": ["e. memory per cached entry"],
        "i": ["Index bytes at the peak and after churn (i.): after churn, 0.0 % of the peak"],
    }
    for letter, figure in drawn.items():
        suptitle = figure.get_suptitle().splitlines()
        assert suptitle == [
            f"{letter}. title of {letter}",
            "atomic_cache bench (tiny): valkey 9, 2 CPUs",
        ]


def test_every_picture_fits_a_screen(tmp_path: Path) -> None:
    report = full_report()
    # More than a figure holds at full thickness: k's five panels, and one of 30 bars.
    report.rows += [
        BenchRow(f"k. comparison {panel}", f"variant {i} of comparison {panel}", 10.0 + i,
                 30.0 + i, samples=40, baseline=i == 0)
        for panel, bars in enumerate((4, 4, 11, 1, 6, 30))
        for i in range(bars)
    ]  # fmt: skip
    written = plot(report, tmp_path)
    letters = ["a", "g", "h", "d", "c", "e", "i", "k"]
    assert [path.name for path in written] == [
        *(f"bench-{letter}.png" for letter in letters),
        "bench-plots.md",
    ]
    for path in written[:-1]:
        width, height = png_size(path)
        assert width <= 1600 and height <= 1000, (path.name, width, height)
    assert 900 < png_size(tmp_path / "bench-k.png")[1] <= 1000  # shrunk to fit, not cut
    big = figure_of(report, "k")
    assert big is not None
    big.draw_without_rendering()
    for ax in big.axes:  # the bars shrank, not below their least thickness
        inches = ax.get_window_extent().height / big.dpi / len(ax.get_yticklabels())
        assert 0.15 <= inches < 0.25, (ax.get_title(), inches)


def test_the_index_shows_every_picture_in_order(tmp_path: Path) -> None:
    written = plot(full_report(), tmp_path, {"a": "reads", "c": "writes and races"})
    index = (tmp_path / "bench-plots.md").read_text()
    assert written[-1] == tmp_path / "bench-plots.md"
    assert index.splitlines()[:3] == [
        "# atomic_cache bench: one picture per scenario",
        "",
        "The figures themselves are in bench.md and bench.json.",
    ]
    assert "## a. reads\n\n![a. reads](bench-a.png)" in index
    assert "## c. writes and races\n\n![c. writes and races](bench-c.png)" in index
    shown = re.findall(r"!\[[^]]*\]\((bench-\w\.png)\)", index)
    assert shown == [path.name for path in written[:-1]]


def test_every_label_is_whole_and_inside_the_figure(drawn: dict[str, Figure]) -> None:
    assert labels_of(panel(drawn["a"], "a. cached read")) == [
        "raw GET of the entry key (glide)",
        "get_merged_config (get.lua + JSON decode)",
    ]
    assert labels_of(panel(drawn["h"], REFUSAL_SCENARIO)) == [
        "legacy: one global epoch is the fill token",
        LONG_VARIANT,
    ]
    assert labels_of(panel(drawn["c"], "Stale entries")) == [row.variant for row in race_rows()]
    for letter, figure in drawn.items():
        width, height = figure.bbox.width, figure.bbox.height
        for ax in figure.axes:
            # All that is drawn of a panel (labels, title, values, legend) is in the picture.
            box = ax.get_tightbbox()
            assert box is not None
            assert box.x0 >= 0 and box.x1 <= width and box.y0 >= 0 and box.y1 <= height, (
                letter,
                box,
            )
            # Wrapped labels fit their rows: no two overlap.
            boxes = sorted(
                (label.get_window_extent() for label in ax.get_yticklabels()),
                key=lambda box: box.y0,
            )
            for lower, upper in itertools.pairwise(boxes):
                assert upper.y0 >= lower.y1 - 1, (ax.get_title(), lower, upper)
            # The labels leave the bars most of the column's width.
            columns = 1 if width <= 1100 else 2
            assert ax.get_window_extent().width >= 0.5 * width / columns, letter


def test_a_latency_panel_is_in_the_unit_and_scale_its_figures_need(
    drawn: dict[str, Figure],
) -> None:
    reads = panel(drawn["a"], "a. cached read")  # 90 to 260 µs: linear, in µs
    assert (reads.get_xscale(), reads.get_xlabel()) == (
        "linear",
        "per call, µs: p50 dark, p99 light",
    )
    outage = panel(drawn["g"], "g. app_config")  # 3 ms to 260 ms: log, in ms
    assert (outage.get_xscale(), outage.get_xlabel()) == (
        "log",
        "per call, ms (log scale): p50 dark, p99 light",
    )
    # Beside each bar its p50 in its own unit, and its ratio to the baseline.
    notes = [text.get_text() for text in outage.texts]
    assert notes == ["p50 9 ms (baseline)", "p50 3 ms, x0.33"]
    assert [ratio_text(ratio) for ratio in (2.345, 0.1, 0.099, 36.5 / 64_900)] == [
        "x2.35", "x0.10", "x1/10", "x1/1,778",
    ]  # fmt: skip
    # p50 bars over p99 bars, in the axis' unit.
    widths = [bar.get_width() for bar in outage.patches if isinstance(bar, Rectangle)]
    assert widths == [20.0, 260.0, 9.0, 3.0]


def test_a_zero_is_drawn_and_the_headline_says_it(drawn: dict[str, Figure]) -> None:
    races = panel(drawn["c"], "Stale entries")
    zero_rows = [i for i, row in enumerate(race_rows()) if row.extra["stale_entries"] == 0]
    assert zero_rows == [2, 5]
    for ax, zeros in (
        (races, zero_rows),
        (panel(drawn["h"], "Fills refused"), [1]),
        (panel(drawn["i"], "Index bytes"), [1]),
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


@pytest.mark.parametrize("counts", [(3, 3, 3, 3), (2, 7, 1, 4, 3)])
def test_bars_keep_one_size_across_the_panels_of_a_figure(counts: tuple[int, ...]) -> None:
    report = full_report()
    report.rows += [
        BenchRow(f"j. comparison {panel}", f"variant {i}", 10.0 + i, 30.0 + i, samples=40,
                 baseline=i == 0)
        for panel, bars in enumerate(counts)
        for i in range(bars)
    ]  # fmt: skip
    figure = figures(report)["j"]
    sizes = [
        ax.get_window_extent().height / figure.dpi / len(ax.get_yticklabels()) for ax in figure.axes
    ]
    assert all(0.2 <= size <= 0.45 for size in sizes), sizes
    assert max(sizes) / min(sizes) < 1.25, sizes


@pytest.mark.parametrize(
    ("kept", "names"),
    [("e. ", ["bench-e.png"]), (FANOUT_PREFIX, ["bench-d.png"]), ("nothing", [])],
)
def test_a_run_of_one_scenario_or_none_leaves_its_pictures_only(
    kept: str, names: list[str], tmp_path: Path
) -> None:
    """What an earlier run drew and this one does not is removed: the former bench.png,
    another scenario's picture; other files stay."""
    for stale in ("bench.png", "bench-b.png", "bench-e.png", "notes.png", "bench-old.png"):
        (tmp_path / stale).write_bytes(b"earlier")
    report = full_report()
    report.rows = [row for row in report.rows if row.scenario.startswith(kept)]
    written = plot(report, tmp_path)
    assert [path.name for path in written] == [*names, "bench-plots.md"]
    for path in written[:-1]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [*names, "bench-plots.md", "notes.png", "bench-old.png"]
    )


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


def test_the_cluster_figure_has_its_hits_per_second_and_its_memory() -> None:
    """j.'s reads/s under load get a panel of their own, which says why replicas add
    nothing here; its memory bars are its own (e.'s are in e.'s figure)."""
    report = full_report()
    report.rows += cluster_rows()
    figure = figures(report)["j"]
    hits = panel(figure, "Hits per second")
    assert hits.get_title().replace("\n", " ") == (
        "Hits per second, 50 tasks (j.): the client and every server share this one"
        " machine, so a replica adds no CPU"
    )
    assert labels_of(hits) == [cluster.STANDALONE, cluster.ON_PRIMARY, cluster.ON_REPLICA]
    assert [bar.get_width() for bar in hits.patches if isinstance(bar, Rectangle)] == [
        10_000.0,
        20_000.0,
        30_000.0,
    ]
    memory = panel(figure, cluster.memory_scenario(50))
    assert labels_of(memory) == [
        cluster.MEMORY_STANDALONE,
        cluster.MEMORY_PRIMARY,
        cluster.MEMORY_REPLICA,
    ]
    assert [bar.get_width() for bar in memory.patches if isinstance(bar, Rectangle)] == [
        1870,
        1871,
        1872,
    ]
    assert titles_of(figure) == [
        f"{cluster.HIT_SCENARIO}, 1 task",
        f"{cluster.HIT_SCENARIO}, 50 tasks",
        hits.get_title().replace("\n", " "),
        cluster.memory_scenario(50),
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
