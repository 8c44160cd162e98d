"""The sweep's plots and HTML report (codesign._sweep.plots, codesign._sweep.report) on a small
hand-made table: what the page shows, that it loads nothing, that it renders the same bytes
twice, and, in a real headless Chromium, that it renders without a single request of the page
leaving the machine."""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from headless import CHROMIUM, RecordingProxy, unexplained, visit
from PIL import Image

from dopant.codesign._sweep.columns import NAMES
from dopant.codesign._sweep.plots import format_value, front_plot, layer_bars, plan_heatmaps
from dopant.codesign._sweep.report import MAX_DETAIL_POINTS, write_report
from dopant.support.errors import InputError

Row = dict[str, Any]
LAYERS = ("conv1", "block1.conv", "block2.conv", "fc")
ERROR = "InputError: budget <0.1x> is infeasible & cannot be met"
ERROR_HTML = "InputError: budget &lt;0.1x&gt; is infeasible &amp; cannot be met"


def point(n: int) -> str:
    return f"{n:012x}"


def make_row(n: int, target: str, fps: float | None, acc: float | None, **more: Any) -> Row:
    """An ok row of point `n` on `target` ("edge16" or "cloud64") with its measures."""
    size, dataflow, area = (16, "ws", 1.2) if target == "edge16" else (64, "os", 9.5)
    row: Row = dict.fromkeys(NAMES)
    row.update(point=point(n), status="ok", target=target, rows=size, cols=size, mode="fixed")
    row.update(dataflow=dataflow, area_mm2=area, fps=fps, accuracy_integer=acc)
    row.update(cycles=None if fps is None else int(1e6 / fps), compile_s=30.0, simulate_s=12.5)
    row.update(more)
    return row


def sample() -> tuple[list[Row], dict[str, dict[str, Any]]]:
    """Six ok points on two targets and one failure, with fronts worked out by hand:
    throughput: 1, 3, 4, 5; energy: 2, 3, 1; area: 1. Point 6 is dominated everywhere."""
    rows = [
        make_row(1, "edge16", 1200.0, 0.91, energy_uj=30.0, label="edge16 w8a8 macs=0.8"),
        make_row(2, "edge16", 2100.0, 0.88, energy_uj=22.0, label="edge16 w4a8 macs=0.5"),
        make_row(3, "edge16", 1800.0, 0.905, energy_uj=24.0, label="edge16 codesign 0.5x"),
        make_row(4, "cloud64", 9000.0, 0.90, energy_uj=60.0, label="cloud64 w8a8 macs=0.8"),
        make_row(5, "cloud64", 15000.0, 0.86, energy_uj=45.0, label="cloud64 codesign 0.25x"),
        make_row(6, "cloud64", 5000.0, 0.80, energy_uj=70.0, label="cloud64 w4a4 <fast> & small"),
        make_row(7, "cloud64", None, None, label="cloud64 w2a2 macs=0.1", status="error"),
    ]
    rows[2]["mode"] = rows[4]["mode"] = "codesign"
    rows[-1].update(error=ERROR, compile_s=None, simulate_s=None)
    details = {}
    for n in range(1, 7):
        narrow = n == 2  # point 2 is uniformly 4-bit
        details[point(n)] = {
            "layers": [{"name": name, "cycles": 100 * n + 10 * k} for k, name in enumerate(LAYERS)],
            "bits": {
                name: "w4a8" if narrow or 0 < k < 3 else "w8a8" for k, name in enumerate(LAYERS)
            },
            "kept": {"conv1": [16, 16], "block1.conv": [24, 32], "block2.conv": [32, 64]},
        }
    return rows, details


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows, details = sample()
    folder = tmp_path_factory.mktemp("report")
    spec = "targets: [edge16, cloud64]\nbits: [w8a8, w4a8] # <all>\n"
    return write_report(folder / "sweep.html", rows, details, title="Sweep <test>", spec_text=spec)


def section(page: str, start: str, end: str) -> str:
    """The page's text from the heading `start` to the heading `end`."""
    return page[page.index(f'<h2 id="{start}">') : page.index(f'<h2 id="{end}">')]


def test_the_report_is_one_self_contained_file(report: Path) -> None:
    page = report.read_text()
    assert [p.name for p in report.parent.iterdir()] == ["sweep.html"]
    for outside in ("http://", "https://", "<link", "@import", "<iframe", "<object", "<embed"):
        assert outside not in page, outside
    assert set(re.findall(r"url\(([^)]*)\)", page)) <= {
        f"#{i}" for i in re.findall(r'id="([^"]+)"', page)
    }
    assert all(href.startswith("#") for href in re.findall(r'href="([^"]*)"', page))
    assert "src=" not in page and "data:" not in page  # all vector: nothing embedded either
    assert page.count("<svg") == 5  # three fronts, the layer bars, the heatmaps


