"""The bench report as pictures: one PNG per scenario (``bench-a.png``, ``bench-b.png``,
...), each small enough for a screen to show whole (at most 1600 x 1000 pixels), and
``bench-plots.md``, which shows them one after the other.

A figure answers its scenario's questions, one panel each. A panel of latencies holds
the rows of one comparison (the variants of one scenario name, measured side by side):
a bar of p50 over a lighter one of p99 per variant, its p50 and its ratio to the
baseline beside it, on a linear axis unless the bars span more than ``LOG_SPAN`` (then
log), in µs, ms or s as the figures need. A panel of one extra figure (bytes per entry,
stale entries, fills refused, server µs per call, hits per second) holds one bar per row
that has it. Scenario d gets its fan-out chart instead.

The only module of the bench that uses matplotlib, and it imports it inside its
functions, so that the bench, the CLI and the test suite load it only when a picture is
drawn. It builds each :class:`~matplotlib.figure.Figure` without pyplot: no global
state, no backend to choose (``savefig`` renders a PNG with Agg).

Every label is drawn whole (wrapped, never cut), bars are as thick in every panel of a
figure, and a zero is drawn as a mark with a "0" beside it, never as a missing bar: the
headline of the races panel is precisely a zero.
"""

from __future__ import annotations

import itertools
import math
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .cluster import HIT_SCENARIO
from .fanout import FANOUT_PREFIX
from .index_churn import CHURN_SCENARIO
from .kit import BenchReport, BenchRow
from .writes import TOKEN_RACE_SHAPE

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.gridspec import SubplotSpec

DPI = 100
MAX_WIDTH_IN, MAX_HEIGHT_IN = 16.0, 10.0  # 1600 x 1000 pixels at DPI
ONE_COLUMN_IN = 11.0  # a figure of one panel
BAR_IN, MIN_BAR_IN = 0.3, 0.16  # one bar (shrunk to fit the height, never below the least)
LINE_IN = 0.14  # one line of a label
DECOR_IN = 0.7  # around a panel's bars: its title, the x ticks and the x label, the pads
TITLE_IN = 0.55  # the figure's title: the scenario, and the run
FANOUT_IN = 4.0
LABEL_CHARS = {1: 60, 2: 40}  # labels wrap past this many characters, by columns
LOG_SPAN = 30.0  # a latency panel whose values span more than this factor is drawn in log
P50_COLOR, P99_COLOR = "#2e75b6", "#f4b183"
FILE_NAME = "bench-{}.png"
INDEX_NAME = "bench-plots.md"
DRAWN_BEFORE = re.compile(r"bench(-[a-z])?\.png")  # the former bench.png, or a scenario's


@dataclass(frozen=True, slots=True)
class Panel:
    """One panel of a figure: how many bars it draws (or, for a chart, how tall it is)
    and what draws it, given its axes, the bars of the tallest panel beside it (so that
    a bar is as thick in every panel) and how wide a label may be."""

    bars: int
    draw: Callable[[Axes, int, int], None]
    height_in: float | None = None  # a chart's own height, instead of bars
    labels: tuple[str, ...] = ()  # the bars' labels: a long one, wrapped, needs room

    def axes_in(self, bar_in: float, chars: int) -> float:
        """How tall its axes are: its chart's height, or a slot per bar, each as tall as
        a bar or as the most lines a label wraps onto."""
        if self.height_in is not None:
            return self.height_in
        lines = max((len(wrapped(label, chars).splitlines()) for label in self.labels), default=1)
        return self.bars * max(bar_in, lines * LINE_IN)


def wrapped(text: str, chars: int) -> str:
    """``text`` on as many lines as it needs: a label is never cut."""
    return textwrap.fill(text, chars, break_long_words=False, break_on_hyphens=False)


def letter_of(row: BenchRow) -> str:
    """The scenario's letter: ``a`` for "a. cached read, 1 task"."""
    return row.scenario.split(".", 1)[0]


