"""`set-bits`: choose the bit widths of layers by torch module path, as `#qnn.bits` attributes."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation
from xdsl.passes import ModulePass

from dopant.dialects.qnn import BitsAttr, Conv2DOp, LinearOp
from dopant.dialects.qnn.attrs import BITS_ATTR, BITS_TEXT, LAYER_WIDTHS
from dopant.dialects.qnn.base import is_float
from dopant.support.errors import DopantError

LAYERS = (Conv2DOp, LinearOp)
_ENTRY = re.compile(rf"(?P<path>[^=]+)={BITS_TEXT}")


def check_bits(name: str, bits: int) -> None:
    """Refuse a layer width other than 2, 4 or 8, naming the option or entry it came from."""
    if bits not in LAYER_WIDTHS:
        raise DopantError(f"{name}={bits} is not supported; use 2, 4 or 8 bits.")


ParsedEntries = list[tuple[str, str, int, int]]  # (entry, path, weight bits, act bits)


def parse_entries(entries: Iterable[str]) -> ParsedEntries:
    """(entry, path, weight bits, act bits; 0 = left out) of each `path=wXaY` entry in
    `entries` (one string may hold several, separated by commas); DopantError naming the first
    malformed entry or unsupported width. Needs no IR, so the CLI checks options up front."""
    parsed: ParsedEntries = []
    for entry in (part.strip() for text in entries for part in text.split(",")):
        if not entry:
            continue
        match = _ENTRY.fullmatch(entry)
        if match is None or not (match["w"] or match["a"]):
            raise DopantError(
                f"override '{entry}' is not of the form path=wXaY (e.g. conv1=w8a8, fc=w8)."
            )
        w, a = int(match["w"] or 0), int(match["a"] or 0)
        if w:
            check_bits(f"the weight bits of '{entry}'", w)
        if a:
            check_bits(f"the activation bits of '{entry}'", a)
        parsed.append((entry, match["path"], w, a))
    return parsed


def _layers(root: Operation) -> dict[str, Conv2DOp | LinearOp]:
    return {op.path.data: op for op in root.walk() if isinstance(op, LAYERS)}


def _check_paths(layers: dict[str, Conv2DOp | LinearOp], parsed: ParsedEntries) -> None:
    for entry, path, _, _ in parsed:
        if path not in layers:
            raise DopantError(
                f"override '{entry}' names no conv or linear layer; the layers are: "
                f"{', '.join(layers)}."
            )


def check_layer_paths(root: Operation, entries: Iterable[str]) -> None:
    """DopantError if an entry names no conv or linear layer below `root` (before any work that
    the wrong path would waste)."""
    _check_paths(_layers(root), parse_entries(entries))


def set_layer_bits(root: Operation, entries: Iterable[str]) -> None:
    """Write `bits = #qnn.bits<...>` on the float conv2d/linear layers below `root` that
    `entries` name: `conv1=w8a8`, `fc=w8`, `layer1.0.conv1=a4` (one string may also hold several,
    separated by commas). A width an entry leaves out keeps the one the layer carries already,
    if any; a later entry wins over an earlier one."""
    layers, parsed = _layers(root), parse_entries(entries)
    _check_paths(layers, parsed)
    for _, path, w, a in parsed:
        op = layers[path]
        if not is_float(op.input):
            raise DopantError(
                f"{op.where} is an integer layer, whose widths are in its types; set bits on "
                "float IR, before quantize."
            )
        old = op.attributes.get(BITS_ATTR)
        if isinstance(old, BitsAttr):
            w, a = w or old.weight.data, a or old.act.data
        op.attributes[BITS_ATTR] = BitsAttr.get(w, a)


@dataclass(frozen=True)
class SetBitsPass(ModulePass):
    """Set the bit widths of chosen layers as `bits = #qnn.bits<w8a8>` attributes for `quantize`.

    The text form of a per-layer bit-width plan: `set-bits{layers="conv1=w8a8","fc=w8"},quantize`
    quantizes as `quantize{overrides="conv1=w8a8","fc=w8"}` does, and a pass that chooses
    widths itself (under a latency budget, say) writes the same attributes in its place.
    Expects: float `qnn` IR; `layers` entries `path=wXaY` naming conv2d/linear layers by torch
    module path (`conv1=w8a8`, `fc=w8`, `layer1.0.conv1=a4`; commas may separate entries inside
    one string too).
    Guarantees: each named layer carries `bits` with the widths its entry gives; a width an entry
    leaves out keeps the one already on the layer (so `fc=w8` on `#qnn.bits<a4>` gives
    `#qnn.bits<w8a4>`), and a later entry wins. Nothing else changes.
    Fails: on an entry not of the form path=wXaY, a path naming no conv or linear layer (the
    error lists the layers), a width other than 2, 4 or 8, or a layer that is already integer.
    """

    name = "set-bits"
    layers: tuple[str, ...] = ()

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        set_layer_bits(op, self.layers)