def test_front_table_lists_the_hand_worked_fronts_most_accurate_first(report: Path) -> None:
    front = section(report.read_text(), "front", "details")
    labels = [
        "edge16 w8a8 macs=0.8",
        "edge16 codesign 0.5x",
        "cloud64 w8a8 macs=0.8",
        "edge16 w4a8 macs=0.5",
        "cloud64 codesign 0.25x",
    ]
    positions = [front.index(f">{label}<") for label in labels]
    assert positions == sorted(positions)
    assert "&lt;fast&gt;" not in front  # point 6 is on no front
    assert front.count("<tr>") == 1 + len(labels)
    assert ">throughput, energy, area<" in front and ">energy<" in front
    assert ">91.0<" in front and ">15,000<" in front  # accuracy in %, fps grouped


def test_text_is_escaped_and_failures_are_listed(report: Path) -> None:
    page = report.read_text()
    assert "<title>Sweep &lt;test&gt;</title>" in page
    assert "cloud64 w4a4 &lt;fast&gt; &amp; small" in page and "<fast>" not in page
    failed = section(page, "failed", "spec")
    assert ERROR_HTML in failed and point(7) in failed and "<0.1x>" not in page
    assert "<pre>targets: [edge16, cloud64]\nbits: [w8a8, w4a8] # &lt;all&gt;\n</pre>" in page
    summary = page[: page.index('<h2 id="fronts">')]
    for card in (
        ">7<",
        ">6<",
        ">1<",
        "edge16, cloud64",
        ">91.0 %<",
        ">15,000 FPS<",
        ">4 min 15 s<",
    ):
        assert card in summary, card


def test_the_report_and_its_svg_are_byte_identical_across_runs(
    report: Path, tmp_path: Path
) -> None:
    rows, details = sample()
    again = write_report(
        tmp_path / "again.html",
        rows,
        details,
        title="Sweep <test>",
        spec_text="targets: [edge16, cloud64]\nbits: [w8a8, w4a8] # <all>\n",
    )
    assert again.read_bytes() == report.read_bytes()
    assert front_plot(rows, "energy_uj") == front_plot(rows, "energy_uj")
    assert front_plot(rows, "energy_uj") != front_plot(rows, "area_mm2")


def test_each_ok_point_has_a_tooltip_in_the_front_svg() -> None:
    rows, _ = sample()
    svg = front_plot(rows).decode()
    titles = re.findall(
        r'<g id="pt-fps-accuracy_integer-([0-9a-f]{12})"><title>([^<]*)</title>', svg
    )
    assert [p for p, _ in titles] == [point(n) for n in range(1, 7)]
    first = dict(titles)[point(1)].split("\n")
    assert first[:4] == [
        "edge16 w8a8 macs=0.8",
        f"edge16 · {point(1)}",
        "throughput: 1,200 FPS",
        "top-1 accuracy: 91.0 %",
    ]
    assert "energy per inference: 30.0 µJ" in first and "latency: 833 cycles" in first
    assert "cloud64 w4a4 &lt;fast&gt; &amp; small" in dict(titles)[point(6)]
    assert point(7) not in svg
    assert "top-1 accuracy (%)" in svg and "throughput (FPS)" in svg


def test_png_output_is_a_real_picture() -> None:
    rows, _ = sample()
    image = Image.open(io.BytesIO(front_plot(rows, "area_mm2", fmt="png")))
    assert image.format == "PNG" and image.width > 300 and image.height > 200
    assert len(image.convert("L").getcolors(maxcolors=1 << 16) or []) > 10


def cell_texts(svg: bytes) -> list[str]:
    return re.findall(r"<text [^>]*>([^<]*)</text>", svg.decode())


def test_heatmaps_print_kept_fractions_and_bit_widths() -> None:
    rows, details = sample()
    texts = cell_texts(plan_heatmaps(rows, details, [point(1), point(2)]))
    # kept: 16/16, 24/32, 32/64 for both points (fc has no plan: blank); bits: 8,4,4,8 and 4,4,4,4
    assert texts.count("1.00") == texts.count("0.75") == texts.count("0.50") == 2
    assert texts.count("4") == 6 and texts.count("8") == 2
    assert texts.count("fc") == 1 and texts.count("edge16 w4a8 macs=0.5") == 2


def test_layer_bars_name_the_layers_and_total_the_cycles() -> None:
    rows, details = sample()
    texts = cell_texts(layer_bars(rows, details, [point(1), point(3)]))
    for name in LAYERS:
        assert texts.count(name) == 1  # the panels share the layer axis: named once
    # point 3: 4 * 300 + 10 * (0 + 1 + 2 + 3) = 1260
    assert "edge16 codesign 0.5x" in texts and "1,260 cycles" in texts


