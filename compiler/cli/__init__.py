"""The `dopant` command line. Each subcommand is one function; errors print as one line.

dopant import zoo:resnet8 -o net.mlir
dopant opt net.mlir -p 'fold-batchnorm,fuse-activation' --time-passes -o out.mlir
dopant quantize net.mlir --calibration sample --weight-bits 4 -o q.mlir
    dopant eval q.mlir
    dopant passes | dopant ops | dopant zoo | dopant demo
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import NoReturn

from dopant.compiler.cli import accel as cli_accel
from dopant.compiler.cli import compile as cli_compile
from dopant.compiler.cli import quantize as cli_quantize
from dopant.support.errors import DopantError


def _cmd_import(args: argparse.Namespace) -> None:
    from dopant.compiler.frontend import import_model
    from dopant.compiler.irio import write_ir
    from dopant.compiler.models.load import load_model, parse_shape

    shape = parse_shape(args.input_shape) if args.input_shape else None
    loaded = load_model(args.model, shape)
    module = import_model(loaded.model, loaded.example_input)
    if args.calibration:
        from dopant.compiler.calibrate import calibrate
        from dopant.compiler.cli.quantize import calibration_data
        from dopant.compiler.pipeline import run_pipeline
        from dopant.compiler.quantization import CANONICAL

        data = calibration_data(args.calibration, module)
        run_pipeline(module, CANONICAL)
        calibrate(module, data, args.method, percentile=args.percentile)
    write_ir(module, args.output, args.generic)


def _cmd_opt(args: argparse.Namespace) -> None:
    from dopant.compiler.irio import read_ir, write_ir
    from dopant.compiler.pipeline import parse, run_pipeline

    passes = parse(args.pipeline)  # a bad pipeline fails before the input is read
    module = read_ir(args.input)
    report = run_pipeline(
        module,
        passes,
        verify_each=not args.no_verify,
        print_ir_after=args.print_ir_after or (),
        print_ir_after_all=args.print_ir_after_all,
        dump=sys.stderr,
    )
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


def _cmd_zoo(args: argparse.Namespace) -> None:
    from dopant.compiler.models import zoo

    for name in zoo.names():
        entry = zoo.get(name)
        dims = "x".join(map(str, entry.input_shape))
        print(f"zoo:{name:<12} {dims:<12} {entry.summary}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from dopant.compiler.cli.demo import demo

    demo(args.model)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line, like every other dopant error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dopant", description="Compile PyTorch models for a modeled systolic array."
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, run: Callable[[argparse.Namespace], None], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(run=run)
        return p

    p = command("import", _cmd_import, "trace a PyTorch model into qnn IR")
    p.add_argument("model", help="zoo:NAME or path/to/file.py:factory")
    p.add_argument("--input-shape", help="input shape such as 1,3,32,32 (zoo models have one)")
    p.add_argument("-o", "--output", help="output .mlir file (default: standard output)")
    p.add_argument("--generic", action="store_true", help="print the generic op form")
    p.add_argument("--calibration", help="also fold, fuse and calibrate on 'sample' or a .npz")
    cli_quantize.add_calibration_options(p)

    p = command("opt", _cmd_opt, "run a pass pipeline on qnn IR")
    p.add_argument("input", help="input .mlir file, or - for standard input")
    p.add_argument(
        "-p", "--pipeline", default="", help="passes, e.g. 'fold-batchnorm,fuse-activation'"
    )
    p.add_argument("-o", "--output", help="output .mlir file (default: standard output)")
    p.add_argument("--print-ir-after-all", action="store_true", help="dump IR after every pass")
    p.add_argument("--print-ir-after", action="append", metavar="PASS", help="dump IR after PASS")
    p.add_argument("--time-passes", action="store_true", help="print time per pass")
    p.add_argument("--no-verify", action="store_true", help="skip verification between passes")
    p.add_argument("--generic", action="store_true", help="print the generic op form")

    cli_quantize.register(command)
    cli_compile.register(command)
    cli_accel.register(command)
    command("passes", _cmd_passes, "list passes with their options")
    command("ops", _cmd_ops, "list the torch ops the frontend imports")
    command("zoo", _cmd_zoo, "list the built-in models")
    p = command("demo", _cmd_demo, "the main job on an embedded default model")
    p.add_argument(
        "--model", default="zoo:resnet8", help="trained model: zoo:resnet8 or zoo:lenet5"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dopant` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except DopantError as error:
        if args.debug:
            raise
        print(f"dopant: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    except Exception as error:  # a bug: say so in one line, the traceback is one flag away
        if args.debug:
            raise
        message = " ".join(str(error).split())
        print(
            f"dopant: internal error: {type(error).__name__}: {message} (rerun with --debug "
            "for the traceback and report it)",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
