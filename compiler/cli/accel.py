"""`dopant run`, `dopant profile`, `dopant asm` and `dopant disasm`: the accelerator commands of
the CLI (the parser lives in `cli.py`)."""

from __future__ import annotations

import argparse

from dopant.compiler.cli.quantize import Command


def _cmd_run(args: argparse.Namespace) -> None:
    from dopant.runtime.stats import main_run

    main_run(args.binary, args.input, args.trace)


def _cmd_profile(args: argparse.Namespace) -> None:
    from dopant.runtime.stats import main_profile

    main_profile(args.binary)


def _cmd_asm(args: argparse.Namespace) -> None:
    from dopant.backend.asm import main_asm

    main_asm(args.input, args.output, args.binary)


def _cmd_disasm(args: argparse.Namespace) -> None:
    from dopant.backend.asm import main_disasm

    main_disasm(args.binary, args.output)


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
    p.add_argument("--input", required=True, help=".npy (one input) or .npz (by input name)")
    p.add_argument("--trace", help="write a Chrome/Perfetto trace of the engines to this file")

    p = command("profile", _cmd_profile, "per-layer latency of a .dpb binary (no inputs needed)")
    p.add_argument("binary", help=".dpb file")

    p = command("disasm", _cmd_disasm, "print the assembly of a .dpb binary")
    p.add_argument("binary", help=".dpb file")
    p.add_argument("-o", "--output", help="output .s file (default: standard output)")

    p = command("asm", _cmd_asm, "assemble text into the code of a .dpb binary")
    p.add_argument("input", help="assembly file, or - for standard input")
    p.add_argument("--binary", required=True, help="the .dpb whose code is replaced")
    p.add_argument("-o", "--output", required=True, help="the new .dpb file")
