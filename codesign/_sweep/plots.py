"""The sweep's plots: Pareto fronts, per-layer latency bars, and plan heatmaps, as SVG or PNG.

Each plot is drawn on its own `matplotlib.figure.Figure` with the Agg canvas (no pyplot, so no
global figure state) inside an `rc_context`, which fixes the style and the SVG id salt for that
call only: the same input gives byte-identical SVG. In a front plot every point is its own
artist whose SVG group carries a `<title>`, the tooltip a browser shows on hover.

Colours follow the hardware config (`target`) in the order the table first names it, so the
plots of one report agree; markers follow the compression mode.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize, to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from dopant.codesign._sweep.pareto import ALL, Row, directions, fronts, usable
from dopant.support.errors import InputError

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

FORMATS = ("svg", "png")
Step = Literal["pre", "post"]

# column -> (what it measures, its unit, the factor from the table's value to that unit)
MEASURES: dict[str, tuple[str, str, float]] = {
    "fps": ("throughput", "FPS", 1.0),
    "accuracy_integer": ("top-1 accuracy", "%", 100.0),
    "accuracy_float": ("float top-1 accuracy", "%", 100.0),
    "accuracy_finetuned": ("fine-tuned top-1 accuracy", "%", 100.0),
    "energy_uj": ("energy per inference", "µJ", 1.0),
    "area_mm2": ("area", "mm²", 1.0),
    "cycles": ("latency", "cycles", 1.0),
    "utilization": ("utilization", "%", 100.0),
}
# the columns a point's tooltip lists, after its label
TOOLTIP = ("fps", "accuracy_integer", "energy_uj", "area_mm2", "cycles")
# Okabe-Ito: told apart with colour-blindness too; black is kept for the overall front
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
STYLE: dict[RcKeyType, Any] = {
    "svg.fonttype": "none",  # text stays text: smaller files, searchable in the page
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial", "Helvetica"],
    "font.size": 8.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e4e4e4",
    "grid.linewidth": 0.6,
}


def axis_label(column: str) -> str:
    """The axis label of `column`: what it measures and its unit."""
    what, unit, _ = MEASURES.get(column, (column, "", 1.0))
    return f"{what} ({unit})" if unit else what


def scaled(column: str, value: float) -> float:
    """`value` of `column` in the unit its axis shows (accuracy as a percentage)."""
    return value * MEASURES.get(column, ("", "", 1.0))[2]


def format_value(column: str, value: Any) -> str:
    """A table cell or tooltip number, in the column's display unit ("" for None)."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) and scaled(column, 1.0) == 1.0:
        return f"{value:,}"
    number = scaled(column, float(value))
    if math.isnan(number):
        return ""
    magnitude = abs(number)
    digits = 0 if magnitude >= 1000 else 1 if magnitude >= 10 else 2 if magnitude >= 0.1 else 4
    return f"{number:,.{digits}f}"


def target_colours(rows: Sequence[Row]) -> dict[str, str]:
    """A colour per target, in the order the rows first name them: the colour-blind-safe
    `COLOURS` while they suffice, else matplotlib's 20 tab20 colours (distinct up to 20)."""
    targets = list(dict.fromkeys(str(row.get("target")) for row in rows))
    tab20 = matplotlib.colormaps["tab20"]
    palette = COLOURS if len(targets) <= len(COLOURS) else [to_hex(tab20(i)) for i in range(20)]
    return {target: palette[i % len(palette)] for i, target in enumerate(targets)}


def tooltip(row: Row) -> str:
    """A point's hover text: its label and target, then its measures with units."""
    lines = [str(row.get("label") or row.get("point")), f"{row.get('target')} · {row.get('point')}"]
    for column in TOOLTIP:
        if row.get(column) is not None:
            what, unit, _ = MEASURES[column]
            lines.append(f"{what}: {format_value(column, row[column])} {unit}")
    return "\n".join(lines)


def render(
    draw: Callable[[Figure], dict[str, str]], size: tuple[float, float], fmt: str, salt: str
) -> bytes:
    """Run `draw` on a new figure of `size` inches in the plots' style and save it as `fmt`.
    `draw` returns the tooltips (SVG group id -> text) to insert; `salt` makes the SVG's own
    ids unique to this plot, so several plots can sit in one HTML page."""
    if fmt not in FORMATS:
        raise InputError(
            f"fmt={fmt!r} is not an image format of the plots; choose one of {FORMATS}."
        )
    buffer = io.BytesIO()
    with matplotlib.rc_context({**STYLE, "svg.hashsalt": salt}):
        figure = Figure(figsize=size, layout="constrained")
        FigureCanvasAgg(figure)
        tips = draw(figure)
        metadata = {"Date": None} if fmt == "svg" else {"Software": None}
        figure.savefig(buffer, format=fmt, metadata=metadata, dpi=110)
    data = buffer.getvalue()
    return add_titles(data, tips) if fmt == "svg" else data