def _value(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def ratio_text(ratio: float) -> str:
    """A p50 over the baseline's: "x1.18", or for a small one "x1/1,778" (never "x0.00")."""
    return f"x{ratio:.2f}" if ratio >= 0.1 else f"x1/{1 / ratio:,.0f}"


def time_unit(us: float) -> tuple[str, float]:
    """The unit a time of ``us`` reads best in, and how many µs that unit holds."""
    if round(us) < 1_000:
        return "µs", 1.0
    if round(us) < 1_000_000:
        return "ms", 1_000.0
    return "s", 1_000_000.0


def duration(us: float) -> str:
    """A time in the unit it reads best in: "93.1 µs", "1.77 ms", "2.53 s"."""
    unit, per = time_unit(us)
    return f"{_value(us / per)} {unit}"


# -- latencies ------------------------------------------------------------------------


def _draw_latency(
    ax: Axes, report: BenchReport, rows: Sequence[BenchRow], slots: int, chars: int
) -> None:
    """p50 over p99 per variant, the p50 and its ratio to the baseline beside each."""
    from matplotlib.ticker import FuncFormatter, NullLocator

    p50 = [row.p50_us or 0.0 for row in rows]
    p99 = [max(row.p99_us or 0.0, low) for row, low in zip(rows, p50, strict=True)]
    shown = [value for value in (*p50, *p99) if value > 0]
    largest, smallest = max(shown), min(shown)
    log = largest / smallest > LOG_SPAN
    # A log axis reads best in the unit of its middle, a linear one in that of its end.
    unit, per = time_unit(math.sqrt(largest * smallest) if log else largest)
    positions = list(range(len(rows)))
    ax.barh(positions, [v / per for v in p99], color=P99_COLOR, height=0.7, label="p99")
    ax.barh(positions, [v / per for v in p50], color=P50_COLOR, height=0.7, label="p50")
    for position, row, median, high in zip(positions, rows, p50, p99, strict=True):
        ratio = report.ratio(row)
        note = f"p50 {duration(median)}"
        if row.baseline:
            note += " (baseline)"
        elif ratio is not None:
            note += f", {ratio_text(ratio)}"
        ax.annotate(
            note,
            (high / per, position),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(positions, [wrapped(row.variant, chars) for row in rows], fontsize=8)
    ax.set_ylim(slots - 0.5, -0.5)  # top to bottom; as many slots as the tallest beside it
    if log:
        ax.set_xscale("log")
        left = smallest / per / 2
        # Room on the right for the note beside the longest bar: a share of the decades.
        room = (largest / per / left) ** 0.45
        ax.set_xlim(left, largest / per * room)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,g}"))
        ax.xaxis.set_minor_locator(NullLocator())  # unlabelled anyway, and slow to lay out
    else:
        ax.set_xlim(0, largest / per * 1.5)
    scale = " (log scale)" if log else ""
    ax.set_xlabel(f"per call, {unit}{scale}: p50 dark, p99 light", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)


def _latency_panel(report: BenchReport, rows: Sequence[BenchRow], title: str) -> Panel:
    def draw(ax: Axes, slots: int, chars: int) -> None:
        _draw_latency(ax, report, rows, slots, chars)
        ax.set_title(wrapped(title, 2 * chars + 10), fontsize=10)

    return Panel(len(rows), draw, labels=tuple(row.variant for row in rows))


# -- bars of one extra figure ---------------------------------------------------------


def _draw_bars(
    ax: Axes,
    labels: Sequence[str],
    values: Sequence[float],
    color: str,
    slots: int,
    chars: int,
) -> None:
    """One bar per label, its value beside it. A zero gets a mark at the axis and a bold
    "0": it is a result, not a missing bar."""
    from matplotlib.ticker import FuncFormatter

    positions = range(len(values))
    bars = ax.barh(positions, values, color=color, height=0.7)
    texts = ax.bar_label(bars, [_value(value) for value in values], fontsize=8, padding=3)
    zeros = [position for position, value in zip(positions, values, strict=True) if value == 0]
    for position in zeros:
        texts[position].set(fontweight="bold", fontsize=10, color=color)
    if zeros:
        ax.plot(
            [0] * len(zeros),
            zeros,
            linestyle="none",
            marker="|",
            markersize=14,
            markeredgewidth=3,
            color=color,
            clip_on=False,
        )
    # Room for the value beside the longest bar.
    ax.set_xlim(0, 1.15 * max(values) if max(values) > 0 else 1)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,g}"))
    ax.set_yticks(positions, [wrapped(label, chars) for label in labels], fontsize=8)
    ax.set_ylim(slots - 0.5, -0.5)
    ax.tick_params(axis="x", labelsize=8)


