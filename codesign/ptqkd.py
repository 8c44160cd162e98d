"""Stage-by-stage post-training quantization with distillation (the seed's progressive PTQ-KD;
DCQ, Elthakeb et al., ICML 2020), stages run in parallel on Ray.

    result = ptq_kd(model, x[:1], calibration=x, train_images=x, bits="w4a4", stages=3,
                    workers=3, eval_data=(x_test, y_test))
    print(result.table()); result.save("out/")

The stages:
    quantize   import the model, calibrate and quantize it at `bits` (plain PTQ), and build its
               fake-quant network (`compiler.fakequant`) from the quantized IR's text
    cut        the network is cut into stages at module paths (`_ptqkd.stages`): the residual
               stages by default (`layer1`, `layer2`, ... of a ResNet, the last one joined by the
               head), K stages of balanced MACs for `stages=K`, or the paths given; each cut is
               checked to hand one tensor on and to be the torch module's own output
    teacher    the float model's outputs at the cuts on the training images (forward hooks)
    train      each stage, apart from the others, learns to map the teacher's input feature
               (quantized at the cut's frozen step) to the teacher's output feature: MSE on the
               dequantized output, Adam on the stage's weights, biases and steps (LSQ), each
               at `lr` of its own scale, for `epochs` passes, the best epoch kept; the stages
               run as tasks (`codesign.distributed.run_tasks`), one per Ray worker or in this
               process, with the same results either way
    stitch     the trained parameters are loaded into one network and exported as integer IR;
               op paths are kept, so it compiles for `target` like any quantized network, and
               the binary is checked bit for bit against the integer reference
    evaluate   per stage, the MSE with the teacher's input before and after training beside the
               MSE when the stages run on each other's outputs (plain PTQ and stitched): the gap
               between the two is what training stages apart costs; top-1 and the logits' MSE on
               `eval_data` for the float teacher, plain PTQ and the stitched network

`whole_network_kd` is the baseline: the same recipe on one stage, the whole network trained at
once against the teacher's logits, with the same data and epochs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import Tensor, nn
from xdsl.dialects.builtin import ModuleOp

from dopant.backend.presets import load_target
from dopant.backend.target import AccelConfig
from dopant.codesign import distributed
from dopant.codesign._ptqkd.stages import (
    Cut,
    balanced_cuts,
    block_cuts,
    module_cut,
    plan_stages,
    residual_stages,
)
from dopant.codesign._ptqkd.teacher import disagreements, features
from dopant.codesign._ptqkd.train import StageTask, stitch, stitched_errors, train_stage
from dopant.codesign.finish import check_bit_exact
from dopant.codesign.ptqkd_result import PtqKdResult, StageReport
from dopant.compiler.driver import (
    CANONICAL_PIPELINE,
    compile_module,
    quantize_network,
    quantize_pass,
)
from dopant.compiler.evaluate import BatchedRunner, top1
from dopant.compiler.fakequant import FakeQuantNetwork
from dopant.compiler.frontend import import_model
from dopant.compiler.inputs.batches import checked_labels, checked_samples
from dopant.compiler.irio import ir_text, parse_ir
from dopant.compiler.pipeline import run_pipeline
from dopant.dialects.qnn.attrs import LAYER_WIDTHS
from dopant.support.errors import InputError

BIT_EXACT_IMAGES = 16  # calibration images the final binary is checked on, bit for bit
CHECK_IMAGES = 2  # images the torch features are compared with the float IR's on
_BITS = re.compile(r"w(?P<w>\d+)a(?P<a>\d+)")

Stages = int | str | Sequence[str] | None


def parse_bits(bits: str) -> tuple[int, int]:
    """(weight bits, activation bits) of `w4a4`; InputError for another form or width."""
    match = _BITS.fullmatch(bits.strip().lower()) if isinstance(bits, str) else None
    widths = (int(match["w"]), int(match["a"])) if match else None
    if widths is None or not set(widths) <= set(LAYER_WIDTHS):
        raise InputError(
            f"bits '{bits}' is not wXaY with X and Y in {', '.join(map(str, LAYER_WIDTHS))} "
            "(weights, then activations), e.g. w4a4 or w4a8."
        )
    return widths


def ptq_kd(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Tensor],
    *,
    calibration: Any,
    train_images: Any,
    bits: str = "w4a4",
    stages: Stages = None,
    epochs: int = 2,
    lr: float = 0.01,
    batch_size: int = 64,
    seed: int = 0,
    workers: int = 1,
    address: str | None = None,
    target: str | AccelConfig = "edge16",
    eval_data: tuple[np.ndarray, np.ndarray] | None = None,
    method: str = "mse",
    weight_clip: str = "mse",
    log: Callable[[str], None] | None = None,
) -> PtqKdResult:
    """Quantize `model` at `bits` and distill it stage by stage from itself (module docstring);
    `model` is not changed.

    `calibration`, `train_images`: images (N, C, H, W) as arrays or tensors, to calibrate on and
    to train the stages on. `stages`: None (the residual stages), an int K (K stages of balanced
    MACs, cut after whole modules, the coarsest that give enough cuts), or the module paths that
    end each stage but the last (a list, or one string separated by commas). `epochs`, `lr`,
    `batch_size`, `seed`: the training recipe of every stage (Adam, every parameter moving by
    about `lr` of its own scale per update: `_ptqkd.train.parameter_groups`; stage i shuffles
    with seed + i). `workers`, `address`: where the stages run (`codesign.distributed.run_tasks`).
    `method`, `weight_clip`: the calibration and weight clipping of the quantize pass.
    `eval_data` = (images, labels) adds top-1 and the logits' MSE on it.

    InputError before any work for bad options, an unreachable Ray `address` or Ray missing
    when needed; then for a stage boundary that is not a module path of `model`, that cuts a
    residual connection or whose torch output is not the value the quantized network hands on
    there, each naming the path.
    """
    say = log or (lambda _: None)
    weight_bits, act_bits = parse_bits(bits)
    quantize: dict[str, Any] = {
        "weight_bits": weight_bits,
        "act_bits": act_bits,
        "weight_clip": weight_clip,
    }
    quantize_pass(quantize)  # checks the options before any work
    _check_recipe(epochs, lr, batch_size, stages)
    distributed.check_workers(workers, address)
    config = target if isinstance(target, AccelConfig) else load_target(target)
    example = example_inputs if isinstance(example_inputs, Tensor) else example_inputs[0]
    sample = tuple(example.shape[1:])
    images = _images(calibration, sample, "calibration")
    train = _images(train_images, sample, "train_images")
    if eval_data is not None:
        x = _images(eval_data[0], sample, "the eval_data images")
        eval_data = (x, checked_labels(np.asarray(eval_data[1]), len(x), "eval_data"))
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal clock
        seconds[phase] = time.perf_counter() - clock
        clock = time.perf_counter()

    canonical = import_model(model, example_inputs)
    run_pipeline(canonical, CANONICAL_PIPELINE)
    ptq = quantize_network(canonical, images, method=method, **quantize)
    text = ir_text(ptq)
    network = FakeQuantNetwork(parse_ir(text))  # what every task builds from the same text
    lap("quantize")

    cuts = stage_cuts(model, canonical, network, stages, images[:CHECK_IMAGES])
    plan = plan_stages(network, cuts)
    say(
        f"{len(plan)} stage(s): "
        + ", ".join(f"{s.begins or 'input'}-{s.ends or 'output'}" for s in plan)
    )
    teacher = features(model, [c.path for c in cuts], train)
    inputs, targets = [train, *teacher[:-1]], teacher
    lap("teacher")

    tasks = [
        StageTask(text, stage, inputs[i], targets[i], epochs, lr, batch_size, seed)
        for i, stage in enumerate(plan)
    ]
    where = f"{workers} Ray workers" if workers > 1 else "this process"
    where = f"Ray at {address}" if address else where
    say(f"training {len(tasks)} stage(s) for {epochs} epoch(s) on {len(train)} images in {where}")
    results = distributed.run_tasks(train_stage, tasks, workers=workers, address=address)
    lap("train")

    stitched = stitch(text, results)
    quantized = stitched.export()
    compiled = compile_module(quantized, target=config)
    check_bit_exact(compiled, quantized, images[:BIT_EXACT_IMAGES])
    lap("stitch")

    before = stitched_errors(network, plan, train, targets)
    after = stitched_errors(stitched, plan, train, targets)
    reports = [
        StageReport(s, r.loss_before, r.loss_after, ptq_error, kd_error, r.epoch_losses, r.seconds)
        for s, r, ptq_error, kd_error in zip(plan, results, before, after, strict=True)
    ]
    result = PtqKdResult(
        f"w{weight_bits}a{act_bits}",
        reports,
        quantized,
        ptq,
        compiled,
        workers,
        address,
        {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed, "images": len(train)},
    )
    result.accuracy, result.logits_mse = _evaluate(model, ptq, quantized, result.label, eval_data)
    lap("evaluate")
    result.seconds = seconds
    return result


def whole_network_kd(
    model: nn.Module, example_inputs: Tensor | Sequence[Tensor], **options: Any
) -> PtqKdResult:
    """The baseline of `ptq_kd`: the whole network as one stage, trained at once against the
    teacher's logits with the same data, epochs and recipe (`options` are `ptq_kd`'s, without
    `stages`)."""
    if "stages" in options:
        raise InputError("whole_network_kd trains the network as one stage; leave out stages.")
    return ptq_kd(model, example_inputs, stages=1, **options)


def _check_recipe(epochs: int, lr: float, batch_size: int, stages: Stages) -> None:
    if not isinstance(epochs, int) or epochs < 0:
        raise InputError(f"epochs must be 0 or more, got {epochs!r}.")
    if not lr > 0:
        raise InputError(f"the learning rate must be positive, got {lr!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"the batch size must be positive, got {batch_size!r}.")
    if isinstance(stages, int) and not isinstance(stages, bool) and stages < 1:
        raise InputError(f"stages must be at least 1, got {stages}.")


def _images(data: Any, sample: tuple[int, ...], what: str) -> np.ndarray:
    """`data` (an array or tensor of samples) as float32, checked against the model's input."""
    if isinstance(data, Tensor):
        data = data.detach().cpu().numpy()
    if not isinstance(data, np.ndarray):
        raise InputError(
            f"{what} must be an array or tensor of samples, got {type(data).__name__}."
        )
    return checked_samples(data, sample, what)


