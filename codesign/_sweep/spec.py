"""A sweep spec: what to compress, on which data, with which settings, on which machines.

A TOML file (or the same as a dict) of four tables; every key is checked before any work, and
an error names the key (`[compression] bits`) and the values it takes:

    [model]
    ref = "zoo:resnet8"            # zoo:NAME, or path/to/file.py:factory (relative to the spec)
    weights = "mine.pt"            # optional: a state dict, checkpoint or .npz
    input_shape = [1, 1, 28, 28]   # a file model's input (a zoo model knows its own)

    [data]                         # data SPECs, as the CLI's --calibration takes them
    calibration = "sample"         # labelled: calibration, saliency, sensitivity, fine-tuning
    calibration_limit = 128        # the first N images (0: all)
    eval = "sample"                # labelled: the top-1 of every point
    eval_limit = 1000

    [compression]                  # lists: the grid is every combination (per mode)
    mode = ["codesign", "fixed"]   # codesign: the loop at a latency budget; fixed: one setting
    latency_budget = ["0.7x", "0.5x"]   # codesign: cycles, us, fps or x (of dense W8A8)
    widths = [[4, 8]]              # codesign: the widths each layer may take
    prune_method = ["sosp-h"]      # saliency, or "none"
    prune_target = ["macs=0.5"]    # fixed: macs=F or params=F removed ("" for none)
    bits = ["w8a8", "w4a8"]        # fixed: uniform widths
    quantize_method = ["minmax"]
    finetune_epochs = [0]          # float fine-tuning after pruning, on the calibration data
    qat_epochs = [0]               # then QAT of the integer network
    sample = 0                     # 0: the whole grid; N: N settings drawn from it
    sampler = "sobol"              # or "random" (seeded by `seed`)
    seed = 0

    [hardware]                     # the union of presets, config files and the ranges' grid
    presets = ["edge16"]
    configs = ["machines/mine.toml"]
    base = "edge16"                # the machine the ranges vary (a preset or a TOML file)
    [hardware.ranges]              # lists of AccelConfig field values; "array" sets rows x cols
    array = ["8x8", "16x16", "32x32"]
    scratchpad_kib = [128, 256]
    dataflow = ["ws", "os"]

A key left out takes the default shown by `DEFAULTS` (one value, or none for `presets`,
`configs` and `ranges`: a spec names at least one machine).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dopant.support.errors import DopantError, InputError

MODES = ("codesign", "fixed")
SAMPLERS = ("sobol", "random")
PRUNE_METHODS = ("magnitude", "taylor", "sosp-h", "sosp-i", "none")  # codesign.scores + none

# Every key a spec may hold, per table, with its default (lists: the grid's default axis).
DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"ref": None, "weights": None, "input_shape": None},
    "data": {
        "calibration": "sample",
        "calibration_limit": 128,
        "eval": "sample",
        "eval_limit": 1000,
    },
    "compression": {
        "mode": ["codesign"],
        "latency_budget": ["0.5x"],
        "widths": [[4, 8]],
        "prune_method": ["sosp-h"],
        "prune_target": [""],
        "bits": ["w8a8"],
        "quantize_method": ["minmax"],
        "finetune_epochs": [0],
        "qat_epochs": [0],
        "sample": 0,
        "sampler": "sobol",
        "seed": 0,
    },
    "hardware": {"presets": [], "configs": [], "base": "edge16", "ranges": {}},
}
GRID_KEYS = tuple(k for k, v in DEFAULTS["compression"].items() if isinstance(v, list))


@dataclass(frozen=True)
class SweepSpec:
    """A checked sweep spec: the four tables with every default filled in. `folder` is where
    relative paths (model file, weights, data, configs) are read from; `text` the TOML it came
    from (shown in the report), or the canonical JSON of a dict."""

    model: dict[str, Any]
    data: dict[str, Any]
    compression: dict[str, Any]
    hardware: dict[str, Any]
    folder: Path
    text: str

    @staticmethod
    def load(source: str | Path | dict[str, Any] | SweepSpec) -> SweepSpec:
        """A spec from a TOML file's path, a dict of its tables, or a SweepSpec as it is."""
        if isinstance(source, SweepSpec):
            return source
        if isinstance(source, dict):
            return SweepSpec.from_dict(source, Path.cwd(), canonical_json(source))
        path = Path(source)
        try:
            text = path.read_text()
        except OSError as error:
            raise InputError(f"sweep spec '{path}' cannot be read: {error.strerror}.") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise InputError(f"sweep spec '{path}' is not valid TOML: {error}.") from None
        return SweepSpec.from_dict(data, path.resolve().parent, text, str(path))

    @staticmethod
    def from_dict(data: dict[str, Any], folder: Path, text: str, where: str = "spec") -> SweepSpec:
        unknown = sorted(set(data) - set(DEFAULTS))
        if unknown:
            raise InputError(
                f"{where}: unknown table(s) {', '.join(map(repr, unknown))}; the tables are "
                f"{', '.join(DEFAULTS)}."
            )
        tables = {}
        for table, defaults in DEFAULTS.items():
            given = data.get(table, {})
            if not isinstance(given, dict):
                raise InputError(f"{where}: [{table}] must be a table, got {given!r}.")
            extra = sorted(set(given) - set(defaults))
            if extra:
                raise InputError(
                    f"{where}: unknown key(s) {', '.join(extra)} in [{table}]; its keys are "
                    f"{', '.join(defaults)}."
                )
            tables[table] = {**defaults, **given}
        spec = SweepSpec(**tables, folder=folder, text=text)
        spec.check(where)
        return spec

    def check(self, where: str = "spec") -> None:
        """Every check that needs no work (a model file is not run, data not loaded)."""
        ref = self.model["ref"]
        if not isinstance(ref, str) or not ref:
            raise InputError(
                f"{where}: [model] ref is required: zoo:NAME or path/to/file.py:factory."
            )
        shape = self.model["input_shape"]
        if shape is not None and not (
            isinstance(shape, list) and shape and all(_positive_int(v) for v in shape)
        ):
            raise InputError(f"{where}: [model] input_shape must be a list of positive ints.")
        for key in ("calibration", "eval"):
            if not isinstance(self.data[key], str) or not self.data[key]:
                raise InputError(f"{where}: [data] {key} must be a data SPEC such as 'sample'.")
            if not _count(self.data[f"{key}_limit"]):
                raise InputError(f"{where}: [data] {key}_limit must be an int >= 0 (0: all).")
        _check_compression(self.compression, where)
        _check_hardware(self.hardware, where)

    def path(self, relative: str) -> str:
        """A path of the spec, relative to its folder unless absolute."""
        return str(self.folder / relative) if relative else relative

    def digest(self) -> str:
        """SHA-256 of the spec's checked tables (not its comments or layout)."""
        tables = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)[:4]}
        return hashlib.sha256(canonical_json(tables).encode()).hexdigest()