def test_detail_plots_are_capped(tmp_path: Path) -> None:
    rows = [
        make_row(n, "edge16", 100.0 * n, 1 - n / 100, label=f"diagonal {n}") for n in range(1, 11)
    ]
    details = {r["point"]: {"layers": [{"name": "conv1", "cycles": 5}]} for r in rows}
    page = write_report(tmp_path / "r.html", rows, details, title="cap").read_text()
    layers = section(page, "details", "all")
    assert f"The first {MAX_DETAIL_POINTS} of 10 front points" in layers
    shown = [n for n in range(1, 11) if f">diagonal {n}<" in layers]
    assert shown == list(range(1, MAX_DETAIL_POINTS + 1))


def test_a_sweep_where_every_point_failed_still_reports(tmp_path: Path) -> None:
    rows, _ = sample()
    page = write_report(tmp_path / "r.html", rows[-1:], {}, title="all failed").read_text()
    assert "No point succeeded" in page and "no point has a value on both axes" in page
    assert ERROR_HTML in page


def test_values_are_shown_in_display_units() -> None:
    assert format_value("accuracy_integer", 0.9123) == "91.2"
    assert format_value("cycles", 1234567) == "1,234,567"
    assert format_value("fps", 15000.0) == "15,000"
    assert format_value("energy_uj", 0.0421) == "0.0421"
    assert format_value("label", "a") == "a" and format_value("fps", None) == ""


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda rows, details, tmp: front_plot(rows, fmt="gif"),
            "fmt='gif' is not an image format",
        ),
        (
            lambda rows, details, tmp: front_plot(rows, x="speed"),
            "x='speed' is not a numeric column",
        ),
        (
            lambda rows, details, tmp: layer_bars(rows, details, ["feedbeef0000"]),
            "point 'feedbeef0000'",
        ),
        (lambda rows, details, tmp: plan_heatmaps(rows, details, []), "points is empty"),
        (
            lambda rows, details, tmp: write_report(
                tmp / "no" / "r.html", rows, details, title="t"
            ),
            "the folder .* does not exist",
        ),
    ],
)
def test_bad_input_is_an_input_error(call: Any, message: str, tmp_path: Path) -> None:
    rows, details = sample()
    with pytest.raises(InputError, match=message):
        call(rows, details, tmp_path)


# --- in a real browser -------------------------------------------------------------------------

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH: apt-get install -y chromium"
)


@pytest.fixture
def proxy() -> Iterator[RecordingProxy]:
    server = RecordingProxy()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@needs_chromium
def test_chromium_renders_the_report_and_the_page_asks_for_nothing(
    report: Path, proxy: RecordingProxy, tmp_path: Path
) -> None:
    dom = visit(report, proxy, tmp_path, "--dump-dom")
    assert dom.output.count("<svg") == 5 and dom.output.count("<table") == 3
    assert ">edge16 codesign 0.5x<" in dom.output and ERROR_HTML in dom.output
    shot = tmp_path / "shot.png"
    picture = visit(report, proxy, tmp_path, f"--screenshot={shot}", "--window-size=1200,1600")
    for seen in (dom, picture):
        assert seen.by_page == []
        assert unexplained(seen) == []
    image = Image.open(shot)
    assert image.format == "PNG" and image.size == (1200, 1600)
    colours = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50  # text, plot colours and lines, not a blank page


@needs_chromium
def test_an_external_resource_in_a_page_is_caught(
    report: Path, proxy: RecordingProxy, tmp_path: Path
) -> None:
    leaky = tmp_path / "leaky.html"
    outside = '<img src="http://example.com/x.png"><link rel="stylesheet" href="https://example.org/s.css">'
    leaky.write_text(report.read_text().replace("<main>", "<main>" + outside, 1))
    seen = visit(leaky, proxy, tmp_path, "--dump-dom")
    assert sorted(seen.by_page) == ["http://example.com/x.png", "https://example.org/s.css"]
    assert "GET http://example.com/x.png" in seen.proxied
    assert "CONNECT example.org:443" in seen.proxied
    assert sorted(unexplained(seen)) == ["CONNECT example.org:443", "GET http://example.com/x.png"]


@needs_chromium
def test_clicking_a_header_sorts_the_full_table(
    report: Path, proxy: RecordingProxy, tmp_path: Path
) -> None:
    # twice on fps: ascending, numerically (as text 15000 would come before 1800); empty last
    fps = NAMES.index("fps")
    click = f'document.querySelectorAll("table.sortable")[1].tHead.rows[0].cells[{fps}].click();'
    clicked = tmp_path / "clicked.html"
    clicked.write_text(
        report.read_text().replace("</body>", f"<script>{click * 2}</script></body>")
    )
    table = section(visit(clicked, proxy, tmp_path, "--dump-dom").output, "all", "failed")
    order = re.findall(r'<td class="id" data-v="([0-9a-f]{12})">', table)
    assert order == [point(n) for n in (1, 3, 2, 6, 4, 5, 7)]
