"""The arms of benchmarks/codesign.py (its docstring says what each does): each returns one row
of the results table for a model, a target and a budget."""

from __future__ import annotations

import copy
import time

import numpy as np
from codesign_setup import (
    CODESIGN_ARMS,
    MAX_MEASUREMENTS,
    MIN_JOINT_STEP,
    TOLERANCE,
    UNIFORM,
    ModelState,
    Row,
    bits_detail,
    evaluate,
    finetune,
    kept_detail,
    macs_of,
    quantized,
    timed,
)
from torch import nn

from dopant.backend.target import AccelConfig
from dopant.codesign import PruningPlan, codesign, prune_module
from dopant.codesign.finish import torch_top1
from dopant.codesign.loop import BudgetNotMet
from dopant.codesign.pruning import Costs
from dopant.codesign.select import Target, plan_for
from dopant.compiler.driver import latency, quantize_network
from dopant.compiler.frontend import import_model
from dopant.dialects.qnn.base import forward
from dopant.passes._prune_channels.costs import layer_shapes
from dopant.passes._prune_channels.groups import coupling_groups
from dopant.passes.prune_channels import prune as prune_ir


def uniform_arm(state: ModelState, config: AccelConfig, arm: str) -> Row:
    """(c): the fine-tuned dense model at uniform widths, its own measured latency."""
    tuned = state.tuned_dense()
    start = time.perf_counter()
    w, a = UNIFORM[arm]
    q = quantized(tuned, state.data, w, a)
    cycles = latency(q, config).total_cycles
    wall = time.perf_counter() - start
    if arm not in state.uniform_acc:  # widths, not the target, decide the integer network
        state.uniform_acc[arm] = evaluate(q, state.data.test)
    acc, eval_s = state.uniform_acc[arm]
    return {
        "status": "ok",
        "cycles": cycles,
        "macs": macs_of(tuned, state.data),
        "acc": acc,
        "acc_float": torch_top1(tuned, (state.data.test.x, state.data.test.y)),
        "rounds": 1,
        "wall_s": wall + state.dense_tune_s,
        "loop_s": wall,
        "finetune_s": state.dense_tune_s,
        "score_s": 0.0,
        "eval_s": eval_s,
        "detail": f"w{w}a{a}",
    }


def mac_arm(state: ModelState, config: AccelConfig, budget: int) -> Row:
    """(a): global magnitude pruning to a MAC fraction, W8A8, the fraction bisected on measured
    cycles until they land in [budget (1 - TOLERANCE), budget]."""
    data = state.data
    start = time.perf_counter()
    scores, score_s = state.once("magnitude")
    imported = import_model(state.model, data.example)
    groups = coupling_groups(imported)
    layers = layer_shapes(forward(imported, "to count"))
    dense_macs = Costs.of(imported).macs

    def measure(plan: PruningPlan) -> int:
        pruned = imported.clone()
        prune_ir(pruned, plan)
        q = quantize_network(pruned, data.calibration.x, weight_bits=8, act_bits=8)
        return latency(q, config).total_cycles

    # The most the MAC ranking can remove: every prunable group down to its best channel.
    smallest = {g.id: [int(np.argmax(scores[g.id]))] for g in groups if g.prunable}
    pruned = imported.clone()
    prune_ir(pruned, PruningPlan.make(groups, smallest))
    most = (1 - Costs.of(pruned).macs / dense_macs) * (1 - 1e-9)

    tried: list[tuple[float, int, PruningPlan]] = []
    low, high = 0.0, most  # the dense network (low) is over the budget
    fraction = most  # first the smallest network: is the budget reachable at all?
    while len(tried) < MAX_MEASUREMENTS:
        plan = plan_for(groups, layers, scores, Target("macs", fraction))
        cycles = measure(plan)
        tried.append((fraction, cycles, plan))
        print(f"  mac search: {fraction:.4f} of the MACs removed -> {cycles:,} cycles", flush=True)
        if cycles > budget:
            if fraction == most:
                break
            low = fraction
        elif cycles < (1 - TOLERANCE) * budget:
            high = fraction
        else:
            break
        if high - low < 1e-5:
            break
        fraction = (low + high) / 2
    search_s = time.perf_counter() - start
    under = [t for t in tried if t[1] <= budget]
    if not under:
        return {
            "status": f"infeasible: smallest {tried[0][1]:,} cycles",
            "cycles": tried[0][1],
            "rounds": len(tried),
            "wall_s": search_s,
            "loop_s": search_s,
            "score_s": score_s,
            "detail": f"most MACs removable {most:.1%}",
        }
    fraction, cycles, plan = max(under, key=lambda t: t[1])
    status = "ok" if cycles >= (1 - TOLERANCE) * budget else "under the band"
    model = copy.deepcopy(state.model)
    prune_module(model, plan, example_inputs=data.example)
    tune_s = timed(lambda: finetune(model, data.tune))
    q = quantized(model, data)
    final = latency(q, config).total_cycles
    if final != cycles:
        raise AssertionError(f"the fine-tuned network measures {final:,}, its search {cycles:,}")
    wall = time.perf_counter() - start
    acc, eval_s = evaluate(q, data.test)
    return {
        "status": status,
        "cycles": cycles,
        "macs": macs_of(model, data),
        "acc": acc,
        "acc_float": torch_top1(model, (data.test.x, data.test.y)),
        "rounds": len(tried),
        "wall_s": wall,
        "loop_s": wall - tune_s,
        "finetune_s": tune_s,
        "score_s": score_s,
        "eval_s": eval_s,
        "detail": f"{fraction:.1%} of the MACs removed; "
        + kept_detail({k: len(v) for k, v in plan.keep().items()}, group_sizes(groups)),
    }


