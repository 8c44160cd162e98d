"""The points of a sweep: the compression settings of `[compression]` (its grid, or a sample of
it) times the machines of `[hardware]` (presets, config files and the ranges' grid).

A setting keeps only what its mode uses, so two grid entries that differ in a key their mode
ignores are one setting: a fixed setting has no budget and no offered widths, a codesign one no
pruning target and no uniform bits; a fixed setting that prunes nothing (no target, or method
"none") is "none" with no target.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dopant.backend.presets import load_target, preset
from dopant.backend.target import AccelConfig, ConfigError
from dopant.codesign._sweep.spec import GRID_KEYS, SweepSpec, bits_pair
from dopant.support.errors import InputError

SOBOL_DRAWS_PER_POINT = 64  # draws allowed per wanted setting before a sample gives up


@dataclass(frozen=True)
class Settings:
    """One compression setting (`spec` module docstring for the fields)."""

    mode: str
    latency_budget: str
    widths: tuple[int, ...]
    prune_method: str
    prune_target: str
    bits: str
    quantize_method: str
    finetune_epochs: int
    qat_epochs: int

    @staticmethod
    def of(values: dict[str, Any]) -> Settings:
        """The setting a grid entry means, with the keys its mode ignores cleared."""
        mode = values["mode"]
        method, target = values["prune_method"], values["prune_target"]
        if mode == "codesign":
            widths = tuple(sorted(set(values["widths"])))
            if widths not in ((8,),) and len(widths) < 2:
                raise InputError(
                    f"[compression] codesign widths {list(widths)} offer no choice, and a loop "
                    "that chooses no widths keeps every layer at 8 bits; give [8], or two or "
                    "more widths."
                )
            if method == "none" and len(widths) < 2:
                raise InputError(
                    f"[compression] a codesign setting with prune_method 'none' and widths "
                    f"{list(widths)} has nothing to choose; offer two widths or prune."
                )
            return Settings(
                mode, str(values["latency_budget"]), widths, method, "", "",
                values["quantize_method"], values["finetune_epochs"], values["qat_epochs"],
            )  # fmt: skip
        if method == "none" or not target:
            method, target = "none", ""
        return Settings(
            mode, "", (), method, target, values["bits"], values["quantize_method"],
            values["finetune_epochs"] if method != "none" else 0, values["qat_epochs"],
        )  # fmt: skip

    @property
    def prunes(self) -> bool:
        return self.prune_method != "none"

    @property
    def bits_column(self) -> str:
        """The table's `bits`: the uniform widths, or the widths a codesign setting offers."""
        if self.bits or len(self.widths) > 1:
            return self.bits or "mixed:" + ",".join(map(str, self.widths))
        return f"w{self.widths[0]}a{self.widths[0]}"  # one width offered: uniform

    @property
    def weight_act_bits(self) -> tuple[int, int]:
        return bits_pair(self.bits)

    def label(self) -> str:
        """A short name: 'codesign 0.5x sosp-h mixed:4,8' or 'fixed macs=0.5 sosp-h w4a8'."""
        parts = (
            [self.latency_budget, self.prune_method, self.bits_column]
            if self.mode == "codesign"
            else [self.prune_target or "dense", self.prune_method, self.bits]
        )
        extra = [f"ft{self.finetune_epochs}"] * bool(self.finetune_epochs)
        extra += [f"qat{self.qat_epochs}"] * bool(self.qat_epochs)
        return " ".join([self.mode, *[p for p in parts if p != "none"], *extra])

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "widths": list(self.widths)}


def settings(spec: SweepSpec) -> list[Settings]:
    """The compression settings: the grid in its order (modes first, then each key's list), or
    `sample` of them drawn by `sampler` (seeded); duplicates after clearing are dropped."""
    table = spec.compression
    axes = [table[key] for key in GRID_KEYS]
    grid = _unique(
        Settings.of(dict(zip(GRID_KEYS, combo, strict=True))) for combo in itertools.product(*axes)
    )
    wanted = table["sample"]
    if not wanted or wanted >= len(grid):
        return grid
    if table["sampler"] == "random":
        order = np.random.default_rng(table["seed"]).permutation(len(grid))
        return [grid[i] for i in sorted(order[:wanted])]
    return _sobol(axes, wanted, table["seed"])


