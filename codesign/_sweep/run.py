"""`sweep(spec)`: every point of a spec, compressed, compiled, measured and evaluated, as one
table with its Pareto fronts and report.

    result = sweep("sweep.toml", "results/", workers=2)   # a local Ray runtime of 2 workers
    result.pareto(x="fps", y="accuracy_integer")          # the non-dominated rows

The stages:
    check    the spec, the machines (each AccelConfig validated) and the settings, the output
             folder and the workers, before any work
    load     the model (built once here to score it; each point builds its own) and the data
    plan     one point per (setting, machine), its ID the content hash of what it computes
             from (`store.point_id`); points the folder holds already are not run again
    score    the saliency of each pruning method and the sensitivity of each set of offered
             widths, once, for the points still to run (they depend on model and data only)
    run      the points, as Ray tasks (`distributed.as_completed`) or in this process, each
             saved as it finishes; a failing point is a row with its error
    write    table.csv, pareto.csv, the plots and report.html
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dopant.codesign._sweep.point import BATCH, ModelRef, Outcome, Task, run_point
from dopant.codesign._sweep.result import SweepResult
from dopant.codesign._sweep.space import Settings, points
from dopant.codesign._sweep.spec import SweepSpec
from dopant.codesign._sweep.store import Store, array_digest, file_digest, point_id
from dopant.codesign.choose import layer_paths
from dopant.codesign.distributed import as_completed, check_workers
from dopant.codesign.finish import torch_top1
from dopant.codesign.loop import SENSITIVITY_PROBES
from dopant.codesign.scores import group_saliency
from dopant.codesign.sensitivity import Sensitivity, bit_sensitivity
from dopant.codesign.threads import one_thread
from dopant.compiler.frontend import import_model
from dopant.compiler.inputs import load_samples
from dopant.compiler.models.datasets import Dataset
from dopant.passes._prune_channels.groups import coupling_groups
from dopant.support.errors import InputError

NAMED_DATA = ("sample", "fashion-mnist")  # data SPECs that are names, not paths


def sweep(
    spec: str | Path | dict[str, Any] | SweepSpec,
    output: str | Path | None = None,
    *,
    workers: int = 1,
    address: str | None = None,
    resume: bool = False,
    cache_dir: str | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> SweepResult:
    """Run every point of `spec` (a TOML path, a dict of its tables or a SweepSpec; module
    docstring for the stages) and return the table. With `output`, a folder (`store`): points
    are saved as they finish and reused on a rerun; `resume` allows a folder of another spec.
    `workers`/`address` as `distributed.run_tasks`; `cache_dir`: the latency tables' cache.

    InputError before any work for a bad spec, machine, folder or worker option.
    """
    say = log or (lambda _: None)
    spec = SweepSpec.load(spec)
    check_workers(workers, address)
    grid = points(spec)
    store = Store(output) if output is not None else None
    if store is not None:
        store.check(spec, resume)
    model_ref = _model_ref(spec)
    model, example = model_ref.load()
    shape = tuple(example.shape[1:])
    calibration = _labelled(spec, "calibration", shape)
    evaluation = _labelled(spec, "eval", shape)
    identity = {
        "model": {
            "ref": spec.model["ref"],
            "input_shape": list(shape),
            "weights": file_digest(model_ref.weights),
            "file": file_digest(_model_file(spec)),
        },
        "data": {
            "calibration": array_digest(calibration.x, calibration.y),
            "eval": array_digest(evaluation.x, evaluation.y),
        },
        "dopant": _dopant_version(),
    }
    ids = [point_id({**identity, "settings": s.to_dict(), "target": c.to_dict()}) for s, c in grid]
    finished = store.open(spec, identity) if store is not None else {}
    todo = [(i, s, c) for i, (s, c) in zip(ids, grid, strict=True) if i not in finished]
    say(f"{len(grid)} point(s): {len(grid) - len(todo)} finished before, {len(todo)} to run")

    outcomes: dict[str, Outcome] = {
        i: Outcome(saved["row"], saved["details"]) for i, saved in finished.items() if i in ids
    }
    if todo:
        with one_thread():
            scores, sens = _score(model, example, calibration, [s for _, s, _ in todo])
            accuracy_float = torch_top1(model, (evaluation.x, evaluation.y))
        tasks = [
            Task(
                i,
                f"{c.name} {s.label()}",
                s,
                c,
                model_ref,
                calibration,
                evaluation,
                accuracy_float,
                scores.get(s.prune_method) if s.prunes else None,
                sens.get(s.widths) if s.mode == "codesign" else None,
                cache_dir,
            )
            for i, s, c in todo
        ]
        _run(tasks, workers, address, store, outcomes, progress, say)
    rows = [outcomes[i].row for i in ids]
    details = {i: d for i in ids if (d := outcomes[i].details) is not None}
    result = SweepResult(rows, details, spec.text)
    if store is not None:
        result.save(store.folder)
    return result


def _run(
    tasks: list[Task],
    workers: int,
    address: str | None,
    store: Store | None,
    outcomes: dict[str, Outcome],
    progress: bool,
    say: Callable[[str], None],
) -> None:
    """Run `tasks`, keeping (and saving) each outcome as it arrives, with a bar and its ETA."""
    start = time.perf_counter()
    with tqdm(total=len(tasks), desc="sweep", unit="point", disable=not progress) as bar:
        for index, outcome in as_completed(run_point, tasks, workers=workers, address=address):
            task = tasks[index]
            outcomes[task.point] = outcome
            if store is not None:
                store.save_point(task.point, outcome.row, outcome.details)
            bar.update()
            state = outcome.row["error"] or f"{outcome.row['cycles']:,} cycles"
            say(f"  {task.label}: {state}")
    say(f"ran {len(tasks)} point(s) in {time.perf_counter() - start:.1f} s")


def _score(
    model: torch.nn.Module, example: torch.Tensor, data: Dataset, todo: list[Settings]
) -> tuple[dict[str, dict[str, np.ndarray]], dict[tuple[int, ...], Sensitivity]]:
    """The saliency of each pruning method and the sensitivity of each set of offered widths
    the settings `todo` use, on the calibration data's labelled batches."""
    batches = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in data.batches(BATCH)]
    imported = import_model(model, example)
    methods = sorted({s.prune_method for s in todo if s.prunes})
    groups = coupling_groups(imported) if methods else []
    scores = {m: group_saliency(model, groups, batches, m) for m in methods}
    widths = sorted({s.widths for s in todo if s.mode == "codesign" and len(s.widths) > 1})
    sens = {
        w: bit_sensitivity(
            model, layer_paths(imported), batches, w, "hessian", probes=SENSITIVITY_PROBES
        )
        for w in widths
    }
    return scores, sens


def _model_ref(spec: SweepSpec) -> ModelRef:
    ref = spec.model["ref"]
    if not ref.startswith("zoo:"):
        path, _, factory = ref.rpartition(":")
        ref = f"{spec.path(path)}:{factory}"
    weights = spec.model["weights"]
    shape = spec.model["input_shape"]
    return ModelRef(ref, tuple(shape) if shape else None, spec.path(weights) if weights else None)


def _model_file(spec: SweepSpec) -> str | None:
    ref = spec.model["ref"]
    return None if ref.startswith("zoo:") else spec.path(ref.rpartition(":")[0])


def _labelled(spec: SweepSpec, key: str, shape: tuple[int, ...]) -> Dataset:
    source = spec.data[key]
    source = source if source in NAMED_DATA else spec.path(source)
    split = "calibration" if key == "calibration" else "test"
    data = load_samples(source, shape, split=split, limit=spec.data[f"{key}_limit"])
    if data.y is None:
        raise InputError(
            f"[data] {key}: {data.source} has no labels, and the sweep needs them; give a .npz "
            "with images 'x' and int labels 'y', a folder of class subfolders, or 'sample'."
        )
    return Dataset(data.x, data.y)


def _dopant_version() -> str:
    try:
        return version("dopant")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"
