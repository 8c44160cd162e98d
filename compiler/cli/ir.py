"""The IR commands: `dopant import` (torch to qnn), `opt` (pass pipelines, as mlir-opt),
`passes` and `ops`.

Handlers import the compiler (xDSL, torch) when they run, so `dopant --help` stays quick.
"""

from __future__ import annotations

import argparse
import io
import sys
import textwrap

from dopant.compiler.cli.model_options import (
    add_model_arguments,
    check_model_arguments,
    imported_module,
)
from dopant.compiler.cli.options import Command, add_calibration_options, calibrate_module


def _cmd_import(args: argparse.Namespace) -> None:
    from dopant.compiler.irio import write_ir

    check_model_arguments(args)
    module = imported_module(args)
    if args.calibration:
        calibrate_module(module, args)
    write_ir(module, args.output, args.generic)


def _cmd_opt(args: argparse.Namespace) -> None:
    from dopant.compiler.irio import read_ir, write_ir
    from dopant.compiler.pipeline import parse, run_pipeline
    from dopant.support.files import check_writable, write_atomic

    passes = parse(args.pipeline)  # a bad pipeline fails before the input is read
    for path in (args.output, args.dump_to):
        if path and path != "-":
            check_writable(path)
    module = read_ir(args.input)
    buffer = io.StringIO() if args.dump_to else None
    report = run_pipeline(
        module,
        passes,
        verify_each=not args.no_verify,
        print_ir_after=args.print_ir_after or (),
        print_ir_after_all=args.print_ir_after_all,
        dump=buffer or sys.stderr,
    )
    if buffer is not None:
        write_atomic(args.dump_to, buffer.getvalue())
    write_ir(module, args.output, args.generic)
    if args.time_passes:
        print(report.table(), file=sys.stderr)


def _cmd_passes(args: argparse.Namespace) -> None:
    from dopant.compiler.pipeline import available_passes, option_text, options_of, summary_of

    for name, factory in available_passes().items():
        print(f"{name}\n    {summary_of(name)}")
        for option, kind, default in options_of(factory()):
            print(f"    {option}: {kind} = {option_text(default)}")


def _cmd_ops(args: argparse.Namespace) -> None:
    from dopant.compiler.frontend import LOWERINGS
    from dopant.compiler.frontend.base import op_name

    names = sorted({op_name(target) for target in LOWERINGS})
    print("ATen ops dopant imports (after torch.export and core-ATen decomposition):")
    print(textwrap.fill(", ".join(names), width=96, initial_indent="  ", subsequent_indent="  "))


def register(command: Command) -> None:
    """Add the IR commands to the CLI."""
    p = command("import", _cmd_import, "trace a PyTorch model into qnn IR")
    add_model_arguments(p, "zoo:NAME or path/to/file.py:factory")
    p.add_argument("-o", "--output", help="output .mlir file (default: standard output)")
    p.add_argument("--generic", action="store_true", help="print the generic op form")
    p.add_argument("--calibration", help="also fold, fuse and calibrate on this data (SPEC)")
    add_calibration_options(p)

    p = command("opt", _cmd_opt, "run a pass pipeline on qnn IR")
    p.add_argument("input", help="input .mlir file, or - for standard input")
    p.add_argument(
        "-p", "--pipeline", default="", help="passes, e.g. 'fold-batchnorm,fuse-activation'"
    )
    p.add_argument("-o", "--output", help="output .mlir file (default: standard output)")
    p.add_argument("--print-ir-after-all", action="store_true", help="dump IR after every pass")
    p.add_argument("--print-ir-after", action="append", metavar="PASS", help="dump IR after PASS")
    p.add_argument(
        "--dump-to", metavar="FILE", help="write the IR dumps to FILE instead of standard error"
    )
    p.add_argument("--time-passes", action="store_true", help="print time per pass")
    p.add_argument("--no-verify", action="store_true", help="skip verification between passes")
    p.add_argument("--generic", action="store_true", help="print the generic op form")
    command("passes", _cmd_passes, "list passes with their options")
    command("ops", _cmd_ops, "list the torch ops the frontend imports")
