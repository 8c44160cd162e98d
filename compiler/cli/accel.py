"""The accelerator commands: `dopant run`, `profile`, `asm`, `disasm`, `isa` and `targets`.

Each handler imports what it runs when it runs, so `dopant --help` does not pay for numpy's
and the simulator's imports.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dopant.compiler.cli.options import SPEC_HELP, add_data_options, preprocess_of
from dopant.compiler.cli.quantize import Command
from dopant.runtime.program import Program
from dopant.support.errors import InputError

if TYPE_CHECKING:
    from dopant.compiler.inputs import Preprocess, Samples


def _read_inputs(
    program: Program, spec: str, preprocess: Preprocess, limit: int
) -> tuple[list[np.ndarray], Samples | None]:
    """The program's inputs from `spec`: a batch of samples for a program with one input (any
    SPEC, see `compiler.inputs`), or for several inputs a .npz of float arrays by input name."""
    from dopant.compiler.inputs import load_samples, too_many_inputs

    names = [desc.name for desc in program.inputs]
    if len(names) == 1:
        sample = program.inputs[0].shape[1:]
        data = load_samples(spec, sample, split="test", preprocess=preprocess, limit=limit)
        return [data.x], data
    fix = "give a .npz file holding one float array per input name"
    if not spec.endswith(".npz"):
        raise too_many_inputs(names, "program", fix)
    try:
        npz = np.load(spec, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read inputs from '{spec}': {error}") from None
    with npz:
        missing = [name for name in names if name not in npz.files]
        if missing:
            raise InputError(
                f"'{spec}' holds {', '.join(npz.files) or 'no arrays'} but not the input(s) "
                f"{', '.join(missing)}; {fix}."
            )
        return [npz[name] for name in names], None


def _class_names(path: str | None, data: Samples | None, classes: int) -> tuple[str, ...]:
    """Class names from a file (one per line, as many as the model's logits), or else from the
    data's class folders."""
    if path is None:
        return data.classes if data is not None else ()
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read class names from '{path}': {error}") from None
    names = tuple(line.strip() for line in lines if line.strip())
    if len(names) != classes:
        raise InputError(
            f"'{path}' names {len(names)} classes, but the model gives {classes} logits; "
            "write one class name per line, in the order of the model's outputs."
        )
    return names


def _print_top_k(logits: np.ndarray, k: int, names: tuple[str, ...], data: Samples) -> None:
    """Each sample's k largest logits with their class names, its label and the accuracy."""

    def label(index: int) -> str:
        return f"{index} {names[index]}" if index < len(names) else str(index)

    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    for i, row in enumerate(order):
        best = ", ".join(f"{label(int(c))} ({logits[i, c]:.4g})" for c in row)
        truth = f"  [label {label(int(data.y[i]))}]" if data.y is not None else ""
        print(f"sample {i}: {best}{truth}")
    if data.y is not None:
        hits = float(np.mean(order[:, 0] == data.y))
        print(f"top-1 accuracy {hits:.2%} on {len(data)} samples of {data.source}")


def _save_outputs(path: str, program: Program, outputs: tuple[np.ndarray, ...]) -> None:
    """The outputs as a .npy (one output) or a .npz (by output name), written atomically."""
    from dopant.support.files import write_atomic

    buffer = io.BytesIO()
    if path.endswith(".npz"):
        named = {d.name: v for d, v in zip(program.outputs, outputs, strict=True)}
        np.savez(buffer, **named)  # type: ignore[arg-type]
    elif path.endswith(".npy") and len(outputs) == 1:
        np.save(buffer, outputs[0])
    else:
        count = f"{len(outputs)} outputs" if len(outputs) > 1 else "one output"
        raise InputError(
            f"cannot write the program's {count} to '{path}'; give -o a .npz path (arrays by "
            "output name)" + (" or a .npy path." if len(outputs) == 1 else ".")
        )
    write_atomic(path, buffer.getvalue())


def main_run(
    binary: str | os.PathLike[str],
    input_spec: str | os.PathLike[str],
    trace_path: str | os.PathLike[str] | None = None,
    *,
    output: str | None = None,
    top_k: int = 1,
    classes: str | None = None,
    preprocess: Preprocess | None = None,
    limit: int = 0,
) -> None:
    """`dopant run`: run the binary on the batch of samples `input_spec` names (a SPEC, see
    `compiler.inputs`), print its outputs, each sample's top-k classes (names from `classes`,
    one per line, or the data's class folders) and the accuracy when the data has labels, the
    run's summary and per-layer table; write the outputs to `output` (.npy or .npz) and the
    Chrome trace to `trace_path` if given."""
    from dopant.compiler.inputs import Preprocess
    from dopant.runtime.loader import load
    from dopant.support.files import check_writable, write_atomic

    if top_k < 1:
        raise InputError(f"--top-k must be at least 1, got {top_k}.")
    if output is not None and not output.endswith((".npy", ".npz")):
        raise InputError(f"-o '{output}' must end in .npy (one output) or .npz (by name).")
    if output is not None:
        check_writable(output)  # before the simulation, not after it
    program = load(binary)
    spec = os.fspath(input_spec)
    inputs, data = _read_inputs(program, spec, preprocess or Preprocess(), limit)
    result = program.run(*inputs, trace=trace_path is not None)
    for desc, value in zip(program.outputs, result.outputs, strict=True):
        text = np.array2string(value, threshold=20, precision=4)
        print(f"output '{desc.name}' {list(value.shape)}:\n{text}")
    first = result.outputs[0]
    if data is not None and first.ndim == 2 and first.shape[1] > 1:
        names = _class_names(classes, data, first.shape[1])
        _print_top_k(first, min(top_k, first.shape[1]), names, data)
    print(result.stats.summary())
    print(result.stats.table())
    if result.batch > 1:
        print(
            f"{result.batch} samples, one after another: {result.total_cycles:,} cycles (the "
            "summary and table are of one sample)"
        )
    if output is not None:
        _save_outputs(output, program, result.outputs)
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


def _cmd_run(args: argparse.Namespace) -> None:
    main_run(
        args.binary,
        args.input,
        args.trace,
        output=args.output,
        top_k=args.top_k,
        classes=args.classes,
        preprocess=preprocess_of(args),
        limit=args.limit,
    )


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
    p = command("run", _cmd_run, "run a .dpb binary on the simulated accelerator")
    p.add_argument("binary", help=".dpb file")
    p.add_argument(
        "--input",
        required=True,
        metavar="SPEC",
        help=f"a batch of samples: {SPEC_HELP}; several inputs: a .npz by input name",
    )
    p.add_argument("-o", "--output", help="write the outputs to a .npy (one) or .npz (by name)")
    p.add_argument("--top-k", type=int, default=1, help="classes printed per sample (default 1)")
    p.add_argument("--classes", help="a text file of class names, one per line")
    p.add_argument("--limit", type=int, default=0, help="run only the first N samples")
    p.add_argument("--trace", help="write a Chrome/Perfetto trace of the engines to this file")
    add_data_options(p)

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
