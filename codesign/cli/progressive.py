"""`dopant progressive`: compress a model stage by stage along a schedule, each stage started
from the last and fine-tuned as an integer network (`dopant.codesign.progressive`).

    dopant progressive zoo:resnet8 --schedule w8a8,w4a4,w2a4 --epochs-per-stage 2 -o out/

prints the per-stage table (top-1 as each stage began and after its fine-tune, the drop from
the stage before, MACs, measured cycles, training time) and writes out/quantized.mlir,
out/model.dpb and out/stages.json, and each finished stage in out/stage-K/ (`--resume`
continues from them). `--baseline` also trains the one-jump baseline (the last stage alone for
the same total epochs, in out/one-jump/) and compares.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from dopant.codesign.cli.common import check_torch_model_and_folder, labelled_data
from dopant.compiler.cli.model_options import add_model_arguments, loaded_model
from dopant.compiler.cli.options import (
    SPEC_HELP,
    Command,
    add_data_options,
    preprocess_of,
    shows_progress,
)

if TYPE_CHECKING:
    from dopant.codesign.progressive import ProgressiveResult


def _check(args: argparse.Namespace) -> None:
    """Every check that needs no work: the model arguments and the output folder, the target,
    the schedule against it and the numbers."""
    from dopant.backend.presets import load_target
    from dopant.codesign.progressive import parse_schedule
    from dopant.support.errors import InputError

    check_torch_model_and_folder(args, "progressive compression trains the torch model")
    parse_schedule(args.schedule, load_target(args.target), first_last_bits=args.first_last_bits)
    if args.epochs_per_stage < 0 or args.lr <= 0 or args.batch_size < 1 or args.round_to < 1:
        raise InputError(
            "--epochs-per-stage must be 0 or more, --lr positive, --batch-size and --round-to "
            f"at least 1; got {args.epochs_per_stage}, {args.lr}, {args.batch_size} and "
            f"{args.round_to}."
        )


def _comparison(result: ProgressiveResult, baseline: ProgressiveResult) -> str:
    """One line per arm: epochs, final top-1 and cycles of the progressive run and the one
    jump."""
    last = result.records[-1]
    epochs = sum(r.epochs for r in result.records)
    rows = [
        (f"progressive ({len(result.records)} stages)", epochs, result),
        (f"one jump to {last.stage}", baseline.records[0].epochs, baseline),
    ]
    lines = [f"{'':<30} {'epochs':>6} {'top-1':>8} {'cycles':>10}"]
    for label, count, arm in rows:
        shown = "-" if arm.top1 is None else f"{arm.top1:.2%}"
        lines.append(f"{label:<30} {count:>6} {shown:>8} {arm.cycles:>10,}")
    return "\n".join(lines)


def _cmd_progressive(args: argparse.Namespace) -> None:
    from pathlib import Path

    from dopant.codesign.progressive import one_jump, progressive
    from dopant.compiler.inputs import load_samples

    _check(args)
    loaded = loaded_model(args)
    shape = tuple(loaded.example_input.shape[1:])
    train = labelled_data(args, args.train, "calibration", "training", shape)
    evaluation = labelled_data(args, args.eval, "test", "--eval", shape) if args.eval else None
    calibration = None
    if args.calibration:
        preprocess, show = preprocess_of(args), shows_progress(args)
        calibration = load_samples(args.calibration, shape, preprocess=preprocess, show=show).x
    options = {
        "train_data": (train.x, train.y),
        "calibration": calibration,
        "eval_data": None if evaluation is None else (evaluation.x, evaluation.y),
        "target": args.target,
        "epochs_per_stage": args.epochs_per_stage,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "weight_clip": args.weight_clip,
        "calibration_method": args.calibration_method,
        "first_last_bits": args.first_last_bits,
        "prune_method": args.prune_method,
        "round_to": args.round_to,
        "resume": args.resume,
    }
    out = Path(args.output)
    result = progressive(
        loaded.model,
        loaded.example_input,
        schedule=args.schedule,
        out_dir=out,
        log=print,
        **options,
    )
    extra = {}
    print(result.table())
    if args.baseline:
        print(f"\none-jump baseline: {result.records[-1].stage} from the float model")
        baseline = one_jump(
            loaded.model,
            loaded.example_input,
            schedule=args.schedule,
            out_dir=out / "one-jump",
            log=print,
            **options,
        )
        extra["one_jump"] = baseline.records[0].to_dict()
        print(_comparison(result, baseline))
    files = result.save(out, extra)
    print("wrote " + ", ".join(str(path) for path in files.values()))


def register(command: Command) -> None:
    """Add `dopant progressive` to the CLI."""
    p = command(
        "progressive",
        _cmd_progressive,
        "compress stage by stage (e.g. w8a8,w4a8,w4a4), each stage fine-tuned from the last",
    )
    add_model_arguments(p, "zoo:NAME or path/to/file.py:factory (the torch model)")
    p.add_argument(
        "--schedule",
        required=True,
        metavar="STAGES",
        help="stages separated by commas, each wXaY, METRIC=FRACTION (macs=0.5: half the dense "
        "MACs removed by then) or both joined by '+'; widths only go down, e.g. "
        "w8a8,w4a8,w4a4+macs=0.3,w2a4",
    )
    p.add_argument(
        "--epochs-per-stage", type=int, default=1, metavar="N", help="QAT epochs per stage (1)"
    )
    p.add_argument("--target", default="edge16", help="preset name or TOML file (default edge16)")
    p.add_argument(
        "--train",
        default="sample",
        metavar="SPEC",
        help=f"labelled training data (default: the 512 shipped images): {SPEC_HELP}",
    )
    p.add_argument(
        "--eval",
        default="sample",
        metavar="SPEC",
        help="labelled data for each stage's top-1 (test split; default the 1000 shipped test "
        "images); '' for none",
    )
    p.add_argument(
        "--calibration", metavar="SPEC", help="calibration images (default: the training data)"
    )
    p.add_argument(
        "--calibration-method",
        default="mse",
        choices=("minmax", "percentile", "mse"),
        help="first range of an activation whose width changes (default mse)",
    )
    p.add_argument(
        "--weight-clip",
        default="mse",
        choices=("minmax", "mse"),
        help="first step of a layer whose weight width changes (default mse)",
    )
    p.add_argument(
        "--first-last-bits",
        type=int,
        default=0,
        choices=(0, 2, 4, 8),
        help="bits of the first and last layer in every stage (0: as the others)",
    )
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (1e-3)")
    p.add_argument("--batch-size", type=int, default=64, help="training batch (64)")
    p.add_argument("--seed", type=int, default=0, help="shuffling seed of stage 1 (0)")
    p.add_argument(
        "--prune-method",
        default="sosp-h",
        choices=("magnitude", "taylor", "sosp-h", "sosp-i"),
        help="channel saliency of pruning stages (default sosp-h)",
    )
    p.add_argument("--round-to", type=int, default=1, help="keep channel counts multiples of it")
    p.add_argument(
        "--resume", action="store_true", help="continue from the stages saved in -o by this run"
    )
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also train the last stage alone for the same total epochs, and compare",
    )
    add_data_options(p)
    p.add_argument("-o", "--output", required=True, help="folder for the binary, IR and stages")