def _spread(values: Sequence[float]) -> str:
    low, high = min(values), max(values)
    return _value(low) if low == high else f"{_value(low)}-{_value(high)}"


def _is_token(row: BenchRow) -> bool:
    return row.variant.startswith(TOKEN_RACE_SHAPE)


def races_title(rows: Sequence[BenchRow]) -> str:
    """The headline of c.'s races: how many stale entries with a fill token, and without."""
    token = [float(row.extra["stale_entries"]) for row in rows if _is_token(row)]
    other = [float(row.extra["stale_entries"]) for row in rows if not _is_token(row)]
    found = [f"{_spread(token)} with a fill token"] if token else []
    found += [f"{_spread(other)} without"] if other else []
    return f"Stale entries left, {rows[0].samples:,} races per bar (c.): " + ", ".join(found)


def refusals_title(rows: Sequence[BenchRow]) -> str:
    """The headline of h.: each design's share of fills refused."""
    shares = ", ".join(
        f"{row.variant.split(':', 1)[0]} {_value(float(row.extra['refused_pct']))} %"
        for row in rows
    )
    return f"Fills refused, % (h.: only other users and domains invalidated): {shares}"


def hits_title(rows: Sequence[BenchRow]) -> str:
    """The headline of j.'s hits per second under load, and why a replica adds nothing
    here."""
    tasks = rows[0].scenario.rsplit(", ", 1)[-1]
    return (
        f"Hits per second, {tasks} (j.): the client and every server share this one"
        " machine, so a replica adds no CPU"
    )


def churn_title(rows: Sequence[BenchRow]) -> str:
    after = [row.extra["pct_of_peak"] for row in rows if "pct_of_peak" in row.extra]
    shrunk = f": after churn, {after[0]} % of the peak" if after else ""
    return f"Index bytes at the peak and after churn (i.){shrunk}"


def _extra(*keys: str) -> Callable[[BenchRow], float | None]:
    """The row's first extra figure among ``keys``, if it has one."""

    def value(row: BenchRow) -> float | None:
        for key in keys:
            if key in row.extra:
                return float(row.extra[key])
        return None

    return value


@dataclass(frozen=True, slots=True)
class ExtraFigure:
    """A figure some rows carry beside (or instead of) their latencies, drawn as bars."""

    value: Callable[[BenchRow], float | None]
    axis: str  # the x axis' label
    color: str
    title: Callable[[str, Sequence[BenchRow]], str]  # (the rows' scenario, the rows)
    only: str | None = None  # drawn for this scenario name only


def _named(scenario: str, rows: Sequence[BenchRow]) -> str:
    return scenario


EXTRA_FIGURES = (
    ExtraFigure(
        _extra("stale_entries"), "stale entries left", "#c00000", lambda _, r: races_title(r)
    ),
    ExtraFigure(
        _extra("refused_pct"), "fills refused, %", "#7030a0", lambda _, r: refusals_title(r)
    ),
    ExtraFigure(_extra("bytes_per_entry"), "bytes per cached entry", "#548235", _named),
    ExtraFigure(
        _extra("index_bytes", "stamp_bytes"),
        "bytes",
        "#bf9000",
        lambda _, r: churn_title(r),
        only=CHURN_SCENARIO,  # e.'s index row has index_bytes too, beside bytes_per_entry
    ),
    ExtraFigure(
        _extra("server_us_per_call"),
        "server µs per call (INFO commandstats)",
        "#2e75b6",
        _named,
    ),
)
# Groups whose question is the server's time: their client-side latencies are not drawn.
SERVER_TIME = "server_us_per_call"


def _bar_panel(scenario: str, rows: Sequence[BenchRow], figure: ExtraFigure) -> Panel | None:
    if figure.only is not None and scenario != figure.only:
        return None
    found = [(row, shown) for row in rows for shown in [figure.value(row)] if shown is not None]
    if not found:
        return None
    drawn = [row for row, _ in found]
    title = figure.title(scenario, drawn)

    def draw(ax: Axes, slots: int, chars: int) -> None:
        labels = [row.variant for row in drawn]
        _draw_bars(ax, labels, [shown for _, shown in found], figure.color, slots, chars)
        ax.set_xlabel(figure.axis, fontsize=8)
        ax.set_title(wrapped(title, 2 * chars + 10), fontsize=10)

    return Panel(len(found), draw, labels=tuple(row.variant for row in drawn))


