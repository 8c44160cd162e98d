"""`dopant ptq-kd`: quantize a model and distill it stage by stage from its float self, the
stages in parallel on Ray (`dopant.codesign.ptqkd`).

    dopant ptq-kd zoo:resnet8 --bits w4a4 --stages 3 --workers 3 --calibration sample \\
        --eval sample -o out/

prints the per-stage table (and with --baseline, the whole network trained at once with the same
data and epochs) and writes out/quantized.mlir, out/model.dpb and out/stages.json.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from dopant.codesign.cli.common import add_ray_options
from dopant.compiler.cli.model_options import (
    add_model_arguments,
    check_model_arguments,
    loaded_model,
)
from dopant.compiler.cli.options import (
    SPEC_HELP,
    Command,
    add_data_options,
    preprocess_of,
    shows_progress,
)

if TYPE_CHECKING:
    from dopant.compiler.inputs.files import Samples


def _stages(text: str) -> int | str:
    """`--stages`: a number of stages, or the module paths that end each stage but the last."""
    return int(text) if text.strip().isdigit() else text


def _check(args: argparse.Namespace) -> None:
    """Every check that needs no work (Ray's address included: it must answer now)."""
    from dopant.backend.presets import load_target
    from dopant.codesign.distributed import check_workers
    from dopant.codesign.ptqkd import parse_bits
    from dopant.support.errors import InputError
    from dopant.support.files import make_folder

    check_model_arguments(argparse.Namespace(**{**vars(args), "output": None}))  # -o: a folder
    if args.model.endswith(".mlir") or args.model == "-":
        raise InputError(
            f"the teacher of ptq-kd is the float torch model, but '{args.model}' is IR; give "
            "the model (zoo:NAME or file.py:factory)."
        )
    parse_bits(args.bits)
    load_target(args.target)
    if args.epochs < 0 or args.limit < 0 or args.batch_size < 1 or not args.lr > 0:
        raise InputError(
            f"--epochs and --limit must be 0 or more, --batch-size and --lr positive; got "
            f"{args.epochs}, {args.limit}, {args.batch_size} and {args.lr}."
        )
    if isinstance(args.stages, int) and args.stages < 1:
        raise InputError(f"--stages must be at least 1, got {args.stages}.")
    check_workers(args.workers, args.address)
    make_folder(args.output)


def _cmd_ptq_kd(args: argparse.Namespace) -> None:
    from dopant.codesign.ptqkd import ptq_kd, whole_network_kd
    from dopant.compiler.inputs import load_samples
    from dopant.support.errors import InputError

    _check(args)
    loaded = loaded_model(args)
    shape = tuple(loaded.example_input.shape[1:])
    preprocess, show = preprocess_of(args), shows_progress(args)

    def samples(spec: str, split: str = "calibration") -> Samples:
        return load_samples(
            spec, shape, split=split, preprocess=preprocess, limit=args.limit, show=show
        )

    evaluation = None
    if args.eval:
        data = samples(args.eval, "test")
        if data.y is None:
            raise InputError(
                f"{data.source} has no labels, and --eval needs them; give a .npz with images "
                "'x' and int labels 'y', a folder of class subfolders, or 'sample'."
            )
        evaluation = (data.x, data.y)
    calibration = samples(args.calibration).x
    options = {
        "calibration": calibration,
        "train_images": samples(args.train).x if args.train else calibration,
        "bits": args.bits,
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "workers": args.workers,
        "address": args.address,
        "target": args.target,
        "eval_data": evaluation,
        "method": args.method,
        "log": print if show else None,
    }
    result = ptq_kd(loaded.model, loaded.example_input, stages=args.stages, **options)
    if args.baseline:
        result.baseline = whole_network_kd(loaded.model, loaded.example_input, **options)
    files = result.save(args.output)
    print(result.table())
    print("wrote " + ", ".join(str(path) for path in files.values()))


def register(command: Command) -> None:
    """Add `dopant ptq-kd` to the CLI."""
    p = command(
        "ptq-kd",
        _cmd_ptq_kd,
        "quantize, then distill stage by stage from the float model (stages in parallel on Ray)",
    )
    add_model_arguments(p, "zoo:NAME or path/to/file.py:factory (the float teacher)")
    p.add_argument("--bits", default="w4a4", help="weight and activation widths (default w4a4)")
    p.add_argument(
        "--stages",
        type=_stages,
        metavar="K|PATH,...",
        help="a number of stages (cut after whole modules, balanced MACs) or the module paths "
        "ending each stage but the last, e.g. layer1,layer2 (default: the residual stages)",
    )
    p.add_argument("--epochs", type=int, default=2, help="training epochs of each stage (2)")
    p.add_argument(
        "--lr",
        type=float,
        default=0.01,
        help="Adam's update as a fraction of each parameter's scale, e.g. of a weight's "
        "quantization step (0.01)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="training batch (64)")
    p.add_argument("--seed", type=int, default=0, help="shuffling seed of stage i: seed + i (0)")
    add_ray_options(p, "stages")
    p.add_argument("--target", default="edge16", help="preset name or TOML file (default edge16)")
    p.add_argument(
        "--calibration", required=True, metavar="SPEC", help=f"images to calibrate on: {SPEC_HELP}"
    )
    p.add_argument(
        "--train", metavar="SPEC", help="images to train the stages on (default: --calibration)"
    )
    p.add_argument("--eval", metavar="SPEC", help="labelled data to report top-1 on (test split)")
    p.add_argument(
        "--limit",
        type=int,
        default=0,
        metavar="N",
        help="use the first N images of each data set (default 0: all)",
    )
    p.add_argument(
        "--method",
        default="mse",
        choices=("minmax", "percentile", "mse"),
        help="calibration: the range of each activation (default mse)",
    )
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also train the whole network at once with the same data and epochs, and compare",
    )
    add_data_options(p)
    p.add_argument("-o", "--output", required=True, help="folder for the binary, IR and report")