def _check_compression(table: dict[str, Any], where: str) -> None:
    """The grid's axes: lists of allowed values, checked one by one where that needs no model."""
    from dopant.codesign.budget import LatencyBudget
    from dopant.codesign.select import Target
    from dopant.dialects.qnn.attrs import CALIBRATION_METHODS
    from dopant.passes.set_bits import check_bits

    for key in GRID_KEYS:
        values = table[key]
        if not isinstance(values, list) or not values:
            raise InputError(f"{where}: [compression] {key} must be a non-empty list.")
    _one_of(table, "mode", MODES, where)
    _one_of(table, "prune_method", PRUNE_METHODS, where)
    _one_of(table, "quantize_method", CALIBRATION_METHODS, where)
    try:
        for budget in table["latency_budget"]:
            LatencyBudget.parse(budget)
        for target in table["prune_target"]:
            if target:
                Target.parse(target)
        for bits in table["bits"]:
            bits_pair(bits)
        for widths in table["widths"]:
            if not (isinstance(widths, list) and widths):
                raise InputError(f"a list of widths such as [4, 8], got {widths!r}")
            for w in widths:
                check_bits("widths", w)
    except DopantError as error:
        raise InputError(f"{where}: [compression] {error}") from None
    for key in ("finetune_epochs", "qat_epochs"):
        if not all(_count(v) for v in table[key]):
            raise InputError(f"{where}: [compression] {key} must be ints >= 0.")
    if not _count(table["sample"]) or not _count(table["seed"]):
        raise InputError(f"{where}: [compression] sample and seed must be ints >= 0.")
    if table["sampler"] not in SAMPLERS:
        raise InputError(
            f"{where}: [compression] sampler '{table['sampler']}' is not one of "
            f"{', '.join(SAMPLERS)}."
        )


def _check_hardware(table: dict[str, Any], where: str) -> None:
    for key in ("presets", "configs"):
        if not isinstance(table[key], list) or not all(isinstance(v, str) for v in table[key]):
            raise InputError(f"{where}: [hardware] {key} must be a list of names or paths.")
    ranges = table["ranges"]
    if not isinstance(ranges, dict):
        raise InputError(f"{where}: [hardware] ranges must be a table of lists.")
    for key, values in ranges.items():
        if not isinstance(values, list) or not values:
            raise InputError(f"{where}: [hardware.ranges] {key} must be a non-empty list.")
    if not (table["presets"] or table["configs"] or ranges):
        raise InputError(f"{where}: [hardware] names no machine; give presets, configs or ranges.")


def _one_of(table: dict[str, Any], key: str, allowed: tuple[str, ...], where: str) -> None:
    bad = [v for v in table[key] if v not in allowed]
    if bad:
        raise InputError(
            f"{where}: [compression] {key} {bad[0]!r} is not one of {', '.join(allowed)}."
        )


def bits_pair(text: object) -> tuple[int, int]:
    """'w4a8' as (4, 8); InputError naming the text otherwise."""
    from dopant.passes.set_bits import check_bits

    if not isinstance(text, str) or not text.startswith("w") or "a" not in text:
        raise InputError(f"bits {text!r} is not of the form w4a8")
    w, _, a = text[1:].partition("a")
    try:
        pair = int(w), int(a)
    except ValueError:
        raise InputError(f"bits {text!r} is not of the form w4a8") from None
    check_bits("bits", pair[0])
    check_bits("bits", pair[1])
    return pair


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def canonical_json(data: object) -> str:
    """`data` as one JSON text that does not depend on key order: what spec and point digests
    hash."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