def group_sizes(groups) -> dict[str, int]:
    return {g.id: g.size for g in groups if g.prunable}


def codesign_arm(state: ModelState, config: AccelConfig, budget: str, arm: str) -> Row:
    """(b), (d), (e): the co-design loop with the same fine-tune, the model's scores and
        sensitivity passed in. The channel step is the array width (the default); when the pruning
        arms cannot reach the budget at it, it is halved until they can (down to 1 channel, to
    MIN_JOINT_STEP for the joint arms)."""
    prune, bits, method, widths = CODESIGN_ARMS[arm]
    data = state.data
    scores, score_s = state.once("sosp-h") if prune else (None, 0.0)
    sensitivity, sens_s = state.once(method) if bits else (method, 0.0)
    tune_s = inside = 0.0  # the fine-tune's seconds; the seconds spent in `tune`

    def tune(model: nn.Module) -> None:
        nonlocal tune_s, inside
        if prune:
            tune_s = inside = timed(lambda: finetune(model, data.tune))
        else:  # the dense model: its fine-tune, run once per model and reused
            inside = timed(lambda: model.load_state_dict(state.tuned_dense().state_dict()))
            tune_s = state.dense_tune_s

    start = time.perf_counter()
    failed: list[str] = []
    steps = [config.cols >> k for k in range(config.cols.bit_length())] if prune else [None]
    if prune and bits:  # every width combination at every channel count: keep the table small
        steps = [step for step in steps if step >= MIN_JOINT_STEP]
    for step in steps:
        try:
            result = codesign(
                state.model,
                data.example,
                target=config,
                calibration=data.calibration.x,
                latency_budget=budget,
                prune=prune,
                bits=bits,
                finetune=tune,
                scores=scores,
                sensitivity=sensitivity,
                widths=widths,
                step=step,
                tolerance=TOLERANCE,
                log=lambda line: print(f"  {line}", flush=True),
            )
            break
        except BudgetNotMet as error:
            print(f"  step {step}: {error}", flush=True)
            failed.append(f"step {step}: {error.minimum_cycles:,}")
            minimum = error.minimum_cycles
    else:
        wall = time.perf_counter() - start
        return {
            "status": f"infeasible: smallest {minimum:,} cycles",
            "cycles": minimum,
            "step": steps[-1] or "",
            "wall_s": wall,
            "loop_s": wall,
            "score_s": score_s + sens_s,
            "detail": "smallest measured: " + ", ".join(failed),
        }
    wall = time.perf_counter() - start - inside + tune_s + score_s + sens_s
    acc, eval_s = evaluate(result.stages["quantized"], data.test)
    detail = [f"infeasible at {', '.join(failed)}"] if failed else []
    if result.plan is not None:
        kept = {g.id: len(g.keep) for g in result.plan.groups}
        detail.append(kept_detail(kept, {g.id: g.size for g in result.plan.groups}))
    if bits:
        detail.append(bits_detail(result.bits))
    return {
        "status": "ok" if result.converged else f"not converged: {result.message}",
        "cycles": result.cycles,
        "step": step or "",
        "macs": macs_of(result.model, data),
        "acc": acc,
        "acc_float": torch_top1(result.model, (data.test.x, data.test.y)),
        "rounds": len(result.rounds),
        "wall_s": wall,
        "loop_s": wall - tune_s,
        "finetune_s": tune_s,
        "score_s": score_s + sens_s,
        "eval_s": eval_s,
        "detail": "; ".join(detail),
    }
