"""The structured-pruning commands, `dopant groups` and `dopant prune`, and the main job.

    dopant groups zoo:resnet8
    dopant prune zoo:resnet8 --method sosp-h --target macs=0.5 --calibration sample \\
        -o pruned.mlir --plan-out plan.json
    dopant prune net.mlir --plan plan.json -o pruned.mlir

Handlers import torch and xDSL when they run, so `dopant --help` stays quick. Every option and
output path is checked before the model is read.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from dopant.compiler.cli.model_options import (
    add_model_arguments,
    check_model_arguments,
    imported_module,
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
    from collections.abc import Iterator

    import torch
    from xdsl.dialects.builtin import ModuleOp

    from dopant.codesign.select import Target
    from dopant.passes._prune_channels.plan import PruningPlan

METHODS = ("magnitude", "taylor", "sosp-h", "sosp-i")
# The options of a saliency prune, refused with --plan (so they default to None: None is "not
# given"), and the defaults they then take.
SALIENCY_OPTIONS = (
    *(("--target", "target"), ("--round-to", "round_to"), ("--hessian", "hessian")),
    *(("--calibration", "calibration"), ("--batches", "batches"), ("--batch-size", "batch_size")),
    *(("--mean", "mean"), ("--std", "std")),
)
DEFAULTS = {"round_to": 1, "hessian": "exact", "batches": 0, "batch_size": 64}
MODEL_HELP = "zoo:NAME, path/to/file.py:factory, or a .mlir file (- for standard input)"


def _is_ir(args: argparse.Namespace) -> bool:
    return bool(args.model.endswith(".mlir") or args.model == "-")


def _network(args: argparse.Namespace) -> ModuleOp:
    """The IR file `args.model` names, or the model imported to float `qnn` IR."""
    from dopant.compiler.irio import read_ir

    return read_ir(args.model) if _is_ir(args) else imported_module(args)


def _cmd_groups(args: argparse.Namespace) -> None:
    from dopant.codesign.tables import groups_table
    from dopant.passes._prune_channels.groups import coupling_groups

    check_model_arguments(args)
    print(groups_table(coupling_groups(_network(args))))


def _check_prune_options(args: argparse.Namespace) -> Target | None:
    """Every check that needs no work; the target of a saliency prune (None with --plan)."""
    from dopant.codesign.select import Target
    from dopant.support.errors import InputError
    from dopant.support.files import check_writable

    check_model_arguments(args)  # -o, --input-shape, --weights
    if args.plan_out:
        check_writable(args.plan_out)
    if args.plan:
        given = [option for option, name in SALIENCY_OPTIONS if getattr(args, name) is not None]
        if given:
            listed = given[0] if len(given) == 1 else f"{', '.join(given[:-1])} and {given[-1]}"
            raise InputError(
                f"{listed} {'goes' if len(given) == 1 else 'go'} with --method (a saliency "
                "prune), not with --plan, which already says which channels to keep."
            )
        return None
    for _, name in SALIENCY_OPTIONS:  # given by the user or not: now their defaults
        if getattr(args, name) is None:
            setattr(args, name, DEFAULTS.get(name))
    if args.round_to < 1:
        raise InputError(f"--round-to must be 1 (no rounding) or more, got {args.round_to}.")
    if args.batches < 0 or args.batch_size < 1:
        raise InputError(
            f"--batches must be 0 (all) or more and --batch-size at least 1, got "
            f"{args.batches} and {args.batch_size}."
        )
    method = args.method or "sosp-h"
    if _is_ir(args):
        raise InputError(
            f"saliency is computed on the torch model, but '{args.model}' is IR; give the model "
            "(zoo:NAME or file.py:factory), or prune the IR with --plan plan.json."
        )
    if args.target is None:
        raise InputError(
            "say how much to prune: add --target macs=FRACTION or params=FRACTION (e.g. "
            "--target macs=0.5 removes half the MACs), or give a --plan."
        )
    if method != "magnitude" and not args.calibration:
        raise InputError(
            f"saliency '{method}' needs labelled data: add --calibration sample (the shipped "
            "Fashion-MNIST images) or --calibration SPEC with labels (a .npz with 'x' and 'y', "
            "or a folder of class subfolders); --method magnitude needs none."
        )
    return Target.parse(args.target)


def _batches(
    args: argparse.Namespace, module: ModuleOp
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, labels) batches of the --calibration data, at most --batches of them."""
    import torch

    from dopant.compiler.inputs import load_samples, model_sample_shape
    from dopant.support.errors import InputError

    data = load_samples(
        args.calibration,
        model_sample_shape(module, "to compute saliency"),
        split="calibration",
        preprocess=preprocess_of(args),
        show=shows_progress(args),
    )
    if data.y is None:
        raise InputError(
            f"{data.source} has no labels, and saliency needs them (the loss is computed on "
            "them); give a .npz with images 'x' and int labels 'y', or a folder of class "
            "subfolders."
        )
    count = -(-len(data) // args.batch_size)
    count = min(count, args.batches) if args.batches else count
    for i in range(count):
        part = slice(i * args.batch_size, (i + 1) * args.batch_size)
        yield torch.from_numpy(data.x[part]), torch.from_numpy(data.y[part])


def _saliency_plan(args: argparse.Namespace, target: Target) -> tuple[ModuleOp, PruningPlan]:
    """The imported model and the plan that meets `target` by `args.method`'s saliency; a
    target out of reach and sosp-i over too many channels fail before the data is read."""
    from dopant.codesign.scores import group_saliency
    from dopant.codesign.select import check_reachable, plan_for
    from dopant.dialects.qnn.base import forward
    from dopant.passes._prune_channels.costs import layer_shapes
    from dopant.passes._prune_channels.groups import coupling_groups

    method = args.method or "sosp-h"
    loaded = loaded_model(args)
    module = imported_module(args, loaded)
    groups = coupling_groups(module)
    layers = layer_shapes(forward(module, "to prune"))
    check_reachable(groups, layers, target, round_to=args.round_to)
    if method == "sosp-i":
        _check_sosp_i(sum(g.size for g in groups if g.prunable))
    batches = list(_batches(args, module)) if args.calibration else []
    scores = group_saliency(
        loaded.model,
        groups,
        batches,
        method,
        hessian=args.hessian,
        progress=shows_progress(args),
    )
    return module, plan_for(groups, layers, scores, target, round_to=args.round_to)


def _check_sosp_i(structures: int) -> None:
    """What `group_saliency` refuses for sosp-i, said before the calibration data is loaded."""
    from dopant.codesign.scores import MAX_STRUCTURES, sosp_i_mib
    from dopant.support.errors import InputError

    if structures > MAX_STRUCTURES:
        raise InputError(
            f"--method sosp-i keeps an S×S matrix over the S = {structures} prunable channels "
            f"of this network, about {sosp_i_mib(structures):.0f} MiB (it takes at most "
            f"{MAX_STRUCTURES} channels); use --method sosp-h."
        )


def _cmd_prune(args: argparse.Namespace) -> None:
    from dopant.codesign.tables import layers_table
    from dopant.compiler.irio import write_ir
    from dopant.dialects.qnn.base import forward
    from dopant.passes._prune_channels.costs import layer_shapes
    from dopant.passes._prune_channels.plan import PruningPlan
    from dopant.passes.prune_channels import prune

    target = _check_prune_options(args)
    source = "the saliency plan"
    if target is None:
        plan, source = PruningPlan.load(args.plan), args.plan
        module = _network(args)
    else:
        module, plan = _saliency_plan(args, target)
    before = layer_shapes(forward(module, "to prune"))
    prune(module, plan, source)
    after = layer_shapes(forward(module, "to prune"))
    write_ir(module, args.output)
    if args.plan_out:
        plan.save(args.plan_out)
    to_stdout = bool(args.output) and args.output != "-"
    print(layers_table(before, after), file=sys.stdout if to_stdout else sys.stderr)


def _cmd_demo(args: argparse.Namespace) -> None:
    from dopant.codesign.demo import demo

    demo(args.model)


def register(command: Command) -> None:
    """Add the main job (`dopant demo`) and the pruning commands to the CLI."""
    p = command("demo", _cmd_demo, "the main job on an embedded default model")
    p.add_argument(
        "--model", default="zoo:resnet8", help="trained model: zoo:resnet8 or zoo:lenet5"
    )
    p = command("groups", _cmd_groups, "list a network's coupling groups of prunable channels")
    add_model_arguments(p, MODEL_HELP)

    p = command(
        "prune",
        _cmd_prune,
        "remove whole channels: the lowest-saliency ones down to a target, or a saved plan's",
    )
    add_model_arguments(p, MODEL_HELP)
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--method",
        choices=METHODS,
        help="saliency that ranks the channels (default sosp-h); needs the torch model",
    )
    how.add_argument("--plan", metavar="FILE", help="a plan.json (from --plan-out) to apply")
    p.add_argument(
        "--target",
        metavar="METRIC=FRACTION",
        help="how much to remove with --method: macs=0.5 (half the MACs) or params=0.3",
    )
    p.add_argument(
        "--round-to",
        type=int,
        metavar="N",
        help="keep channel counts at multiples of N (e.g. the array width) where a group has "
        "N or more channels",
    )
    p.add_argument(
        "--hessian",
        choices=("exact", "gauss-newton"),
        help="the curvature sosp-h uses (default exact)",
    )
    p.add_argument(
        "--calibration",
        metavar="SPEC",
        help=f"labelled data for the saliency: {SPEC_HELP}",
    )
    p.add_argument("--batches", type=int, help="use only the first N batches (default 0: all)")
    p.add_argument("--batch-size", type=int, help="samples per batch (default 64)")
    add_data_options(p)
    p.add_argument("--plan-out", metavar="FILE", help="save the plan as JSON")
    p.add_argument("-o", "--output", help="pruned .mlir file (default: standard output)")
