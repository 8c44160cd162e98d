"""Progressive compression: a schedule of stages, each quantized (or pruned) further than the last,
each started from the last one's network and fine-tuned as an integer network.

    result = progressive(model, x[:1], schedule="w8a8,w4a8,w4a4,w2a4", train_data=(x, y),
                         eval_data=(x_test, y_test), target="edge16", epochs_per_stage=2)
    print(result.table())       # per stage: top-1 as it began and after, the drop, cycles
    result.quantized            # the last stage's integer IR; result.compiled: its binary
    baseline = one_jump(model, x[:1], schedule="w8a8,w4a8,w4a4,w2a4", train_data=(x, y), ...)

Progressive quantization (Zhuang et al., TPAMI 2021) lowers the widths step by step, weights
before activations, each stage initialized from the last; the smaller the accuracy drops
between stages, the better. `one_jump` is the baseline it is measured against: the last stage
alone, from the float model, trained for the schedule's total epochs. The schedule's grammar
(widths, cumulative pruning targets) is `_progressive.schedule`'s.

The stages of a run:
    fold       batch norms folded into the torch model's layers, as the IR's `fold-batchnorm`
    per stage
      prune    when the stage's target removes more than the network has lost so far: the
               saliency (SOSP-H by default) on the float model, globally (`codesign.prune`)
      quantize the float model's IR with its current weights, calibrated and quantized at
               the stage's widths (traced once; again only through pruning)
      start    the fake-quant network takes over the last stage's learned numbers where their
               meaning is unchanged (`_progressive.carry`): same widths, same start
      train    QAT: LSQ on the fake-quant network (`fakequant.finetune`), seeded per stage
      record   top-1 on the evaluation data (the fake-quant network computes what the integer
               reference does), the cycles the timing model measures on the target
      keep     the learned weights written back into the float model; with `out_dir`, the
               stage saved, so `resume=True` continues an interrupted run (`_progressive.saved`)
    finish     the last IR compiled for the target and checked bit for bit on the simulator

Training runs on one torch thread and one BLAS thread (restored after): the fake-quant
network's float64 kernels are fastest so on a small machine, and a stage's numbers are then
the same in a resumed run as in an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from xdsl.dialects.builtin import ModuleOp

from dopant.backend.presets import load_target
from dopant.backend.target import AccelConfig
from dopant.codesign._progressive.carry import carry, with_weights, write_back
from dopant.codesign._progressive.fold import fold_batchnorms
from dopant.codesign._progressive.inputs import (
    Data,
    check_options,
    image_array,
    labelled,
)
from dopant.codesign._progressive.records import ProgressiveResult, StageRecord
from dopant.codesign._progressive.saved import SavedStage, clear, digest, load_run, save_stage
from dopant.codesign._progressive.schedule import Stage, parse_schedule
from dopant.codesign.finish import check_bit_exact, torch_top1
from dopant.codesign.mirror import prune_module
from dopant.codesign.pruning import Costs, prune
from dopant.codesign.select import Target, check_reachable
from dopant.codesign.threads import one_thread
from dopant.compiler.driver import compile_module, latency, quantize_network
from dopant.compiler.fakequant import FakeQuantNetwork, finetune
from dopant.compiler.frontend import import_model
from dopant.compiler.irio import ir_text
from dopant.compiler.pipeline import run_pipeline
from dopant.dialects.qnn.base import forward
from dopant.passes._prune_channels.costs import layer_shapes
from dopant.passes._prune_channels.groups import coupling_groups
from dopant.passes._prune_channels.plan import PruningPlan
from dopant.passes.prune_channels import prune as prune_ir
from dopant.support.errors import DopantError

__all__ = ["ProgressiveResult", "Stage", "StageRecord", "one_jump", "parse_schedule", "progressive"]

SALIENCY_BATCH = 64
BIT_EXACT_IMAGES = 16  # calibration images the final binary is checked on, bit for bit
# Adam's rate for each stage's QAT: the co-design CLI's and the main job's. On ResNet-8 with the
# 512 shipped images and w8a8,w4a4,w2a4 at 2 epochs a stage it ended at 72.3% where 1e-4 ended
# at 42.1% (README, "Progressive compression"); it costs the 8-bit stage 3 points, 1e-4 none.
QAT_LR = 1e-3


def progressive(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Tensor],
    *,
    schedule: str | Sequence[str | Stage],
    train_data: Data,
    calibration: np.ndarray | None = None,
    eval_data: Data | None = None,
    target: str | AccelConfig = "edge16",
    epochs_per_stage: int = 1,
    lr: float = QAT_LR,
    batch_size: int = 64,
    seed: int = 0,
    weight_clip: str = "mse",
    calibration_method: str = "mse",
    first_last_bits: int = 0,
    prune_method: str = "sosp-h",
    round_to: int = 1,
    out_dir: str | Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> ProgressiveResult:
    """Compress `model` stage by stage along `schedule` (module doc); `model` is not changed.

    `train_data` = (images, int labels) trains every stage (Adam at `lr`, `batch_size`,
    `epochs_per_stage` epochs, shuffled from `seed` + the stage's index) and scores channels
    for pruning (`prune_method`, `round_to` as `codesign.prune` takes them); `calibration`
    (default: the training images) gives each stage's first activation ranges
    (`calibration_method`) where a width changed; `weight_clip` and `first_last_bits` are the
    quantize pass's. `eval_data` = (images, labels) gives each stage's top-1 and drop.
    `out_dir` keeps each finished stage; with `resume`, a run continues from the stages saved
    there by the same run (same model, data, options, target and schedule so far), else starts
    over (removing them). `log` receives a line per stage.

    InputError before any work for a bad schedule (`parse_schedule`), option or data shape, an
    unreachable pruning target, or a saved run that is not this one.
    """
    config = target if isinstance(target, AccelConfig) else load_target(target)
    stages = parse_schedule(schedule, config, first_last_bits=first_last_bits)
    check_options(epochs_per_stage, lr, batch_size, weight_clip, calibration_method, prune_method)
    examples = example_inputs if isinstance(example_inputs, Tensor) else example_inputs[0]
    sample = tuple(examples.shape[1:])
    x, y = labelled(train_data, "train_data", sample)
    evaluation = None if eval_data is None else labelled(eval_data, "eval_data", sample)
    images = x if calibration is None else image_array(calibration, "calibration", sample)
    options = {
        "epochs_per_stage": epochs_per_stage,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "weight_clip": weight_clip,
        "calibration_method": calibration_method,
        "first_last_bits": first_last_bits,
        "prune_method": prune_method,
        "round_to": round_to,
        "target": f"{config.name} {config.stable_hash().hex()[:16]}",
    }
    with one_thread():
        imported = import_model(model, example_inputs)
        final = stages[-1].prune
        if final is not None:
            layers = layer_shapes(forward(imported, "to prune"))
            check_reachable(coupling_groups(imported), layers, final, round_to=round_to)
        fingerprint = {
            "format": 1,
            "model": digest(ir_text(imported)),
            "data": digest(x, y, images, *(evaluation or (None, None))),
            "options": options,
        }
        out = None if out_dir is None else Path(out_dir)
        saved = []
        if out is not None and resume:
            saved = load_run(out, fingerprint, [str(s) for s in stages])
        elif out is not None:
            clear(out)
        float_ir = imported.clone()
        run_pipeline(float_ir, "fold-batchnorm")
        run = _Run(
            config,
            stages,
            options,
            example_inputs,
            (x, y),
            images,
            evaluation,
            None if evaluation is None else torch_top1(model, evaluation),
            Costs.of(float_ir),
            out,
            fingerprint,
            log or (lambda _: None),
        )
        return run.go(fold_batchnorms(model, imported), float_ir, saved)


def one_jump(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Tensor],
    *,
    schedule: str | Sequence[str | Stage],
    epochs_per_stage: int = 1,
    target: str | AccelConfig = "edge16",
    first_last_bits: int = 0,
    **options: Any,
) -> ProgressiveResult:
    """The baseline of a progressive `schedule`: its last stage alone (its widths and pruning
    target reached in one step from the float model), trained for the schedule's total epochs.
    `options` are `progressive`'s (give it its own `out_dir`)."""
    config = target if isinstance(target, AccelConfig) else load_target(target)
    stages = parse_schedule(schedule, config, first_last_bits=first_last_bits)
    return progressive(
        model,
        example_inputs,
        schedule=[stages[-1]],
        epochs_per_stage=epochs_per_stage * len(stages),
        target=config,
        first_last_bits=first_last_bits,
        **options,
    )


@dataclass
class _Run:
    """One progressive run: its settings and data, the float model's top-1 on the evaluation
    data and its costs (the dense network's, which pruning targets are fractions of), and where
    its finished stages are saved (`out`, None: nowhere) with its fingerprint."""

    config: AccelConfig
    stages: list[Stage]
    options: dict[str, Any]
    example_inputs: Tensor | Sequence[Tensor]
    train: Data
    calibration: np.ndarray
    evaluation: Data | None
    float_top1: float | None
    dense: Costs
    out: Path | None
    fingerprint: dict[str, Any]
    log: Callable[[str], None]

    @property
    def texts(self) -> list[str]:
        return [str(s) for s in self.stages]

    def go(
        self, model: nn.Module, float_ir: ModuleOp, saved: list[SavedStage]
    ) -> ProgressiveResult:
        """Run the stages from the folded `model` and its IR `float_ir` after the `saved` ones
        of this run, then compile the last network."""
        records = [s.record for s in saved]
        previous: FakeQuantNetwork | None = None
        quantized = None
        if saved:
            for stage in saved:
                if stage.plan is not None:
                    prune_module(model, stage.plan, example_inputs=self.example_inputs)
                    prune_ir(float_ir, stage.plan)
            model.load_state_dict(saved[-1].float_state)
            previous, quantized = saved[-1].network, saved[-1].quantized
            last = self.texts[len(saved) - 1]
            self.log(f"resumed after stage {len(saved)} '{last}' from {self.out}")
        for index in range(len(saved) + 1, len(self.stages) + 1):
            model, float_ir, done = self._stage(index, model, float_ir, previous, records)
            records.append(done.record)
            if self.out is not None:
                save_stage(self.out, self.fingerprint, self.texts[:index], done)
            previous, quantized = done.network, done.quantized
        assert quantized is not None, "a schedule has at least one stage"
        compiled = compile_module(quantized, target=self.config)
        if compiled.program.stats.total_cycles != records[-1].cycles:
            raise DopantError(
                f"the final binary takes {compiled.program.stats.total_cycles:,} cycles but the "
                f"latency oracle measured {records[-1].cycles:,}; a bug in dopant: please report "
                "it with this model."
            )
        check_bit_exact(compiled, quantized, self.calibration[:BIT_EXACT_IMAGES])
        return ProgressiveResult(
            self.config,
            self.stages,
            self.options,
            self.float_top1,
            records,
            quantized,
            compiled,
            model,
            len(saved),
        )

    def _stage(
        self,
        index: int,
        model: nn.Module,
        float_ir: ModuleOp,
        previous: FakeQuantNetwork | None,
        records: list[StageRecord],
    ) -> tuple[nn.Module, ModuleOp, SavedStage]:
        """Stage `index` (1-based) from the folded float `model` and its IR `float_ir` (after
        the network `previous`): the float model and IR it leaves (pruned if it pruned; the
        model holds the learned weights) and what it finished."""
        stage = self.stages[index - 1]
        plan = None
        if stage.prune is not None:
            model, float_ir, plan = self._prune(model, float_ir, stage.prune)
        network = FakeQuantNetwork(
            quantize_network(
                with_weights(float_ir, model),
                self.calibration,
                method=self.options["calibration_method"],
                weight_bits=stage.weight_bits,
                act_bits=stage.act_bits,
                weight_clip=self.options["weight_clip"],
                first_last_bits=self.options["first_last_bits"],
            )
        )
        carried = "" if previous is None else str(carry(previous, network))
        top1_start = self._top1(network)
        start = time.perf_counter()
        x, y = self.train
        losses = finetune(
            network,
            x,
            y,
            epochs=self.options["epochs_per_stage"],
            lr=self.options["lr"],
            batch_size=self.options["batch_size"],
            seed=self.options["seed"] + index - 1,
        )
        seconds = time.perf_counter() - start
        top1 = self._top1(network)
        write_back(network, model)
        quantized = network.export()
        before = records[-1].top1 if records else self.float_top1
        record = StageRecord(
            index,
            str(stage),
            self.options["epochs_per_stage"],
            top1_start,
            top1,
            None if before is None or top1 is None else before - top1,
            Costs.of(float_ir).macs,
            latency(quantized, self.config).total_cycles,
            seconds,
            losses,
            carried,
        )
        self.log(_line(record, len(self.stages)))
        return model, float_ir, SavedStage(record, model.state_dict(), network, quantized, plan)

    def _prune(
        self, model: nn.Module, float_ir: ModuleOp, goal: Target
    ) -> tuple[nn.Module, ModuleOp, PruningPlan | None]:
        """`model` and its IR pruned until `goal` of the dense network's metric is gone, and
        the plan (None if it is gone already)."""
        now = getattr(Costs.of(float_ir), goal.metric)
        keep = (1.0 - goal.fraction) * getattr(self.dense, goal.metric)
        if now <= keep:
            return model, float_ir, None
        x, y = self.train
        batches = [
            (
                torch.from_numpy(x[i : i + SALIENCY_BATCH]),
                torch.from_numpy(y[i : i + SALIENCY_BATCH]),
            )
            for i in range(0, len(x), SALIENCY_BATCH)
        ]
        result = prune(
            model,
            self.example_inputs,
            batches,
            self.options["prune_method"],
            Target.checked(goal.metric, 1.0 - keep / now),
            round_to=self.options["round_to"],
        )
        pruned = float_ir.clone()  # as a resumed run rebuilds it: the plans applied in turn
        prune_ir(pruned, result.plan)
        return result.model, pruned, result.plan

    def _top1(self, network: FakeQuantNetwork) -> float | None:
        return None if self.evaluation is None else torch_top1(network, self.evaluation)


def _line(record: StageRecord, total: int) -> str:
    accuracy = (
        ""
        if record.top1 is None
        else f"top-1 {record.top1_start:.2%} -> {record.top1:.2%} after {record.epochs} epoch(s); "
    )
    carried = f" (started from the last stage: {record.carried})" if record.carried else ""
    return (
        f"stage {record.index}/{total} {record.stage}: {accuracy}{record.cycles:,} cycles, "
        f"{record.train_seconds:.1f} s of training{carried}"
    )