def stage_cuts(
    model: nn.Module,
    canonical: ModuleOp,
    network: FakeQuantNetwork,
    stages: Stages,
    images: np.ndarray,
) -> list[Cut]:
    """The cuts `stages` asks for (see `ptq_kd`) in `network`, the fake-quant network of
    `model` quantized from float IR `canonical`; each is checked against the torch model on
    `images` (a few samples). InputError naming the path of a bad boundary."""
    program = network.program
    if isinstance(stages, int):
        if stages == 1:
            return []
        candidates = block_cuts(model, program)
        bad = disagreements(model, canonical, program, candidates, images)
        candidates = [c for c in candidates if c.path not in bad]
        for depth in sorted({c.depth for c in candidates}):
            pool = [c for c in candidates if c.depth <= depth]
            if len(pool) >= stages - 1:
                return balanced_cuts(program, pool, stages - 1)
        names = ", ".join(c.path for c in candidates) or "none"
        raise InputError(
            f"{stages} stages need {stages - 1} cuts, but the network has only "
            f"{len(candidates)} places after a whole module where one tensor crosses: {names}."
        )
    if stages is None:
        residual = residual_stages(model, program)
        if len(residual) < 2:
            return stage_cuts(model, canonical, network, 2, images)
        paths: Sequence[str] = residual[:-1]
    else:
        paths = [p.strip() for p in stages.split(",")] if isinstance(stages, str) else stages
    cuts = [module_cut(model, program, path) for path in paths]
    for path, reason in disagreements(model, canonical, program, cuts, images).items():
        raise InputError(f"stage boundary '{path}': {reason}; end the stage after a whole block.")
    return cuts


def _evaluate(
    model: nn.Module,
    ptq: ModuleOp,
    quantized: ModuleOp,
    label_kd: str,
    eval_data: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Top-1 and the logits' MSE against the float teacher on `eval_data`, for the float model,
    plain PTQ and the stitched network `label_kd` (both integer networks run on the integer
    reference)."""
    if eval_data is None:
        return {}, {}
    x, y = eval_data
    teacher = features(model, [], x)[-1].astype(np.float64)
    accuracy = {"float": top1(teacher, y)}
    logits_mse = {}
    for label, module in (("PTQ", ptq), (label_kd, quantized)):
        logits = BatchedRunner(module).run(x)
        accuracy[label] = top1(logits, y)
        logits_mse[label] = float(np.mean((logits - teacher) ** 2))
    return accuracy, logits_mse
