"""The `dopant` command line: one parser whose subcommands come from command groups, each error
printed as one line.

    dopant import zoo:resnet8 -o net.mlir
    dopant opt net.mlir -p 'fold-batchnorm,fuse-activation' --time-passes -o out.mlir
    dopant compile zoo:resnet8 --target edge16 --calibration sample -o net.dpb

A command group is a module with `register(command)`, found through the `dopant.commands` entry
point group in pyproject.toml (`ir`, `quantize`, `compile`, `accel`, `models` here), so a package
above the compiler (codesign) adds its commands without the compiler importing it.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, entry_points, version
from typing import NoReturn, TextIO

from dopant.support.errors import DopantError, DopantWarning

GROUP = "dopant.commands"
# The compiler's own groups in the order of the data flow; any other group follows by name.
ORDER = ("ir", "quantize", "compile", "accel", "models")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line, like every other dopant error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _groups() -> list[Callable[..., None]]:
    """Each command group's `register`, the compiler's first."""
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    names = [n for n in ORDER if n in found] + sorted(set(found) - set(ORDER))
    return [found[name].load() for name in names]


def _version() -> str:
    try:
        return version("dopant")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _one_line_printer() -> Callable[..., None]:
    """A `warnings.showwarning` that prints each distinct DopantWarning once, as one line like
    the errors (other warnings as Python prints them)."""
    seen: set[str] = set()
    python_default = warnings.showwarning

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if not issubclass(category, DopantWarning):
            python_default(message, category, filename, lineno, file, line)
            return
        text = " ".join(str(message).split())
        if text not in seen:
            seen.add(text)
            print(f"dopant: warning: {text}", file=sys.stderr)

    return show


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dopant", description="Compile PyTorch models for a modeled systolic array."
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bars (they are off when not a terminal)",
    )
    parser.add_argument("--version", action="version", version=f"dopant {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, run: Callable[[argparse.Namespace], None], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(run=run)
        return p

    for register in _groups():
        register(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dopant` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", DopantWarning)  # the printer shows each once
            warnings.showwarning = _one_line_printer()
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