def add_titles(svg: bytes, tips: dict[str, str]) -> bytes:
    """`svg` with a `<title>` (a hover tooltip) first in each group whose id is in `tips`."""

    if not tips:
        return svg

    def insert(match: re.Match[str]) -> str:
        text = html.escape(tips[match.group(1)], quote=False)
        return f"{match.group(0)}<title>{text}</title>"

    pattern = re.compile(r'<g id="(' + "|".join(re.escape(gid) for gid in tips) + r')">')
    return pattern.sub(insert, svg.decode()).encode()


def front_plot(
    rows: Sequence[Row],
    x: str = "fps",
    y: str = "accuracy_integer",
    *,
    size: tuple[float, float] = (7.0, 4.2),
    fmt: str = "svg",
) -> bytes:
    """All ok points of `rows` on (`x`, `y`) coloured by target and marked by mode, the front
    of each target as a thin step line and the overall front as a thick black one; the image,
    `size` inches, as `fmt` ("svg" with a tooltip per point, or "png")."""
    lines = fronts(rows, x, y, "target")
    up_x = directions(x, y, None)[0]
    points = usable(rows, x, y)
    on_front = {id(row) for row in lines[ALL]}
    colours = target_colours(rows)
    modes = list(dict.fromkeys(str(row.get("mode")) for row in points))

    def draw(figure: Figure) -> dict[str, str]:
        ax = figure.add_subplot()
        tips: dict[str, str] = {}
        for row in points:
            gid = f"pt-{x}-{y}-{row.get('point')}"
            ax.plot(
                [scaled(x, row[x])],
                [scaled(y, row[y])],
                linestyle="none",
                marker=MARKERS[modes.index(str(row.get("mode"))) % len(MARKERS)],
                markersize=7 if id(row) in on_front else 5.5,
                color=colours[str(row.get("target"))],
                markeredgecolor="black" if id(row) in on_front else "white",
                markeredgewidth=0.8,
                zorder=3,
                gid=gid,
            )
            tips[gid] = tooltip(row)
        # the region a front dominates lies below-left of each point when x is maximized
        where: Step = "pre" if up_x else "post"
        for name, front in lines.items():
            if name != ALL and front:
                _step(ax, front, x, y, where, color=colours[name], linewidth=0.9, alpha=0.8)
        if lines[ALL]:
            _step(ax, lines[ALL], x, y, where, color="black", linewidth=1.8, zorder=2)
        _decorate(ax, points, x, y)
        _legend(ax, points, colours, modes)
        return tips

    return render(draw, size, fmt, salt=f"front-{x}-{y}")


def _step(ax: Axes, front: list[Row], x: str, y: str, where: Step, **style: Any) -> None:
    """Draw `front` (sorted by x) as a staircase."""
    xs = [scaled(x, row[x]) for row in front]
    ys = [scaled(y, row[y]) for row in front]
    ax.step(xs, ys, where=where, **style)


def _decorate(ax: Axes, points: list[Row], x: str, y: str) -> None:
    """Axis labels and scale, or a note when no point could be drawn."""
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(y))
    if not points:
        note = "no point has a value on both axes"
        ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes)
        return
    values = [row[x] for row in points]
    # a wide positive range (tiny to large arrays) reads better on a log axis
    if min(values) > 0 and max(values) / min(values) >= 30:
        ax.set_xscale("log")


