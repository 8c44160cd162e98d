"""What the co-design commands share: the checks of the model argument and of the output
folder, labelled data from a SPEC, and the options for Ray and the latency-table cache."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from dopant.compiler.cli.model_options import check_model_arguments
from dopant.compiler.cli.options import preprocess_of, shows_progress

if TYPE_CHECKING:
    from dopant.compiler.models.datasets import Dataset


def check_torch_model_and_folder(args: argparse.Namespace, doing: str) -> None:
    """The model arguments (a torch model, not IR: `doing` says why, as in "co-design scores
    channels on the torch model") and `-o`, a folder, created if missing."""
    from dopant.support.errors import InputError
    from dopant.support.files import make_folder

    check_model_arguments(argparse.Namespace(**{**vars(args), "output": None}))  # -o: a folder
    if args.model.endswith(".mlir") or args.model == "-":
        raise InputError(
            f"{doing}, but '{args.model}' is IR; give the model (zoo:NAME or file.py:factory)."
        )
    make_folder(args.output)


def labelled_data(
    args: argparse.Namespace, spec: str, split: str, what: str, shape: tuple[int, ...]
) -> Dataset:
    """The images and labels `spec` names (`split` of `sample`), preprocessed by `args`' data
    options; InputError if it has no labels, which `what` needs."""
    from dopant.compiler.inputs import load_samples
    from dopant.compiler.models.datasets import Dataset
    from dopant.support.errors import InputError

    data = load_samples(
        spec, shape, split=split, preprocess=preprocess_of(args), show=shows_progress(args)
    )
    if data.y is None:
        raise InputError(
            f"{data.source} has no labels, and {what} needs them; give a .npz with images 'x' "
            "and int labels 'y', a folder of class subfolders, or 'sample'."
        )
    return Dataset(data.x, data.y)


def add_ray_options(p: argparse.ArgumentParser, tasks: str) -> None:
    """`--workers` and `--address`: the command's `tasks` (e.g. "stages") as Ray tasks
    (`codesign.distributed`)."""
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help=f"{tasks} in parallel on a local Ray runtime of N workers (default 1: in this "
        "process, no Ray)",
    )
    p.add_argument(
        "--address",
        help="join a running Ray cluster instead: ray://HOST:10001, HOST:6379 or auto",
    )


def add_cache_option(p: argparse.ArgumentParser) -> None:
    """`--cache-dir`: where latency tables are kept between runs."""
    p.add_argument("--cache-dir", help="latency-table cache (default ~/.cache/dopant/latency)")