def _sobol(axes: list[list[Any]], wanted: int, seed: int) -> list[Settings]:
    """`wanted` distinct settings from a scrambled Sobol sequence over the grid's axes (each
    coordinate picks one entry of its list), in the order first drawn."""
    from scipy.stats import qmc

    sampler = qmc.Sobol(d=len(axes), scramble=True, seed=seed)
    found: dict[Settings, None] = {}
    draws = 0
    while len(found) < wanted and draws < SOBOL_DRAWS_PER_POINT * wanted:
        for u in sampler.random(32):  # a power of two keeps the sequence balanced
            combo = [
                axis[min(int(x * len(axis)), len(axis) - 1)]
                for x, axis in zip(u, axes, strict=True)
            ]
            found.setdefault(Settings.of(dict(zip(GRID_KEYS, combo, strict=True))))
            if len(found) == wanted:
                break
        draws += 32
    return list(found)


def points(spec: SweepSpec) -> list[tuple[Settings, AccelConfig]]:
    """Every (setting, machine) of `spec`, settings outer: the sweep's points, in its order."""
    configs = machines(spec)
    return [(setting, config) for setting in settings(spec) for config in configs]


def machines(spec: SweepSpec) -> list[AccelConfig]:
    """The machines: presets, then config files, then the ranges' grid on `base`, each
    checked (an invalid one is an InputError with the AccelConfig reason); a name given twice
    for two different machines is an InputError too."""
    table = spec.hardware
    found: list[AccelConfig] = []
    for name in table["presets"]:
        found.append(_loaded(name, "presets", preset))
    for path in table["configs"]:
        found.append(_loaded(spec.path(path), "configs", load_target))
    if table["ranges"]:
        base_ref = table["base"]
        if base_ref.endswith(".toml"):
            base_ref = spec.path(base_ref)
        base = _loaded(base_ref, "base", load_target)
        found += _ranged(base, table["ranges"])
    by_name: dict[str, AccelConfig] = {}
    for config in found:
        if config.name in by_name and by_name[config.name] != config:
            raise InputError(
                f"[hardware] two different machines are named '{config.name}'; rename one."
            )
        by_name[config.name] = config
    return list(by_name.values())


def _loaded(ref: str, key: str, load: Callable[[str], AccelConfig]) -> AccelConfig:
    try:
        return load(ref)
    except ConfigError as error:
        raise InputError(f"[hardware] {key} '{ref}': {error}") from None


def _ranged(base: AccelConfig, ranges: dict[str, list[Any]]) -> list[AccelConfig]:
    fields = set(base.to_dict()) - {"name"}
    unknown = sorted(set(ranges) - fields - {"array"})
    if unknown:
        raise InputError(
            f"[hardware.ranges] unknown key(s) {', '.join(unknown)}; the keys are array (RxC) "
            f"and the AccelConfig fields {', '.join(sorted(fields))}."
        )
    keys = list(ranges)
    configs = []
    for combo in itertools.product(*(ranges[k] for k in keys)):
        changes: dict[str, Any] = {}
        tags = []
        for key, value in zip(keys, combo, strict=True):
            if key == "array":
                changes["rows"], changes["cols"] = _array(value)
                tags.append(str(value))
            else:
                changes[key] = tuple(value) if isinstance(value, list) else value
                tags.append(str(value) if key == "dataflow" else f"{key}={value}")
        name = f"{base.name}[{','.join(tags)}]"
        try:
            configs.append(base.with_changes(name=name, **changes))
        except ConfigError as error:
            raise InputError(f"[hardware.ranges] {', '.join(tags)}: {error}") from None
    return configs


def _array(value: object) -> tuple[int, int]:
    rows, sep, cols = str(value).partition("x")
    if not (sep and rows.isdigit() and cols.isdigit()):
        raise InputError(f"[hardware.ranges] array {value!r} is not ROWSxCOLS such as '16x16'.")
    return int(rows), int(cols)


def _unique(items: Iterable[Settings]) -> list[Settings]:
    return list(dict.fromkeys(items))