def _legend(ax: Axes, points: list[Row], colours: dict[str, str], modes: list[str]) -> None:
    """One entry per target (its array and dataflow), per mode, and the overall front."""
    if not points:
        return
    shapes: dict[str, str] = {}
    for row in points:
        shapes.setdefault(
            str(row.get("target")), f"{row.get('rows')}×{row.get('cols')} {row.get('dataflow')}"
        )
    handles = [
        Line2D([], [], linestyle="none", marker="o", color=colour, label=f"{name} ({shapes[name]})")
        for name, colour in colours.items()
        if name in shapes
    ]
    handles += [
        Line2D([], [], linestyle="none", marker=MARKERS[i % len(MARKERS)], color="grey", label=mode)
        for i, mode in enumerate(modes)
    ]
    handles.append(Line2D([], [], color="black", linewidth=1.8, label="front, all configs"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def layer_bars(
    rows: Sequence[Row],
    details: dict[str, dict[str, Any]],
    points: Sequence[str],
    *,
    fmt: str = "svg",
) -> bytes:
    """Per-layer cycles of each chosen point (`details[point]["layers"]`) as horizontal bars,
    one panel per point (up to four a line), the layers named on the shared axis."""
    chosen = _chosen(rows, details, points)
    layers = _layers(details, points)
    colours = target_colours(rows)
    columns = max(1, min(4, len(points)))
    lines = max(1, math.ceil(len(points) / columns))

    def draw(figure: Figure) -> dict[str, str]:
        axes = figure.subplots(lines, columns, sharex=True, sharey=True, squeeze=False).ravel()
        for ax, point, row in zip(axes, points, chosen, strict=False):
            cycles = {layer["name"]: layer["cycles"] for layer in details[point].get("layers", [])}
            values = [cycles.get(name, 0) for name in layers]
            ax.barh(range(len(layers)), values, color=colours[str(row.get("target"))])
            ax.set_title(f"{_short(row)}\n{sum(values):,} cycles", fontsize=8)
            ax.set_yticks(range(len(layers)), layers)
            ax.set_xlabel("cycles")
        axes[0].invert_yaxis()  # the first layer on top; the other panels share the axis
        for ax in axes[len(points) :]:
            ax.set_visible(False)
        return {}

    size = (1.6 + 2.4 * columns, 0.9 + lines * (0.7 + 0.17 * len(layers)))
    return render(draw, size, fmt, salt="layer-bars")


def plan_heatmaps(
    rows: Sequence[Row],
    details: dict[str, dict[str, Any]],
    points: Sequence[str],
    *,
    fmt: str = "svg",
) -> bytes:
    """Two heatmaps of the chosen points (rows) by layer (columns): the fraction of channels
    kept (`details[point]["kept"]`: [kept, total]) and the weight bit width
    (`details[point]["bits"]`: "w4a8"), each cell printed; blank where a layer has no value."""
    chosen = _chosen(rows, details, points)
    planned = {n for p in points for key in ("kept", "bits") for n in details[p].get(key, {})}
    layers = [name for name in _layers(details, points) if name in planned]  # conv and linear
    if not layers:
        raise InputError("the chosen points have no plan (kept channels or widths) to draw.")
    kept = np.full((len(points), len(layers)), np.nan)
    bits = np.full((len(points), len(layers)), np.nan)
    for i, point in enumerate(points):
        for j, name in enumerate(layers):
            pair = details[point].get("kept", {}).get(name)
            if pair and pair[1]:
                kept[i, j] = pair[0] / pair[1]
            width = re.match(r"w(\d+)", str(details[point].get("bits", {}).get(name, "")))
            if width:
                bits[i, j] = int(width.group(1))
    labels = [_short(row) for row in chosen]
    top = float(np.nanmax(bits)) if np.isfinite(bits).any() else 8.0

    def draw(figure: Figure) -> dict[str, str]:
        upper, lower = figure.subplots(2, 1, sharex=True)
        _heatmap(
            upper, kept, labels, layers, Normalize(0.0, 1.0), "{:.2f}", "channels kept (fraction)"
        )
        upper.tick_params(labelbottom=False)  # the panels share the layers: named once, below
        _heatmap(
            lower, bits, labels, layers, Normalize(0.0, max(8.0, top)), "{:.0f}", "weight bits"
        )
        return {}

    longest = max((len(name) for name in layers), default=0)
    size = (2.6 + 0.5 * len(layers), 1.2 + 0.06 * longest + 0.7 * len(points))
    return render(draw, size, fmt, salt="plan-heatmaps")


def _heatmap(
    ax: Axes,
    values: np.ndarray,
    labels: list[str],
    layers: list[str],
    norm: Normalize,
    form: str,
    title: str,
) -> None:
    """One heatmap with its value printed in each cell, in black or white for contrast."""
    ax.grid(False)
    cmap = matplotlib.colormaps["viridis"]
    lines, columns = values.shape
    # cells as vector quads (an image would be embedded as a PNG and blur when zoomed)
    edges_x, edges_y = np.arange(columns + 1) - 0.5, np.arange(lines + 1) - 0.5
    ax.pcolormesh(edges_x, edges_y, np.ma.masked_invalid(values), cmap=cmap, norm=norm)
    ax.set_xlim(-0.5, columns - 0.5)
    ax.set_ylim(lines - 0.5, -0.5)  # the first point on top
    for (i, j), value in np.ndenumerate(values):
        if np.isnan(value):
            continue
        red, green, blue, _ = cmap(norm(value))
        ink = "black" if 0.3 * red + 0.6 * green + 0.1 * blue > 0.5 else "white"
        ax.text(j, i, form.format(value), ha="center", va="center", color=ink, fontsize=7)
    ax.set_title(title, fontsize=9, loc="left")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xticks(range(len(layers)), layers, rotation=60, ha="right")


def _chosen(
    rows: Sequence[Row], details: dict[str, dict[str, Any]], points: Sequence[str]
) -> list[Row]:
    """The rows of `points`, each with details; InputError naming the first point without."""
    if not points:
        raise InputError("points is empty; choose at least one point of the sweep to plot.")
    by_point = {row.get("point"): row for row in rows}
    for point in points:
        if point not in by_point or point not in details:
            raise InputError(
                f"point {point!r} has no row and details in this sweep; choose among "
                f"{', '.join(sorted(p for p in details if p in by_point))}."
            )
    return [by_point[point] for point in points]


def _layers(details: dict[str, dict[str, Any]], points: Sequence[str]) -> list[str]:
    """The layers of the chosen points: in network order, then any named only in a plan."""
    names: dict[str, None] = {}
    for point in points:
        names.update(dict.fromkeys(layer["name"] for layer in details[point].get("layers", [])))
    for point in points:
        names.update(dict.fromkeys(details[point].get("kept", {})))
        names.update(dict.fromkeys(details[point].get("bits", {})))
    return list(names)


def _short(row: Row, width: int = 36) -> str:
    """A row's label, cut to `width` characters for an axis."""
    label = str(row.get("label") or row.get("point"))
    return label if len(label) <= width else label[: width - 1] + "…"
