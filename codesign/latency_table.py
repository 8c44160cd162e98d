"""Latency tables: each layer's cycles on a target as a function of the channels it keeps and
its bit widths, measured with the timing model (DESIGN.md, Co-design).

    table = LatencyTable.of(module, "edge16")      # float or quantized qnn IR; reads shapes
    table.cycles("layer1.0.conv1", 16, 8, w_bits=4, a_bits=8)
    table.predict({("layer1.0.conv1", "out"): 8}, {"layer1.0.conv1": (4, 8)})

Rows are those of the timing model's statistics (`RunStats.layers`), in program order: conv2d
and linear layers, and the vector ops (residual adds, pools) between them (`TableRow`). An
entry is the cycles of a *single-op program* built for the row's signature (its shapes and
properties at those kept counts, its fused activation, its input's signedness, a bias if the
network's is nonzero) and timed with the latency oracle (`_latency.programs`): the row run
alone, not inside the network. Rows of one signature share entries; entries are measured on
first use, kept in memory and in a JSON file per machine and dopant version
(`_latency.cache`), so a second table on the same machine measures nothing it has seen.

Widths: a layer's entry at (w_bits, a_bits) has its weights at w_bits and its input and its
stored result at a_bits; a vector row's has no weight width. `predict` takes each layer's
choice and applies `quantize`'s storage rule: a value is stored at the widest a_bits among the
layers that read it, so a layer multiplies at the widest a_bits of the layers that share its
input (`shares_input`), and a vector row runs at the widest a_bits of its `readers` (8, the
output width, when it feeds the network's output).

Counts are in the units of the row's keys (a linear's input counts features). The grid
(`counts`) is the multiples of `step` group channels (step x `in_unit` indices) below the full
width, and the full width; `step` defaults to the array's width, where latency steps
(METHODS.md, "Structured pruning tools and latency"). Any valid count can be asked for.

A prediction only: layers overlap in time (a layer's loads run while the one before still
computes), and each single-op program pays alone what the network overlaps (its first loads,
its last stores), so the sum of the entries is not the network's cycles. Confirm every choice
made from a table by timing the whole network (`driver.latency`).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Mapping
from pathlib import Path

from xdsl.dialects.builtin import ModuleOp

from dopant.backend.presets import load_target
from dopant.backend.target import AccelConfig
from dopant.codesign._latency.cache import DiskCache
from dopant.codesign._latency.programs import Template, measure
from dopant.codesign._latency.rows import TableRow, table_rows, timed_ir
from dopant.compiler.driver import latency
from dopant.passes._prune_channels.costs import MemberKey
from dopant.passes.quantize import QuantizePass
from dopant.support.errors import InputError
from dopant.support.progress import progress

__all__ = ["LatencyTable", "TableRow"]

DEFAULT_BITS = (8, 8)  # (w_bits, a_bits) of a layer `predict` is given no widths for
OUTPUT_BITS = QuantizePass.output_bits  # how `quantize` stores the network's outputs


class LatencyTable:
    """Per-row cycles of one network on one machine (see the module docstring).

    `config` is the machine, `rows` the rows in program order, `step` the grid's channel
    step; `measurements` counts the single-op programs this table has timed (not read from
    memory or disk), `cache_file` is the JSON file it reads and writes (None: memory only).
    """

    def __init__(
        self,
        config: AccelConfig,
        rows: Iterable[TableRow],
        templates: Mapping[str, Template],
        step: int,
        ir: ModuleOp,
        disk: DiskCache | None,
        show_progress: bool = False,
    ):
        self.config = config
        self.rows = tuple(rows)
        self.step = step
        self.measurements = 0
        self._templates = dict(templates)
        self._by_name = {r.name: r for r in self.rows}
        self._ir = ir
        self._disk = disk
        self._progress = show_progress
        self._entries: dict[str, int] = disk.load() if disk is not None else {}
        self._unsaved = False
        self._fixed: dict[str, int] | None = None

    @classmethod
    def of(
        cls,
        module: ModuleOp,
        target: str | AccelConfig,
        *,
        step: int | None = None,
        cache_dir: str | Path | None = None,
        progress: bool = False,
        disk_cache: bool = True,
    ) -> LatencyTable:
        """The table of `module` (float or quantized `qnn` IR, batch norms folded or not, any
        batch; only its shapes, activations and which biases are zero are read) on `target` (a
        preset name, a TOML path or an AccelConfig). Nothing is measured yet.

        `step` (default: the array's width, `config.cols`) is the grid's channel step;
        `cache_dir` the folder of the disk cache (default: `$DOPANT_CACHE_DIR`, else
        `~/.cache/dopant/latency`); `disk_cache=False` keeps entries in memory only;
        `progress` draws a bar while `fill` measures. Fails on a bad step or target, and as
        the canonical passes and `quantize` fail on IR they cannot take.
        """
        if not isinstance(module, ModuleOp):
            raise InputError(
                f"LatencyTable.of takes qnn IR (a ModuleOp), got a {type(module).__name__}; "
                "import a torch model first with dopant.compiler.frontend.import_model."
            )
        config = target if isinstance(target, AccelConfig) else load_target(target)
        chosen = config.cols if step is None else step
        if not isinstance(chosen, int) or isinstance(chosen, bool) or chosen < 1:
            raise InputError(
                f"the latency table's step must be a positive number of channels, got "
                f"{chosen!r}; leave it out for the array's width ({config.cols})."
            )
        ir = timed_ir(module)
        rows, templates = table_rows(ir)
        disk = DiskCache.of(config, cache_dir) if disk_cache else None
        return cls(config, rows, templates, chosen, ir, disk, progress)

    def __repr__(self) -> str:
        return (
            f"LatencyTable({self.config.name}, {len(self.rows)} rows, step {self.step}, "
            f"{len(self._entries)} entries)"
        )

    @property
    def cache_file(self) -> Path | None:
        return self._disk.path if self._disk is not None else None

    def row(self, row: str | TableRow) -> TableRow:
        """The row of that name (or that row); InputError listing the rows when there is none."""
        name = row.name if isinstance(row, TableRow) else row
        if name not in self._by_name:
            raise InputError(
                f"the latency table has no row '{name}'; its rows are {', '.join(self._by_name)}."
            )
        return self._by_name[name]

    def _grid(self, full: int, unit: int) -> tuple[int, ...]:
        chunk = self.step * unit
        return (*range(chunk, full, chunk), full)

    def counts(self, row: str | TableRow) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The grid of (input counts, output counts) of `row`: multiples of `step` group
        channels (step x in_unit, step x out_unit indices) below the full width, then the full
        width. A tied (depthwise) row's grid is the pairs (ins[i], outs[i]); a vector row's two
        tuples are its channel counts; a fixed row has only its full widths."""
        r = self.row(row)
        if r.fixed:
            return (r.full_in,), (r.full_out,)
        if r.kind == "vector":
            grid = self._grid(r.full_out, r.out_unit)
            return grid, grid
        ins = self._grid(r.full_in, r.in_unit)
        if r.tied:
            return ins, tuple(k * (r.full_out // r.full_in) for k in ins)
        return ins, self._grid(r.full_out, r.out_unit)

    def _pairs(self, r: TableRow) -> Iterable[tuple[int, int]]:
        ins, outs = self.counts(r)
        return (
            zip(ins, outs, strict=True)
            if r.tied or r.kind == "vector"
            else itertools.product(ins, outs)
        )

    def _count(self, r: TableRow, value: object, full: int, unit: int, side: str) -> int:
        try:
            count = operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            raise InputError(
                f"row '{r.name}': the kept {side} count must be an integer, got {value!r}."
            ) from None
        if not 1 <= count <= full or count % unit:
            multiple = f"a multiple of {unit} " if unit > 1 else ""
            raise InputError(
                f"row '{r.name}' cannot keep {count} {side} channels; give {multiple}from "
                f"{unit} to {full} (its grid: {', '.join(map(str, self._grid(full, unit)))})."
            )
        return count

    def _check(
        self, r: TableRow, in_kept: object, out_kept: object, w: object, a: object
    ) -> tuple[int, int]:
        """The counts as ints; InputError naming the row for a bad count or width."""
        if r.kind == "vector":
            in_count = out_count = self._count(r, out_kept, r.full_out, r.out_unit, "output")
        else:
            in_count = self._count(r, in_kept, r.full_in, r.in_unit, "input")
            out_count = self._count(r, out_kept, r.full_out, r.out_unit, "output")
        if r.tied and out_count != in_count * (r.full_out // r.full_in):
            raise InputError(
                f"row '{r.name}' is a depthwise conv: it keeps {r.full_out // r.full_in} output "
                f"channel(s) per input channel, so {in_count} input channels give "
                f"{in_count * (r.full_out // r.full_in)} outputs, not {out_count}."
            )
        if r.fixed and (in_count, out_count) != (r.full_in, r.full_out):
            raise InputError(
                f"row '{r.name}' is fixed (it cannot be timed alone, so it costs its cycles in "
                f"the whole network): ask for its full widths {r.full_in} and {r.full_out}."
            )
        widths: list[tuple[str, object, tuple[int, ...]]] = [
            ("activation", a, self.config.act_bits)
        ]
        if r.kind != "vector":
            widths.insert(0, ("weight", w, self.config.weight_bits))
        for what, bits, has in widths:
            if bits not in has:
                raise InputError(
                    f"row '{r.name}': target '{self.config.name}' has no {bits!r}-bit {what}s; "
                    f"choose one of {', '.join(map(str, has))} bits."
                )
        return in_count, out_count

    def _fixed_cycles(self, name: str) -> int:
        """A fixed row's added cycles in the whole network (timed once)."""
        if self._fixed is None:
            stats = latency(self._ir, self.config)
            self._fixed = {layer.name: layer.added_cycles for layer in stats.layers}
        return self._fixed.get(name, 0)

    def _key(
        self, r: TableRow, in_count: int, out_count: int, w: int, a: int, o: int | None = None
    ) -> str:
        return self._templates[r.name].key(in_count, out_count, w, a, a if o is None else o)

    def _measure(
        self, r: TableRow, in_count: int, out_count: int, w: int, a: int, o: int | None = None
    ) -> int:
        t = self._templates[r.name]
        self.measurements += 1
        out_bits = a if o is None else o
        return measure(t, in_count, out_count, w if t.is_layer else 8, a, out_bits, self.config)

    def _lookup(
        self, r: TableRow, in_count: int, out_count: int, w: int, a: int, o: int | None = None
    ) -> int:
        """The entry, measured if it is neither in memory nor on disk (not saved yet)."""
        if r.fixed:
            return self._fixed_cycles(r.name)
        key = self._key(r, in_count, out_count, w, a, o)
        if key not in self._entries:
            self._entries[key] = self._measure(r, in_count, out_count, w, a, o)
            self._unsaved = True
        return self._entries[key]

    def _save(self) -> None:
        if self._unsaved and self._disk is not None:
            self._disk.save(self._entries)
        self._unsaved = False

    def cycles(
        self,
        row: str | TableRow,
        in_kept: int,
        out_kept: int,
        w_bits: int = 8,
        a_bits: int = 8,
        out_bits: int | None = None,
    ) -> int:
        """Cycles of `row` run alone keeping `in_kept` input and `out_kept` output channels
        (in the keys' units; any valid count, not only the grid's), weights at `w_bits`, input
        at `a_bits` and result stored at `out_bits` (default `a_bits`: in the network a result
        is stored at the widest width its readers ask for, which the caller may know); a vector
        row's count is `out_kept` (in_kept is not read) and it has no weight width. Measured on
        first use, then read from memory or disk.
        InputError naming the row and what it takes for an unknown row, a count outside
        1..full or not a multiple of the row's unit, a depthwise pair that does not match, or
        a width the target's array lacks."""
        r = self.row(row)
        in_count, out_count = self._check(r, in_kept, out_kept, w_bits, a_bits)
        if out_bits is not None and out_bits != a_bits:
            self._check(r, in_count, out_count, w_bits, out_bits)
        try:
            return self._lookup(r, in_count, out_count, w_bits, a_bits, out_bits)
        finally:
            self._save()

    def fill(self, widths: Iterable[tuple[int, int]] | None = None) -> None:
        """Measure now every grid point (`counts`) of every row at each (w_bits, a_bits) of
        `widths` (default: every pair the target's array has), with a bar if the table was
        made with `progress`; entries already known are not measured again. InputError for a
        width the target lacks."""
        if widths is None:
            pairs = list(itertools.product(self.config.weight_bits, self.config.act_bits))
        else:
            pairs = [(int(w), int(a)) for w, a in widths]
        todo: dict[str, tuple[TableRow, int, int, int, int]] = {}
        for r in self.rows:
            if r.fixed:
                self._fixed_cycles(r.name)
                continue
            chosen = pairs if r.kind != "vector" else sorted({(8, a) for _, a in pairs})
            for (in_count, out_count), (w, a) in itertools.product(self._pairs(r), chosen):
                self._check(r, in_count, out_count, w, a)
                key = self._key(r, in_count, out_count, w, a)
                if key not in self._entries:
                    todo[key] = (r, in_count, out_count, w, a)
        try:
            items = progress(
                todo.items(),
                show=self._progress,
                total=len(todo),
                what=f"latency table ({self.config.name})",
                unit="program",
            )
            for key, args in items:
                self._entries[key] = self._measure(*args)
                self._unsaved = True
        finally:
            self._save()

    @staticmethod
    def _stored_bits(
        readers: Iterable[str], output: bool, bits: Mapping[str, tuple[int, int]]
    ) -> int:
        """The width `quantize` stores a value at: the widest a_bits its `readers` ask for,
        and the output width if it (also) leaves the network or nothing reads it."""
        demands = [bits.get(reader, DEFAULT_BITS)[1] for reader in readers]
        if output or not demands:
            demands.append(OUTPUT_BITS)
        return max(demands)

    def predict(
        self,
        widths: Mapping[MemberKey, int] | None = None,
        bits: Mapping[str, tuple[int, int]] | None = None,
    ) -> int:
        """The sum over rows of their entries: each layer at its kept counts in `widths`
        (by key; a key left out keeps its full width; keys of no row are ignored, so a whole
        network's member widths can be given) and its w_bits in `bits` (by layer name; left
        out: 8, 8), at the a_bits its input is stored at: the widest asked for by the layers
        in its `shares_input` (its own when it alone reads that value); each vector row at the
        count of its out_key and the widest a_bits of its readers (8 when it has none or feeds
        the output). InputError for a `bits` name that is no layer row, or a count or width
        `cycles` refuses."""
        widths, bits = dict(widths or {}), dict(bits or {})
        layers = {r.name for r in self.rows if r.kind != "vector"}
        unknown = sorted(set(bits) - layers)
        if unknown:
            raise InputError(
                f"bits names {', '.join(unknown)}, which are not layers of this table; the "
                f"layers are {', '.join(r.name for r in self.rows if r.name in layers)}."
            )
        total = 0
        try:
            for r in self.rows:
                in_count = widths.get(r.in_key, r.full_in) if r.in_key else r.full_in
                out_count = widths.get(r.out_key, r.full_out) if r.out_key else r.full_out
                if r.kind == "vector":
                    w, a = DEFAULT_BITS[0], self._stored_bits(r.readers, r.feeds_output, bits)
                else:
                    w = bits.get(r.name, DEFAULT_BITS)[0]
                    a = self._stored_bits(r.shares_input or (r.name,), False, bits)
                in_count, out_count = self._check(r, in_count, out_count, w, a)
                total += self._lookup(r, in_count, out_count, w, a)
        finally:
            self._save()
        return total