def _hits_panel(rows: Sequence[BenchRow]) -> Panel | None:
    """j.'s reads per second under load (not the one-task rows: those wait on their own
    round trips)."""
    if not rows[0].scenario.startswith(HIT_SCENARIO) or rows[0].scenario.endswith(", 1 task"):
        return None
    figure = ExtraFigure(
        lambda row: row.ops_per_s, "hits per second", "#2e75b6", lambda _, r: hits_title(r)
    )
    return _bar_panel(rows[0].scenario, rows, figure)


# -- invalidation fan-out -------------------------------------------------------------


def _longest_command_us(row: BenchRow) -> float | None:
    found = [
        float(row.extra[key])
        for key in ("longest_call_us", "longest_cleanup_us")
        if key in row.extra
    ]
    return max(found) if found else None


def _reclaimed_us(row: BenchRow) -> float | None:
    reclaimed_ms = _extra("reclaimed_ms")(row)
    return None if reclaimed_ms is None else reclaimed_ms * 1000


def _draw_fanout(ax: Axes, rows: Sequence[BenchRow]) -> None:
    """Call wall time, longest server command and time until reclaimed per scope (new
    design), and the one-script design's call, against the users invalidated."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    colors = {"DOMAIN": "#2e75b6", "PUBLIC": "#c55a11", "USER": "#548235"}
    series: list[tuple[str, str, str, Callable[[BenchRow], float | None]]] = [
        ("new", "o-", "call", lambda row: row.p50_us),
        ("new", "s--", "longest command", _longest_command_us),
        ("new", "^:", "reclaimed", _reclaimed_us),
        ("legacy", "x-.", "one-script call", lambda row: row.p50_us),
    ]
    for scope, color in colors.items():
        for design, style, label, value_of in series:
            points = sorted(
                (float(row.extra["users"]), value / 1000)
                for row in rows
                if row.extra.get("scope") == scope and row.extra.get("design") == design
                for value in [value_of(row)]
                if value
            )
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, style, color=color, label=f"{scope}: {label}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    users = sorted({float(row.extra["users"]) for row in rows})
    ax.set_xticks(users, [f"{value:,.0f}" for value in users])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_xlabel("users invalidated (x names each)", fontsize=9)
    ax.set_ylabel("ms (log scale)", fontsize=9)
    ax.set_title("The call, the longest server command, and the time until reclaimed")


# -- one figure per scenario ----------------------------------------------------------


def panels(report: BenchReport, rows: Sequence[BenchRow]) -> list[Panel]:
    """The panels of one scenario's figure, in the order of its rows."""
    if rows and rows[0].scenario.startswith(FANOUT_PREFIX):
        return [Panel(0, lambda ax, _slots, _chars: _draw_fanout(ax, rows), FANOUT_IN)]
    found: list[Panel] = []
    for scenario, grouped in itertools.groupby(rows, key=lambda row: row.scenario):
        group = list(grouped)
        for figure in EXTRA_FIGURES:
            panel = _bar_panel(scenario, group, figure)
            if panel is not None:
                found.append(panel)
        timed = [row for row in group if row.p50_us is not None]
        if timed and not any(SERVER_TIME in row.extra for row in group):
            found.append(_latency_panel(report, timed, scenario))
            hits = _hits_panel(timed)
            if hits is not None:
                found.append(hits)
    return found


def _height_in(panel: Panel, bar_in: float, chars: int) -> float:
    return panel.axes_in(bar_in, chars) + DECOR_IN


