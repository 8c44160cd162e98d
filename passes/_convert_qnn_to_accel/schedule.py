"""Ordering instructions across the four engines with the ISA's 16 counting tokens.

The lowering emits instructions in program order and says what each reads and writes: ranges
of the scratchpad or accumulator (`Chip`) and blocks of DRAM tensors (`Box`). `Schedule`
derives the dependencies (read after write, write after read, write after write) and turns
them into tokens:

- An engine runs its queue in order and completes its instructions in program order (the
  load and store engines may have several DMAs in flight, `runtime.timing`, but no DMA reads
  what an earlier one of its engine writes, and their writes land in program order), so a
  dependency on the same engine needs nothing, and of several on one other engine only the
  newest matters: its signal means every earlier instruction of its engine has completed.
- One counting token per ordered pair of engines (12 of the 16). A dependency producer ->
  consumer becomes a signal on the producer and a wait on the consumer. A consumer already
  ordered after an equal or newer producer on that engine (through an earlier wait of its
  own queue) needs no new wait, so the waits on a pair's token pair up with its signals in
  program order on both sides: the k-th wait takes the k-th signal. Every signal has exactly
  one wait, so tokens end at 0, and every dependency points backwards in program order, so
  the program cannot deadlock.
- Layers overlap with their neighbours: a layer's buffers sit at the other end of each memory
  than the previous layer's (`flipped`), its accesses are checked against the previous layer's
  (a conflict only where they overlap), and a load of the previous layer's output waits only
  for the stores of the rows and channels it reads. So a layer loads its weights, and its first
  tiles once their inputs are stored, while the previous layer finishes. Older layers are
  fenced off whole: the first instruction of each engine in a layer waits for the last
  instruction of the layer two before, which completes after everything that layer did.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from itertools import permutations

from dopant.dialects.isa import BY_MNEMONIC, ENGINES, TOKENS
from dopant.passes.tiling.conv import Fields, Pair

PAIRS = list(permutations(ENGINES, 2))
assert len(PAIRS) <= TOKENS, "one token per ordered pair of engines"

Span = tuple[int, int]  # [start, stop)


def _overlap(a: Span, b: Span) -> bool:
    return a[0] < b[1] and b[0] < a[1]


@dataclass(frozen=True)
class Chip:
    """Words [start, stop) of the scratchpad ("sp") or the accumulator ("acc")."""

    memory: str
    start: int
    stop: int

    def meets(self, other: Region) -> bool:
        return (
            isinstance(other, Chip)
            and self.memory == other.memory
            and _overlap((self.start, self.stop), (other.start, other.stop))
        )


@dataclass(frozen=True)
class Box:
    """Channels x rows x columns of the DRAM tensor at byte `tensor` with [c, h, w] `dims`.
    The same region seen with other dims (a reshape) counts as overlapping everywhere."""

    tensor: int
    dims: tuple[int, int, int]
    spans: tuple[Span, Span, Span]

    def meets(self, other: Region) -> bool:
        if not isinstance(other, Box) or self.tensor != other.tensor:
            return False
        if self.dims != other.dims:
            return True
        # Unrolled: the lowering asks this of every pair of boxes in a tensor (hot).
        (c0, c1), (h0, h1), (w0, w1) = self.spans
        (d0, d1), (i0, i1), (x0, x1) = other.spans
        return c0 < d1 and d0 < c1 and h0 < i1 and i0 < h1 and w0 < x1 and x0 < w1


Region = Chip | Box


def _space(region: Region) -> Hashable:
    """What a region lies in: a memory, or a DRAM tensor."""
    return region.memory if isinstance(region, Chip) else region.tensor


@dataclass
class _Access:
    """The last writer of a region and who read it since."""

    writer: int | None = None
    readers: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Emitted:
    """One instruction: mnemonic, the torch module path of its layer, and its fields."""

    op: str
    path: str
    fields: Fields


Table = dict[Region, _Access]


@dataclass
class Schedule:
    """Instructions in program order and the regions they touch; `finish` assigns tokens."""

    items: list[Emitted] = field(default_factory=list)
    deps: list[set[int]] = field(default_factory=list)
    layers: int = 0
    # This layer's and the previous layer's regions, by memory or DRAM tensor.
    _uses: dict[Hashable, Table] = field(default_factory=dict)
    _previous: dict[Hashable, Table] = field(default_factory=dict)
    _ends: list[int] = field(default_factory=list)  # each finished layer's last instruction
    _engines_started: set[str] = field(default_factory=set)

    @property
    def flipped(self) -> bool:
        """Whether this layer places its buffers from the top of each memory down."""
        return self.layers % 2 == 0

    def barrier(self) -> None:
        """Start a new layer (see the module docstring for what it may overlap)."""
        if self._uses:
            self._ends.append(len(self.items) - 1)
            self._previous = self._uses
        self._uses = {}
        self._engines_started = set()
        self.layers += 1

    def emit(
        self,
        op: str,
        path: str,
        fields: Fields,
        reads: Iterable[Region] = (),
        writes: Iterable[Region] = (),
    ) -> None:
        """Append an instruction reading and writing the given regions."""
        index, reads, writes = len(self.items), list(reads), list(writes)
        deps: set[int] = set()
        for region in reads + writes:
            for access in self._conflicts(region):
                if access.writer is not None:
                    deps.add(access.writer)
                if region in writes:
                    deps.update(access.readers)
        engine = BY_MNEMONIC[op].engine
        if engine not in self._engines_started:
            self._engines_started.add(engine)
            deps.update(self._ends[-2:-1])  # the layer two before this one
        for region in reads:
            self._table(region).setdefault(region, _Access()).readers.append(index)
        for region in writes:
            self._table(region)[region] = _Access(index)
        self.items.append(Emitted(op, path, fields))
        self.deps.append(deps)

    def _table(self, region: Region) -> Table:
        return self._uses.setdefault(_space(region), {})

    def _conflicts(self, region: Region) -> list[_Access]:
        space = _space(region)
        tables = (self._previous.get(space, {}), self._uses.get(space, {}))
        return [access for table in tables for old, access in table.items() if region.meets(old)]

    def finish(self) -> list[Emitted]:
        """The instructions with `wait` and `signal` masks set from the dependencies."""
        engines = [BY_MNEMONIC[item.op].engine for item in self.items]
        waits, signals = [0] * len(self.items), [0] * len(self.items)
        ordered_after: dict[tuple[str, str], int] = {}  # pair -> newest producer waited for
        for index, deps in enumerate(self.deps):
            consumer = engines[index]
            newest: dict[str, int] = {}
            for dep in deps:
                if engines[dep] != consumer:
                    newest[engines[dep]] = max(dep, newest.get(engines[dep], -1))
            for producer, dep in sorted(newest.items()):
                pair = (producer, consumer)
                if dep <= ordered_after.get(pair, -1):
                    continue
                ordered_after[pair] = dep
                token = 1 << PAIRS.index(pair)
                waits[index] |= token
                signals[dep] |= token
        return [
            Emitted(item.op, item.path, {**item.fields, "wait": w, "signal": s})
            for item, w, s in zip(self.items, waits, signals, strict=True)
        ]


class DoubleBuffer:
    """A `Pair` of buffers filled alternately. `take(key)` returns the buffer for the block
    `key` and whether it must be loaded: a block equal to the newest one loaded is reused."""

    def __init__(self, pair: Pair):
        self.slots = [Chip(pair.memory, a, a + pair.size) for a in pair.addresses]
        self.fills = 0
        self.held: Hashable = None

    def take(self, key: Hashable) -> tuple[Chip, bool]:
        """(the buffer, whether to load it)."""
        if self.fills and key == self.held:
            return self.slots[(self.fills - 1) % 2], False
        slot = self.slots[self.fills % 2]
        self.fills += 1
        self.held = key
        return slot, True

    def next(self) -> Chip:
        """The other buffer, for a block that is never reused (an output tile)."""
        slot, _ = self.take(object())  # a key equal to nothing held
        return slot
