"""Finished stages on disk, so that a progressive run resumes where it stopped.

    OUT/stage-K/record.json      the run's fingerprint, the schedule up to stage K, its record
    OUT/stage-K/float.pt         the folded float model's state dict after the stage
    OUT/stage-K/network.pt       the fake-quant network's state dict (float64 weights, steps)
    OUT/stage-K/quantized.mlir   the stage's integer IR (also the network's structure)
    OUT/stage-K/plan.json        the pruning plan the stage applied, if it pruned

A stage is written into a temporary folder beside it and renamed into place when complete, so
a stage folder is either whole or absent. The fingerprint covers everything a stage's numbers
depend on: the model (its imported IR: architecture and weights), the data, the options and
the target; a run resumes only from stages of the same fingerprint and the same schedule up
to them, and is then the same, number for number, as a run never interrupted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from xdsl.dialects.builtin import ModuleOp

from dopant.codesign._progressive.records import StageRecord
from dopant.compiler.fakequant import FakeQuantNetwork
from dopant.compiler.irio import ir_text, parse_ir
from dopant.passes._prune_channels.plan import PruningPlan
from dopant.support.errors import InputError

FORMAT = 1
RECORD = "record.json"


def digest(*parts: str | bytes | np.ndarray | None) -> str:
    """sha256 over `parts` (arrays by dtype, shape and bytes; None as a marker)."""
    h = hashlib.sha256()
    for part in parts:
        if part is None:
            h.update(b"\0none")
        elif isinstance(part, np.ndarray):
            h.update(f"{part.dtype}{part.shape}".encode())
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


@dataclass
class SavedStage:
    """A finished stage read back: its record, the float model's state, the network (built
    from its IR, holding its learned state) and its IR, and the plan it pruned with."""

    record: StageRecord
    float_state: dict[str, torch.Tensor]
    network: FakeQuantNetwork
    quantized: ModuleOp
    plan: PruningPlan | None


def _folder(out: Path, index: int) -> Path:
    return out / f"stage-{index}"


def _tensor_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def save_stage(
    out: Path,
    fingerprint: dict[str, Any],
    schedule: Sequence[str],
    saved: SavedStage,
) -> None:
    """Write stage `saved.record.index` of a run (`schedule`: its stages up to this one)."""
    index = saved.record.index
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".stage-{index}.", dir=out))
    try:
        record = {
            "fingerprint": fingerprint,
            "schedule": list(schedule),
            "record": saved.record.to_dict(),
        }
        (work / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        (work / "float.pt").write_bytes(_tensor_bytes(saved.float_state))
        (work / "network.pt").write_bytes(_tensor_bytes(saved.network.state_dict()))
        (work / "quantized.mlir").write_text(ir_text(saved.quantized))
        if saved.plan is not None:
            (work / "plan.json").write_text(saved.plan.to_json() + "\n")
        final = _folder(out, index)
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def clear(out: Path) -> None:
    """Remove the stage folders an earlier run left in `out` (a run that does not resume starts
    over; stale stages would mislead a later resume). Other files stay."""
    if not out.is_dir():
        return
    for folder in out.glob("stage-*"):
        if (folder / RECORD).is_file():
            shutil.rmtree(folder)


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    what = {"model": "another model (or other weights)", "data": "other data"}
    found = [what[key] for key in what if saved.get(key) != now.get(key)]
    old, new = saved.get("options", {}), now.get("options", {})
    found += [
        f"{key} {old.get(key)!r} (now {new.get(key)!r})"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]
    return found or [f"format {saved.get('format')!r} (now {now.get('format')!r})"]


def _read(folder: Path, where: str) -> dict[str, Any]:
    try:
        data = json.loads((folder / RECORD).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{where}/{RECORD} cannot be read ({error}); remove {where}.") from None
    if not isinstance(data, dict) or {"fingerprint", "schedule", "record"} - set(data):
        raise InputError(f"{where}/{RECORD} is not a progressive stage record; remove {where}.")
    return data


def load_run(out: Path, fingerprint: dict[str, Any], schedule: Sequence[str]) -> list[SavedStage]:
    """The finished stages 1, 2, ... of this run saved in `out` (up to the first one missing
    and at most `len(schedule)`). InputError, naming the folder and what differs, for a stage
    saved by another run: another model, data, options, target or schedule."""
    stages: list[SavedStage] = []
    for index in range(1, len(schedule) + 1):
        folder = _folder(out, index)
        if not (folder / RECORD).is_file():
            break
        where = str(folder)
        data = _read(folder, where)
        if data["fingerprint"] != fingerprint:
            raise InputError(
                f"{where} was saved by a different run: "
                f"{'; '.join(_differences(data['fingerprint'], fingerprint))}. Resume continues "
                "only the same run; give another output folder or start over without resume."
            )
        if data["schedule"] != list(schedule[:index]):
            raise InputError(
                f"{where} finished stage {index} of the schedule {','.join(data['schedule'])}, "
                f"not of {','.join(schedule)}. Resume continues only the same schedule; give "
                "another output folder or start over without resume."
            )
        quantized = parse_ir(
            (folder / "quantized.mlir").read_text(), str(folder / "quantized.mlir")
        )
        network = FakeQuantNetwork(quantized)
        network.load_state_dict(torch.load(folder / "network.pt", weights_only=True))
        plan_file = folder / "plan.json"
        stages.append(
            SavedStage(
                StageRecord.from_dict(data["record"]),
                torch.load(folder / "float.pt", weights_only=True),
                network,
                quantized,
                PruningPlan.load(str(plan_file)) if plan_file.is_file() else None,
            )
        )
    return stages
