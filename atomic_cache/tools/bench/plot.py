"""The bench report as a PNG: one panel per kind of figure, stacked at full width.

The only module of the bench that uses matplotlib, and it imports it inside its
functions, so that the bench, the CLI and the test suite load it only when a picture is
drawn. It builds a :class:`~matplotlib.figure.Figure` without pyplot: no global state, no
backend to choose (``savefig`` renders a PNG with Agg).

Every label is drawn whole (wrapped, never cut), each panel is as tall as its bars, and a
zero is drawn as a mark with a "0" beside it, never as a missing bar: the headline of the
races panel is precisely a zero.
"""

from __future__ import annotations

import itertools
import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .cluster import HIT_SCENARIO
from .fanout import FANOUT_PREFIX
from .index_churn import CHURN_SCENARIO
from .kit import BenchReport, BenchRow
from .refusals import REFUSAL_SCENARIO
from .writes import RACE_SCENARIO, TOKEN_RACE_SHAPE

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

WIDTH_IN = 14.0
DPI = 110
ROW_IN = 0.3  # one bar: room for a label wrapped onto two lines
FANOUT_IN = 3.5
# Around a panel's axes: its title and x tick labels, and an x label where it has one.
DECOR_IN, XLABEL_IN = 0.6, 0.25
LABEL_CHARS = 62  # labels wrap past this many characters
P50_COLOR, P99_COLOR = "#2e75b6", "#f4b183"


@dataclass(frozen=True, slots=True)
class Panel:
    """One panel of the figure: how tall its axes are (the layout keeps these heights in
    proportion, so a bar is as thick in every panel), what surrounds them, and what draws
    into them."""

    axes_in: float
    draw: Callable[[Axes], None]
    decor_in: float = DECOR_IN


def wrapped(text: str) -> str:
    """``text`` on as many lines as it needs: a label is never cut."""
    return textwrap.fill(text, LABEL_CHARS, break_long_words=False, break_on_hyphens=False)


# -- client-side latency ------------------------------------------------------------------