def _layout(drawn: Sequence[Panel]) -> tuple[list[list[Panel]], float, int]:
    """The panels in columns (one, or two: each panel, in order, goes to the shorter),
    the bar's thickness and how wide a label may be: bars shrink (down to MIN_BAR_IN) so
    that the taller column fits MAX_HEIGHT_IN."""
    count = 1 if len(drawn) == 1 else 2
    chars = LABEL_CHARS[count]
    bar_in = BAR_IN

    def height(column: list[Panel], bar_in: float) -> float:
        return sum(_height_in(panel, bar_in, chars) for panel in column)

    for _ in range(3):  # place, then place again with the thickness that fits
        columns: list[list[Panel]] = [[] for _ in range(count)]
        for panel in drawn:
            min(columns, key=lambda column: height(column, bar_in)).append(panel)
        tallest = max(columns, key=lambda column: height(column, bar_in))
        if height(tallest, bar_in) + TITLE_IN <= MAX_HEIGHT_IN:
            break
        bars = sum(panel.bars for panel in tallest)
        room = MAX_HEIGHT_IN - TITLE_IN - height(tallest, 0.0)
        bar_in = max(MIN_BAR_IN, room / bars if bars else bar_in)
    return columns, bar_in, chars


def figure_of(report: BenchReport, letter: str, title: str | None = None) -> Figure | None:
    """The figure of one scenario (``letter``), None if the report has no row of it."""
    from matplotlib.figure import Figure

    rows = [row for row in report.rows if letter_of(row) == letter]
    drawn = panels(report, rows)
    if not drawn:
        return None
    columns, bar_in, chars = _layout(drawn)
    tallest = max(sum(_height_in(p, bar_in, chars) for p in column) for column in columns)
    width = ONE_COLUMN_IN if len(columns) == 1 else MAX_WIDTH_IN
    height = min(MAX_HEIGHT_IN, tallest + TITLE_IN)
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    spec = figure.add_gridspec(1, len(columns))
    cells: dict[int, SubplotSpec] = {}  # where each panel goes, by id
    for index, column in enumerate(columns):
        # The ratios are of the axes (the layout adds each one's title and labels): as
        # tall as their bars, so that a bar is as thick in every panel. A column shorter
        # than the tallest ends in empty room, not in taller bars.
        heights = [panel.axes_in(bar_in, chars) for panel in column]
        room = tallest - sum(_height_in(panel, bar_in, chars) for panel in column)
        ratios = [*heights, room] if room > 0 else heights
        grid = spec[0, index].subgridspec(len(ratios), 1, height_ratios=ratios)
        cells |= {id(panel): grid[place, 0] for place, panel in enumerate(column)}
    for panel in drawn:  # in their order: the figure's axes are too
        panel.draw(figure.add_subplot(cells[id(panel)]), panel.bars, chars)
    sizes = report.meta.get("sizes", {}).get("name", "?")
    run = f"atomic_cache bench ({sizes}): {report.meta.get('server')}, {report.meta.get('machine')}"
    figure.suptitle(f"{letter}. {title}\n{run}" if title else f"{letter}.\n{run}", fontsize=11)
    return figure


def scenario_letters(report: BenchReport) -> list[str]:
    """The scenarios' letters, in the order of the rows."""
    return list(dict.fromkeys(letter_of(row) for row in report.rows))


def plot(
    report: BenchReport, directory: Path, titles: Mapping[str, str] | None = None
) -> list[Path]:
    """One PNG per scenario of the report (``bench-<letter>.png``), and ``bench-plots.md``
    showing them in order; ``titles`` names each scenario (by letter). A picture of an
    earlier run that this one does not draw again (a scenario not run, the former single
    ``bench.png``) is removed, so that what the directory shows is this run."""
    titles = titles or {}
    written: list[Path] = []
    for letter in scenario_letters(report):
        figure = figure_of(report, letter, titles.get(letter))
        if figure is None:
            continue
        path = directory / FILE_NAME.format(letter)
        figure.savefig(path, dpi=DPI, pil_kwargs={"compress_level": 1})  # 0.05 s less each
        written.append(path)
    for stale in directory.glob("bench*.png"):
        if DRAWN_BEFORE.fullmatch(stale.name) and stale not in written:
            stale.unlink()
    index = directory / INDEX_NAME
    lines = ["# atomic_cache bench: one picture per scenario", ""]
    lines.append("The figures themselves are in bench.md and bench.json.")
    for path in written:
        letter = path.stem.removeprefix("bench-")
        name = f"{letter}. {titles[letter]}" if letter in titles else f"{letter}."
        lines += ["", f"## {name}", "", f"![{name}]({path.name})"]
    index.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [*written, index]


def png_size(path: Path) -> tuple[int, int]:
    """A PNG's width and height in pixels, from its header."""
    header = path.read_bytes()[:24]
    if header[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG")
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
