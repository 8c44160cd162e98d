"""The accelerator commands: `dopant run`, `profile`, `asm`, `disasm`, `isa` and `targets`.

Each handler imports what it runs when it runs, so `dopant --help` does not pay for numpy's
and the simulator's imports.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from dopant.compiler.cli.quantize import Command
from dopant.runtime.program import Program
from dopant.support.errors import InputError


def _read_inputs(program: Program, path: str | os.PathLike[str]) -> list[np.ndarray]:
    """The inputs in a .npy file (a program with one input) or a .npz file (by input name)."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read inputs from '{os.fspath(path)}': {error}") from None
    if isinstance(data, np.ndarray):
        if len(program.inputs) != 1:
            names = ", ".join(f"'{d.name}'" for d in program.inputs)
            raise InputError(
                f"the program takes {len(program.inputs)} inputs ({names}); give them as a .npz "
                "file holding one array per input name"
            )
        return [data]
    with data:
        missing = [d.name for d in program.inputs if d.name not in data.files]
        if missing:
            raise InputError(
                f"'{os.fspath(path)}' holds {', '.join(data.files) or 'no arrays'} but not the "
                f"input(s) {', '.join(missing)}"
            )
        return [data[d.name] for d in program.inputs]


def main_run(
    binary: str | os.PathLike[str],
    input_npy: str | os.PathLike[str],
    trace_path: str | os.PathLike[str] | None = None,
) -> None:
    """`dopant run`: run the binary on the float inputs in `input_npy` (.npy, or .npz by input
    name), print its outputs, the run's summary and per-layer table, and write the Chrome trace
    to `trace_path` if given."""
    from dopant.runtime.loader import load
    from dopant.support.files import write_atomic

    program = load(binary)
    result = program.run(*_read_inputs(program, input_npy), trace=trace_path is not None)
    for desc, value in zip(program.outputs, result.outputs, strict=True):
        text = np.array2string(value, threshold=20, precision=4)
        top = f" (argmax {int(value.argmax())})" if value.size > 1 else ""
        print(f"output '{desc.name}' {list(desc.shape)}{top}:\n{text}")
    print(result.stats.summary())
    print(result.stats.table())
    if trace_path is not None and result.trace is not None:
        write_atomic(trace_path, json.dumps(result.trace))


def main_profile(binary: str | os.PathLike[str]) -> None:
    """`dopant profile`: time the binary on its machine (the timing model alone, so no inputs
    are needed) and print the run's summary and per-layer table."""
    from dopant.runtime.loader import load

    stats = load(binary).stats
    print(stats.summary())
    print(stats.table())


def _read_text(file: Path) -> str:
    from dopant.backend.asm import AsmError

    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AsmError(f"assembly file '{file}' does not exist") from None
    except UnicodeDecodeError as error:
        raise AsmError(f"assembly file '{file}' is not UTF-8 text: {error}") from None
    except OSError as error:
        raise AsmError(f"cannot read assembly file '{file}': {error.strerror}") from None


def main_asm(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    binary_path: str | os.PathLike[str],
) -> None:
    """`dopant asm`: assemble the text at `input_path` ('-' for standard input) into the code
    section of the binary at `binary_path`, and write the new binary to `output_path`."""
    from dopant.backend.asm import assemble_into
    from dopant.backend.binary import read_binary_file, read_program, save_program

    if str(input_path) == "-":
        text, name = sys.stdin.read(), "<stdin>"
    else:
        text, name = _read_text(Path(input_path)), str(input_path)
    program = read_program(read_binary_file(binary_path))
    save_program(assemble_into(program, text, name), output_path)


def main_disasm(
    binary_path: str | os.PathLike[str], output_path: str | os.PathLike[str] | None = None
) -> None:
    """`dopant disasm`: write the assembly of the binary at `binary_path` to `output_path`, or
    to standard output when it is None or '-'."""
    from dopant.backend.asm import disassemble
    from dopant.backend.binary import read_binary_file
    from dopant.support.files import write_atomic

    text = disassemble(read_binary_file(binary_path))
    if output_path is None or str(output_path) == "-":
        sys.stdout.write(text)
        return
    write_atomic(output_path, text)


def _cmd_isa(args: argparse.Namespace) -> None:
    from dopant.dialects.isa import isa_markdown

    print(isa_markdown(), end="")


def _cmd_targets(args: argparse.Namespace) -> None:
    from dopant.backend.presets import preset, preset_names

    for name in preset_names():
        print(f"# {name}\n{preset(name).to_toml()}")


def register(command: Command) -> None:
    """Add the accelerator commands to the CLI."""
    command("isa", _cmd_isa, "print the instruction set (generated from the ISA table)")
    command("targets", _cmd_targets, "print the accelerator presets as TOML")
    p = command(
        "run",
        lambda a: main_run(a.binary, a.input, a.trace),
        "run a .dpb binary on the simulated accelerator",
    )
    p.add_argument("binary", help=".dpb file")
    p.add_argument("--input", required=True, help=".npy (one input) or .npz (by input name)")
    p.add_argument("--trace", help="write a Chrome/Perfetto trace of the engines to this file")

    p = command(
        "profile",
        lambda a: main_profile(a.binary),
        "per-layer latency of a .dpb binary (no inputs needed)",
    )
    p.add_argument("binary", help=".dpb file")

    p = command(
        "disasm", lambda a: main_disasm(a.binary, a.output), "print the assembly of a .dpb binary"
    )
    p.add_argument("binary", help=".dpb file")
    p.add_argument("-o", "--output", help="output .s file (default: standard output)")

    p = command(
        "asm",
        lambda a: main_asm(a.input, a.output, a.binary),
        "assemble text into the code of a .dpb binary",
    )
    p.add_argument("input", help="assembly file, or - for standard input")
    p.add_argument("--binary", required=True, help="the .dpb whose code is replaced")
    p.add_argument("-o", "--output", required=True, help="the new .dpb file")
