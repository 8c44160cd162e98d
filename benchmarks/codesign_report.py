"""The results of benchmarks/codesign.py: the CSV the rows are appended to (so a run resumes),
the full table, the summary table and the plot of top-1 against measured FPS."""

from __future__ import annotations

from pathlib import Path

import csv_rows
from codesign_setup import FIELDS, LABELS, UNIFORM, Row

from dopant.backend.presets import load_target


def done_rows(path: Path) -> dict[tuple[str, str, str, str], dict[str, str]]:
    return {(r["model"], r["target"], r["budget"], r["arm"]): r for r in csv_rows.read_rows(path)}


def append_row(path: Path, row: Row) -> None:
    csv_rows.append_row(path, FIELDS, {k: fmt(v) for k, v in row.items()})


def fmt(value: object) -> object:
    return f"{value:.6g}" if isinstance(value, float) else value


def print_table(rows: list[dict[str, str]]) -> None:
    """One markdown table, by model and target, the budgeted arms by budget."""
    print(
        "\n| model | target | budget | arm | measured cycles | FPS | top-1 integer (10k) | "
        "top-1 float | rounds | wall s | loop s | note |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    order = {arm: i for i, arm in enumerate(LABELS)}
    for r in sorted(rows, key=lambda r: row_order(r, order)):
        dense = int(r["dense_cycles"])
        cycles = int(r["cycles"])
        budget = budget_label(r["budget"])
        acc = f"{float(r['acc']):.2%}" if r["acc"] else "-"
        accf = f"{float(r['acc_float']):.2%}" if r["acc_float"] else "-"
        fps = f"{float(r['fps']):,.0f}" if r["fps"] else "-"
        note = r["status"] if r["status"] != "ok" else r["detail"]
        print(
            f"| {r['model']} | {r['target']} | {budget} | {LABELS[r['arm']]} | {cycles:,} "
            f"({cycles / dense:.1%}) | {fps} | {acc} | {accf} | {r['rounds'] or '-'} | "
            f"{float(r['wall_s']):.0f} | {float(r['loop_s']):.0f} | {note} |"
        )


def print_summary(rows: list[dict[str, str]]) -> None:
    """The goals at a glance: per model, target and budget, each budgeted arm's top-1 and
    measured cycles (as a fraction of the dense W8A8 network's)."""
    arms = [a for a in LABELS if a not in UNIFORM]
    present = [a for a in arms if any(r["arm"] == a for r in rows)]
    print("\n| model | target | budget | " + " | ".join(LABELS[a] for a in present) + " |")
    print("|---" * (3 + len(present)) + "|")
    order = {arm: i for i, arm in enumerate(LABELS)}
    keys = {(r["model"], r["target"], r["budget"]): r for r in rows if r["budget"] != "none"}
    for key in sorted(keys, key=lambda k: row_order(keys[k], order)):
        by_arm = {r["arm"]: r for r in rows if (r["model"], r["target"], r["budget"]) == key}
        cells = [summary_cell(by_arm.get(a)) for a in present]
        print(f"| {key[0]} | {key[1]} | {budget_label(key[2])} | " + " | ".join(cells) + " |")


def summary_cell(r: dict[str, str] | None) -> str:
    if r is None:
        return ""
    share = int(r["cycles"]) / int(r["dense_cycles"])
    if not r["acc"]:
        return f"infeasible (fastest {share:.1%})"
    band = "" if r["status"] == "ok" else ", under the band"
    return f"{float(r['acc']):.2%} ({share:.1%}{band})"


def budget_label(key: str) -> str:
    if key == "none":
        return "-"
    return f"at {key.upper()}" if key in UNIFORM else f"{float(key):.1f}x"


def row_order(r: dict[str, str], order: dict[str, int]) -> tuple[object, ...]:
    if r["budget"] == "none":
        budget = -1.0
    elif r["budget"] in UNIFORM:
        budget = -int(r["budget_cycles"]) / int(r["dense_cycles"])
    else:
        budget = -float(r["budget"])
    return (r["model"], r["target"], budget, order[r["arm"]])


def plot(rows: list[dict[str, str]], path: Path) -> None:
    """Top-1 (integer, 10k) against measured FPS, one panel per model and target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((r["model"], r["target"]) for r in rows))
    cols = 2
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(11, 4.2 * nrows), squeeze=False)
    markers = {"mac": "s", "sosp-h": "o", "bits": "^", "joint": "D"}
    markers.update({"bits-loss": "v", "joint-loss": "d", "bits-48": "P", "bits-48-loss": "X"})
    for ax, (model, target) in zip(axes.flat, panels, strict=False):
        mine = [r for r in rows if (r["model"], r["target"]) == (model, target) and r["acc"]]
        for arm in LABELS:
            points = sorted(
                (float(r["fps"]), 100 * float(r["acc"])) for r in mine if r["arm"] == arm
            )
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            if arm in UNIFORM:
                ax.scatter(xs, ys, marker="*", s=120, color="black", zorder=3)
                ax.annotate(
                    arm.upper(), (xs[0], ys[0]), textcoords="offset points", xytext=(6, -10)
                )
            else:
                ax.plot(xs, ys, marker=markers[arm], label=LABELS[arm])
        dense = next((int(r["dense_cycles"]) for r in mine), None)
        if dense:
            clock = load_target(target).clock_mhz * 1e6
            for fraction in (0.7, 0.5, 0.3):
                ax.axvline(clock / (fraction * dense), color="grey", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel(f"measured FPS on {target}")
        ax.set_ylabel("top-1, integer network, 10k test (%)")
        ax.set_title(f"{model} on {target} (dotted: 0.7x, 0.5x, 0.3x budgets)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nplot: {path}")
