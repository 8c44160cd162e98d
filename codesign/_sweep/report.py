"""The sweep's report: one self-contained HTML file a person can read at a glance.

The page loads nothing: its style and its small table-sorting script are inline, and its plots
are inline SVG (so each point's tooltip shows on hover). It holds a summary, the
accuracy-versus-throughput front (overall and per hardware config), the accuracy-versus-energy
and accuracy-versus-area fronts, a table of the front points, per-layer latency bars and plan
heatmaps of up to `MAX_DETAIL_POINTS` front points, the full table, the failed points with
their errors, and the sweep's spec when given. Every text from the table is escaped.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dopant.codesign._sweep import plots
from dopant.codesign._sweep.columns import COLUMNS
from dopant.codesign._sweep.pareto import ALL, Row, fronts
from dopant.support.files import check_writable, write_atomic

# The detail plots grow with each point; past this many front points they stop being readable,
# so the first ones (the accuracy-versus-throughput front, most accurate first) are shown.
MAX_DETAIL_POINTS = 8
ACCURACY = "accuracy_integer"
PAIR = (6.4, 4.0)  # the size of each plot of the energy and area pair, inches
# the x of each front against accuracy, with the name the front table gives it
FRONT_AXES = (("fps", "throughput"), ("energy_uj", "energy"), ("area_mm2", "area"))
FRONT_COLUMNS = (
    "label",
    "target",
    "mode",
    "bits",
    "prune_target",
    "latency_budget",
    "fps",
    ACCURACY,
    "energy_uj",
    "area_mm2",
)
FAILURE_COLUMNS = ("point", "label", "target", "error")
DOCS = {column.name: column.doc for column in COLUMNS}

CSS = """
:root{--ink:#1d232b;--muted:#66707c;--line:#e3e6ea;--soft:#f5f7f9;--accent:#0072b2}
*{box-sizing:border-box}
body{margin:0;font:13px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
color:var(--ink);background:#fff}
main{max-width:1240px;margin:0 auto;padding:20px 24px 60px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:32px 0 8px;padding-bottom:4px;
border-bottom:2px solid var(--line)}h3{font-size:13px;margin:12px 0 4px;color:var(--muted)}
nav a{color:var(--accent);margin-right:14px;text-decoration:none}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(160px,1fr));gap:10px;
margin:14px 0}
.card{background:var(--soft);border-radius:8px;padding:10px 12px}
.card b{display:block;font-size:20px}.card span{color:var(--muted);font-size:12px}
.card.bad b{color:#c0392b}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:16px}
@media (max-width:900px){.pair{grid-template-columns:1fr}}
figure{margin:0}svg{max-width:100%;height:auto}
.scroll{overflow-x:auto;border:1px solid var(--line);border-radius:6px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
th{background:var(--soft);position:sticky;top:0;font-weight:600}
td.n{text-align:right}tr:nth-child(even) td{background:#fafbfc}
tr.error td{background:#fdf0ef}td.err{white-space:pre-wrap;min-width:28em;font-family:monospace}
table.sortable th{cursor:pointer}table.sortable th:hover{color:var(--accent)}
code,td.id{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px}
pre{background:var(--soft);padding:12px;border-radius:6px;overflow-x:auto}
.note{color:var(--muted)}
"""

# Click a header of a sortable table to sort by it, again to reverse. Number cells (class "n")
# compare as numbers, others as text; empty cells stay last either way.
SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, column) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], down = th.dataset.down !== "1";
      th.dataset.down = down ? "1" : "0";
      var rows = Array.prototype.slice.call(body.rows).sort(function (a, b) {
        var p = a.cells[column], q = b.cells[column], x = p.dataset.v, y = q.dataset.v;
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        var numbers = p.className === "n" && q.className === "n";
        var order = numbers ? Number(x) - Number(y) : x.localeCompare(y);
        return down ? -order : order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def write_report(
    path: str | os.PathLike[str],
    rows: Sequence[Row],
    details: dict[str, dict[str, Any]],
    *,
    title: str,
    spec_text: str | None = None,
) -> Path:
    """Write the sweep's HTML report of `rows` (the table) and `details` (per point id: layers,
    bits, kept) to `path`, atomically; the path written."""
    target = Path(path)
    check_writable(target)  # before the plots, which take a while
    write_atomic(target, render_report(rows, details, title=title, spec_text=spec_text))
    return target


def render_report(
    rows: Sequence[Row],
    details: dict[str, dict[str, Any]],
    *,
    title: str,
    spec_text: str | None = None,
) -> str:
    """The report's HTML text (see `write_report`)."""
    table = list(rows)
    on_fronts = front_membership(table)
    front = [row for row in table if id(row) in on_fronts]
    front.sort(key=lambda row: -row[ACCURACY])
    failed = [row for row in table if row.get("status") != "ok"]
    body = [
        f"<h1>{html.escape(title)}</h1>",
        _nav(failed, spec_text),
        _summary(table),
        '<h2 id="fronts">Accuracy versus throughput</h2>',
        _figure(plots.front_plot(table, "fps", ACCURACY, size=(9.5, 4.8))),
        '<h2 id="costs">Accuracy versus energy and area</h2>',
        '<div class="pair">',
        _figure(plots.front_plot(table, "energy_uj", ACCURACY, size=PAIR)),
        _figure(plots.front_plot(table, "area_mm2", ACCURACY, size=PAIR)),
        "</div>",
        '<h2 id="front">Points on a front</h2>',
        _front_table(front, on_fronts),
        _detail_plots(table, details, front),
        '<h2 id="all">All points</h2>',
        '<p class="note">Click a column to sort by it.</p>',
        _table(table, [column.name for column in COLUMNS], sortable=True),
    ]
    if failed:
        body += ['<h2 id="failed">Failed points</h2>', _table(failed, FAILURE_COLUMNS)]
    if spec_text is not None:
        body += ['<h2 id="spec">Spec</h2>', f"<pre>{html.escape(spec_text)}</pre>"]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(body)
        + f"\n</main>\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )


def front_membership(rows: list[Row]) -> dict[int, list[str]]:
    """For each row on an overall front against accuracy (by `id`), the fronts' names."""
    member: dict[int, list[str]] = {}
    for x, name in FRONT_AXES:
        for row in fronts(rows, x, ACCURACY)[ALL]:
            member.setdefault(id(row), []).append(name)
    return member


def inline_svg(svg: bytes) -> str:
    """An SVG file as an element of an HTML page: without its XML prolog, namespace
    declarations and metadata, which an HTML parser does not need (and which name URLs)."""
    text = svg.decode()
    text = text[text.index("<svg") :]
    text = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text, count=2)
    return re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.DOTALL)


def _figure(svg: bytes) -> str:
    """A plot as a figure of the page."""
    return f"<figure>{inline_svg(svg)}</figure>"


def _nav(failed: list[Row], spec_text: str | None) -> str:
    """Links to the report's sections (in-page anchors only)."""
    links = [("fronts", "fronts"), ("front", "front points"), ("details", "layers")]
    links += [("all", "all points")]
    links += [("failed", f"failed ({len(failed)})")] if failed else []
    links += [("spec", "spec")] if spec_text is not None else []
    return "<nav>" + "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in links) + "</nav>"


def _summary(rows: list[Row]) -> str:
    """Cards: the points ok and failed, the hardware configs, the best accuracy and
    throughput, and the compute time the points took."""
    ok = [row for row in rows if row.get("status") == "ok"]
    targets = list(dict.fromkeys(str(row.get("target")) for row in rows))
    cards = [
        (str(len(rows)), "points"),
        (str(len(ok)), "ok"),
        (str(len(rows) - len(ok)), "failed"),
        (str(len(targets)), "hardware configs: " + ", ".join(targets)),
    ]
    for column, what in ((ACCURACY, "best top-1 accuracy"), ("fps", "highest throughput")):
        valued = [row for row in ok if row.get(column) is not None]
        if valued:
            best = max(valued, key=lambda row: row[column])
            unit = plots.MEASURES[column][1]
            value = f"{plots.format_value(column, best[column])} {unit}"
            cards.append((value, f"{what}: {best.get('label')}"))
    seconds = [row[c] for row in rows for c in ("compile_s", "simulate_s") if row.get(c)]
    if seconds:
        cards.append((_duration(sum(seconds)), "compile + simulate time, summed over points"))
    html_cards = "".join(
        f'<div class="card{" bad" if text == "failed" and value != "0" else ""}">'
        f"<b>{html.escape(value)}</b><span>{html.escape(text)}</span></div>"
        for value, text in cards
    )
    return f'<div class="cards">{html_cards}</div>'


def _duration(seconds: float) -> str:
    """`seconds` as "42.0 s", "12 min 5 s" or "3 h 20 min"."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    return f"{minutes // 60} h {minutes % 60} min"


def _front_table(front: list[Row], on_fronts: dict[int, list[str]]) -> str:
    """The front points, most accurate first, with the fronts each lies on."""
    if not front:
        return '<p class="note">No point succeeded, so there is no front.</p>'
    extra = {id(row): ", ".join(on_fronts[id(row)]) for row in front}
    return _table(front, FRONT_COLUMNS, extra=("on fronts", extra), sortable=True)


def _detail_plots(rows: list[Row], details: dict[str, dict[str, Any]], front: list[Row]) -> str:
    """Per-layer latency bars and plan heatmaps of the first `MAX_DETAIL_POINTS` front points
    that have details."""
    with_details = [row["point"] for row in front if row.get("point") in details]
    chosen = with_details[:MAX_DETAIL_POINTS]
    parts = ['<h2 id="details">Layers of the front points</h2>']
    if not chosen:
        return parts[0] + '<p class="note">No front point has per-layer details.</p>'
    if len(with_details) > len(chosen):
        parts.append(
            f'<p class="note">The first {len(chosen)} of {len(with_details)} front points, '
            "most accurate first.</p>"
        )
    parts += ["<h3>Cycles per layer</h3>", _figure(plots.layer_bars(rows, details, chosen))]
    if any(details[p].get("kept") or details[p].get("bits") for p in chosen):
        parts += ["<h3>Plan: channels kept and weight bits per layer</h3>"]
        parts.append(_figure(plots.plan_heatmaps(rows, details, chosen)))
    return "\n".join(parts)


def _header(column: str) -> str:
    """A column's header cell: its name and display unit, its description on hover."""
    unit = plots.MEASURES.get(column, ("", "", 1.0))[1]
    name = f"{column} ({unit})" if unit else column
    return f'<th title="{html.escape(DOCS.get(column, column))}">{html.escape(name)}</th>'


def _table(
    rows: list[Row],
    columns: Sequence[str],
    *,
    extra: tuple[str, dict[int, str]] | None = None,
    sortable: bool = False,
) -> str:
    """An HTML table of `rows` on `columns` (plus an `extra` column: its header and text by
    row id); numbers right-aligned in the columns' display units, each cell's raw value kept
    for sorting."""
    head = "".join(_header(column) for column in columns)
    head += f"<th>{html.escape(extra[0])}</th>" if extra else ""
    lines = []
    for row in rows:
        cells = "".join(_cell(column, row.get(column)) for column in columns)
        cells += _cell(extra[0], extra[1][id(row)]) if extra else ""
        status = ' class="error"' if row.get("status") == "error" else ""
        lines.append(f"<tr{status}>{cells}</tr>")
    kind = ' class="sortable"' if sortable else ""
    return (
        f'<div class="scroll"><table{kind}><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(lines)}</tbody></table></div>"
    )


def _cell(column: str, value: Any) -> str:
    """One table cell: the formatted value, the raw one in data-v for sorting."""
    text = html.escape(plots.format_value(column, value))
    raw = html.escape("" if value is None or not text else str(value))
    number = isinstance(value, int | float) and not isinstance(value, bool)
    kind = ' class="n"' if number else ' class="id"' if column == "point" else ""
    kind = ' class="err"' if column == "error" else kind
    return f'<td{kind} data-v="{raw}">{text}</td>'
