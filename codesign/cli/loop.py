"""`dopant codesign`: a model and a latency budget in, a pruned mixed-precision binary whose
measured latency meets the budget out (`dopant.codesign.codesign`).

    dopant codesign zoo:resnet8 --target edge16 --latency-budget 0.5x --calibration sample \\
        --finetune-epochs 2 --eval sample -o out/

writes out/model.dpb, selected.mlir, quantized.mlir, plan.json, bits.json and report.json, and
prints the rounds (selector budget, predicted, measured) and a per-layer before/after table.
"""

from __future__ import annotations

import argparse

from dopant.codesign.cli.common import (
    add_cache_option,
    check_torch_model_and_folder,
    labelled_data,
)
from dopant.compiler.cli.model_options import add_model_arguments, loaded_model
from dopant.compiler.cli.options import SPEC_HELP, Command, add_data_options, shows_progress


def _check(args: argparse.Namespace) -> None:
    """Every check that needs no work."""
    from dopant.backend.presets import load_target
    from dopant.codesign.budget import LatencyBudget
    from dopant.passes.set_bits import check_bits
    from dopant.support.errors import InputError

    check_torch_model_and_folder(args, "co-design scores channels on the torch model")
    LatencyBudget.parse(args.latency_budget)
    load_target(args.target)
    if args.no_prune and args.no_bits:
        raise InputError("--no-prune and --no-bits together leave nothing to choose; drop one.")
    for w in args.widths:
        check_bits("--widths", w)
    if args.finetune_epochs < 0 or args.qat_epochs < 0 or args.max_rounds < 1:
        raise InputError(
            f"--finetune-epochs and --qat-epochs must be 0 or more and --max-rounds at least 1, "
            f"got {args.finetune_epochs}, {args.qat_epochs} and {args.max_rounds}."
        )


def _widths(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a list of bit widths such as 2,4,8"
        ) from None


def _cmd_codesign(args: argparse.Namespace) -> None:
    import torch

    from dopant.codesign.finish import finetune_float, finetune_integer
    from dopant.codesign.loop import codesign
    from dopant.codesign.tables import report_text
    from dopant.compiler.fakequant import FakeQuantNetwork

    _check(args)
    loaded = loaded_model(args)
    shape = tuple(loaded.example_input.shape[1:])
    calibration = labelled_data(args, args.calibration, "calibration", "co-design", shape)
    evaluation = labelled_data(args, args.eval, "test", "--eval", shape) if args.eval else None
    batches = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in calibration.batches(64)]

    # --finetune-epochs and --qat-epochs train by dopant's recipe (codesign.finish).
    def finetune(model: torch.nn.Module) -> None:
        finetune_float(model, calibration, args.finetune_epochs)

    def qat(network: FakeQuantNetwork) -> None:
        finetune_integer(network, calibration, args.qat_epochs)

    result = codesign(
        loaded.model,
        loaded.example_input,
        target=args.target,
        calibration=calibration.x,
        latency_budget=args.latency_budget,
        prune=not args.no_prune,
        bits=not args.no_bits,
        finetune=finetune if args.finetune_epochs else None,
        qat=qat if args.qat_epochs else None,
        eval_data=(evaluation.x, evaluation.y) if evaluation is not None else None,
        batches=batches,
        method=args.method,
        sensitivity=args.sensitivity,
        widths=args.widths,
        step=args.step,
        max_rounds=args.max_rounds,
        tolerance=args.tolerance,
        cache_dir=args.cache_dir,
        progress=shows_progress(args),
        log=print,
    )
    files = result.save(args.output)
    print(report_text(result))
    print("wrote " + ", ".join(str(path) for path in files.values()))


def register(command: Command) -> None:
    """Add `dopant codesign` to the CLI."""
    p = command(
        "codesign",
        _cmd_codesign,
        "prune and choose bit widths until the measured latency meets a budget",
    )
    add_model_arguments(p, "zoo:NAME or path/to/file.py:factory (the torch model)")
    p.add_argument("--target", default="edge16", help="preset name or TOML file (default edge16)")
    p.add_argument(
        "--latency-budget",
        required=True,
        metavar="BUDGET",
        help="per image: 40000cycles, 80us, 1.5ms, 2000fps, or 0.5x (of the dense W8A8 latency)",
    )
    p.add_argument(
        "--calibration",
        required=True,
        metavar="SPEC",
        help=f"labelled data for calibration, saliency and fine-tuning: {SPEC_HELP}",
    )
    p.add_argument("--eval", metavar="SPEC", help="labelled data to report top-1 on (test split)")
    p.add_argument("--no-prune", action="store_true", help="choose bit widths only")
    p.add_argument("--no-bits", action="store_true", help="prune only (all layers W8A8)")
    p.add_argument(
        "--finetune-epochs",
        type=int,
        default=0,
        metavar="N",
        help="fine-tune the pruned model N epochs on the calibration data (default 0)",
    )
    p.add_argument(
        "--qat-epochs",
        type=int,
        default=0,
        metavar="N",
        help="then train the integer network N epochs (fake-quant, LSQ) on it (default 0)",
    )
    p.add_argument(
        "--method",
        default="sosp-h",
        choices=("magnitude", "taylor", "sosp-h", "sosp-i"),
        help="channel saliency (default sosp-h)",
    )
    p.add_argument(
        "--sensitivity",
        default="hessian",
        choices=("hessian", "loss", "output"),  # codesign.sensitivity.METHODS (imports torch)
        help="bit-width sensitivity: HAWQ's Hessian trace, the measured loss increase, or the "
        "measured layer output error",
    )
    p.add_argument(
        "--widths", type=_widths, default=(2, 4, 8), metavar="W,...", help="widths offered"
    )
    p.add_argument("--step", type=int, help="channel granularity (default: the array width)")
    p.add_argument("--max-rounds", type=int, default=5, help="compile-and-measure rounds (5)")
    p.add_argument(
        "--tolerance", type=float, default=0.02, help="how far under the budget may land (0.02)"
    )
    add_cache_option(p)
    add_data_options(p)
    p.add_argument("-o", "--output", required=True, help="folder for the binary, IR and report")
