"""`dopant sweep` and `dopant report`: run a sweep spec's points (in this process or on Ray) into
a folder, and draw its fronts, plots and report again (`dopant.codesign.sweep`).

    dopant sweep sweep.toml -o results/ [--workers 2] [--address ray://head:10001] [--resume]
    dopant sweep sweep.toml --list      # the points it would run, and nothing else
    dopant report results/

`sweep` prints each point as it finishes and the accuracy-FPS front at the end, and writes
results/table.csv, pareto.csv, the front plots and report.html; rerun, it runs only the points
the folder lacks.
"""

from __future__ import annotations

import argparse

from dopant.codesign.cli.common import add_cache_option, add_ray_options
from dopant.compiler.cli.options import Command, shows_progress


def _cmd_sweep(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from dopant.codesign._sweep.run import sweep
    from dopant.support.errors import InputError

    if args.list:
        _list(args.spec)
        return
    if args.output is None:
        raise InputError("dopant sweep needs -o FOLDER for its results (or --list to plan only).")
    result = sweep(
        args.spec,
        args.output,
        workers=args.workers,
        address=args.address,
        resume=args.resume,
        cache_dir=args.cache_dir,
        progress=shows_progress(args),
        log=tqdm.write,  # each finished point above the progress bar
    )
    failed = [row for row in result.rows if row["status"] != "ok"]
    print(f"{len(result.rows) - len(failed)} point(s) ok, {len(failed)} failed")
    print("accuracy vs FPS front:")
    for row in result.pareto(x="fps", y="accuracy_integer"):
        print(
            f"  {row['label']}: {row['cycles']:,} cycles, {row['fps']:,.0f} FPS, "
            f"{row['energy_uj']:.2f} uJ, {row['area_mm2']:.2f} mm2, top-1 "
            f"{row['accuracy_integer']:.2%}"
        )
    print(f"wrote {args.output}/table.csv, pareto.csv, report.html")


def _list(spec_path: str) -> None:
    """The points the spec makes, one line each, with no model or data loaded."""
    from dopant.codesign._sweep.space import points
    from dopant.codesign._sweep.spec import SweepSpec

    planned = points(SweepSpec.load(spec_path))
    settings = len({setting for setting, _ in planned})
    machines = len({config.name for _, config in planned})
    print(f"{len(planned)} point(s): {settings} setting(s) x {machines} machine(s)")
    for setting, config in planned:
        print(f"  {config.name} {setting.label()}")


def _cmd_report(args: argparse.Namespace) -> None:
    from dopant.codesign._sweep.result import SweepResult

    written = SweepResult.load(args.folder).save(args.folder)
    print("wrote " + ", ".join(str(path) for path in written))


def register(command: Command) -> None:
    """Add `dopant sweep` and `dopant report` to the CLI."""
    p = command("sweep", _cmd_sweep, "run a sweep spec's points and write its fronts and report")
    p.add_argument("spec", help="the sweep spec, a TOML file (README: Sweeps and Pareto fronts)")
    p.add_argument("-o", "--output", help="the sweep's folder")
    p.add_argument(
        "--list", action="store_true", help="print the points the spec makes and stop (no -o)"
    )
    add_ray_options(p, "points")
    p.add_argument(
        "--resume",
        action="store_true",
        help="reuse the finished points of a folder that holds another spec's sweep",
    )
    add_cache_option(p)
    p = command("report", _cmd_report, "write a sweep folder's fronts, plots and report.html again")
    p.add_argument("folder", help="a folder `dopant sweep` wrote")