def _draw_latency(ax: Axes, report: BenchReport, rows: Sequence[BenchRow]) -> None:
    """p50 over p99 per variant, grouped under a bold heading per scenario, on a log axis;
    ``xN`` is the p50 relative to the scenario's baseline."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    labels: list[str] = []
    heads: list[int] = []
    timed: list[tuple[int, BenchRow]] = []
    for scenario, group in itertools.groupby(rows, key=lambda row: row.scenario):
        heads.append(len(labels))
        labels.append(wrapped(scenario))
        for row in group:
            timed.append((len(labels), row))
            labels.append(wrapped(row.variant + (" (baseline)" if row.baseline else "")))
    positions = [position for position, _ in timed]
    ax.barh(positions, [row.p99_us or 0 for _, row in timed], color=P99_COLOR, label="p99")
    ax.barh(positions, [row.p50_us or 0 for _, row in timed], color=P50_COLOR, label="p50")
    for position, row in timed:
        ratio = report.ratio(row)
        if ratio is not None and not row.baseline:
            ax.annotate(
                f"x{ratio:.2f} p50",
                (row.p99_us or row.p50_us or 1, position),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    for head in heads:
        ax.get_yticklabels()[head].set_fontweight("bold")
        if head:
            ax.axhline(head - 0.5, color="#d9d9d9", linewidth=0.8)
    ax.set_ylim(len(labels) - 0.5, -0.5)  # top to bottom, no empty band
    ax.set_xscale("log")
    # 1-2-5 ticks overlap past three decades (a timed-out read of g. is 250,000 µs).
    shown = [value for _, row in timed for value in (row.p50_us, row.p99_us) if value]
    decades = math.log10(max(shown) / min(shown))
    ax.xaxis.set_major_locator(
        LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades <= 3 else (1.0,))
    )
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    # Room on the right for the "xN p50" beside the longest bar (a log axis: a factor).
    ax.set_xlim(right=max(shown) * 3)
    ax.set_xlabel("latency per call, µs (log); xN = p50 relative to the scenario's baseline")
    ax.set_title("Client-side latency")
    ax.legend(loc="upper right")


# -- invalidation fan-out -----------------------------------------------------------------


def _longest_command_us(row: BenchRow) -> float | None:
    found = [
        float(row.extra[key])
        for key in ("longest_call_us", "longest_cleanup_us")
        if key in row.extra
    ]
    return max(found) if found else None


def _draw_fanout(ax: Axes, rows: Sequence[BenchRow]) -> None:
    """Call wall time, longest server command and time until reclaimed per scope (new
    design), and the one-script design's call, against the users invalidated."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    colors = {"DOMAIN": "#2e75b6", "PUBLIC": "#c55a11"}
    series: list[tuple[str, str, str, Callable[[BenchRow], float | None]]] = [
        ("new", "o-", "call", lambda row: row.p50_us),
        ("new", "s--", "longest command", _longest_command_us),
        ("new", "^:", "reclaimed", lambda row: float(row.extra["reclaimed_ms"]) * 1000),
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
    # Left of the y axis, off the lines: the room the other panels' labels take anyway.
    ax.legend(fontsize=7, loc="upper right", bbox_to_anchor=(-0.07, 1.0))
    ax.set_xlabel("users invalidated (x names each)")
    ax.set_ylabel("ms (log)")
    ax.set_title("Invalidation fan-out (d.): the call, the longest server command, reclaimed")


# -- bars of one extra figure -------------------------------------------------------------


def _bar_value(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _draw_bars(
    ax: Axes, labels: Sequence[str], values: Sequence[float], color: str, title: str
) -> None:
    """One bar per label, its value beside it. A zero gets a mark at the axis and a bold
    "0": it is a result, not a missing bar."""
    positions = range(len(values))
    bars = ax.barh(positions, values, color=color, height=0.6)
    texts = ax.bar_label(bars, [_bar_value(value) for value in values], fontsize=7, padding=3)
    zeros = [position for position, value in zip(positions, values, strict=True) if value == 0]
    for position in zeros:
        texts[position].set(fontweight="bold", fontsize=9, color=color)
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
    ax.set_xlim(0, 1.12 * max(values) if max(values) > 0 else 1)
    ax.set_yticks(positions, [wrapped(label) for label in labels], fontsize=7)
    ax.set_ylim(len(values) - 0.5, -0.5)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelsize=8)


def _spread(values: Sequence[float]) -> str:
    low, high = min(values), max(values)
    return _bar_value(low) if low == high else f"{_bar_value(low)}-{_bar_value(high)}"


def races_title(rows: Sequence[BenchRow]) -> str:
    """The headline of c.'s races: how many stale entries with a fill token, and without."""
    token = [float(row.extra["stale_entries"]) for row in rows if _is_token(row)]
    other = [float(row.extra["stale_entries"]) for row in rows if not _is_token(row)]
    found = [f"{_spread(token)} with a fill token"] if token else []
    found += [f"{_spread(other)} without"] if other else []
    return f"Stale entries left, {rows[0].samples:,} races per bar (c.): " + ", ".join(found)


def _is_token(row: BenchRow) -> bool:
    return row.variant.startswith(TOKEN_RACE_SHAPE)


def refusals_title(rows: Sequence[BenchRow]) -> str:
    """The headline of h.: each design's share of fills refused."""
    shares = ", ".join(
        f"{row.variant.split(':', 1)[0]} {_bar_value(float(row.extra['refused_pct']))} %"
        for row in rows
    )
    return f"Fills refused, % (h.: only other users and domains invalidated): {shares}"


def scenario_letters(rows: Sequence[BenchRow]) -> list[str]:
    """The scenarios' letters (``e.``, ``j.``), in the order the rows have them."""
    return list(dict.fromkeys(row.scenario.split(" ", 1)[0] for row in rows))


def memory_title(rows: Sequence[BenchRow]) -> str:
    return f"Memory: bytes per cached entry ({', '.join(scenario_letters(rows))})"


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


# -- the figure ---------------------------------------------------------------------------


def _bar_panel(
    rows: Sequence[BenchRow],
    key: str,
    color: str,
    title: Callable[[Sequence[BenchRow]], str],
    value: Callable[[BenchRow], float | None] | None = None,
) -> list[Panel]:
    """A panel of bars, one per row that has a value: ``value(row)``, by default the
    row's extra figure ``key``. None without such rows. Rows of several scenarios are
    labelled with their scenario's letter."""
    figure = value or (lambda row: float(row.extra[key]) if key in row.extra else None)
    found = [(row, shown) for row in rows for shown in [figure(row)] if shown is not None]
    if not found:
        return []
    drawn = [row for row, _ in found]
    several = len(scenario_letters(drawn)) > 1
    labels = [
        f"{row.scenario.split(' ', 1)[0]} {row.variant}" if several else row.variant
        for row in drawn
    ]

    def draw(ax: Axes) -> None:
        _draw_bars(ax, labels, [shown for _, shown in found], color, title(drawn))

    return [Panel(ROW_IN * len(found), draw)]


def panels(report: BenchReport) -> list[Panel]:
    """The figure's panels, top to bottom; a kind of figure the report lacks has none."""
    found: list[Panel] = []
    latency = [row for row in report.rows if row.p50_us is not None and row.samples > 1]
    if latency:
        heads = sum(1 for _ in itertools.groupby(latency, key=lambda row: row.scenario))

        def draw_latency(ax: Axes) -> None:
            _draw_latency(ax, report, latency)

        found.append(Panel(ROW_IN * (len(latency) + heads), draw_latency, DECOR_IN + XLABEL_IN))
    fanout = [row for row in report.rows if row.scenario.startswith(FANOUT_PREFIX)]
    if fanout:
        found.append(Panel(FANOUT_IN, lambda ax: _draw_fanout(ax, fanout), DECOR_IN + XLABEL_IN))

    def of(scenario: str) -> list[BenchRow]:
        return [row for row in report.rows if row.scenario == scenario]

    found += _bar_panel(of(RACE_SCENARIO), "stale_entries", "#c00000", races_title)
    found += _bar_panel(of(REFUSAL_SCENARIO), "refused_pct", "#7030a0", refusals_title)
    hits = [
        row
        for row in report.rows
        if row.scenario.startswith(HIT_SCENARIO) and not row.scenario.endswith(", 1 task")
    ]
    found += _bar_panel(hits, "ops_per_s", "#2e75b6", hits_title, lambda row: row.ops_per_s)
    found += _bar_panel(report.rows, "bytes_per_entry", "#548235", memory_title)
    found += _bar_panel(of(CHURN_SCENARIO), "index_bytes", "#bf9000", churn_title)
    return found


def figure_of(report: BenchReport) -> Figure:
    """The report's figure: its panels stacked at full width, each as tall as it needs."""
    from matplotlib.figure import Figure

    drawn = panels(report)
    if not drawn:

        def nothing(ax: Axes) -> None:
            ax.text(0.5, 0.5, "no rows to draw", ha="center", va="center")
            ax.set_axis_off()

        drawn = [Panel(1.0, nothing)]
    heights = [panel.axes_in for panel in drawn]
    around = sum(panel.decor_in for panel in drawn) + 0.3  # the figure's title
    figure = Figure(figsize=(WIDTH_IN, sum(heights) + around), dpi=DPI, layout="constrained")
    grid = figure.add_gridspec(len(drawn), 1, height_ratios=heights)
    for index, panel in enumerate(drawn):
        panel.draw(figure.add_subplot(grid[index, 0]))
    figure.suptitle(
        f"atomic_cache bench ({report.meta.get('sizes', {}).get('name', '?')}):"
        f" {report.meta.get('server')}, {report.meta.get('machine')}",
        fontsize=10,
    )
    return figure


def plot(report: BenchReport, path: Path) -> None:
    """A PNG summary of the report: latencies, fan-out, races, refusals, hits per second
    of the cluster scenario, memory, churn."""
    figure_of(report).savefig(path, dpi=DPI)
