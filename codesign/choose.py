"""Choose channels per coupling group and bit widths per layer under a latency budget, jointly.

The decisions (`codesign.milp` choices):
- per prunable group, how many channels it keeps: multiples of the table's `step` (the array
  width) and its full size, the most salient channels first (HALP's chunks). Worth the sum of
  the kept channels' saliency;
- per conv/linear layer, its weight width; per activation that layers read, its width: every
  layer reading one tensor shares that width (the tensor is stored once; this is also what
  makes the layers that read one residual add's result agree, HAWQ-V3). Worth minus the
  sensitivity of that choice (`codesign.sensitivity`), times `bits_weight`.

Both values estimate a loss increase (SOSP-H saliency and HAWQ's ½·Tr(H)/n·‖ΔW‖² are second-order
loss terms), so maximizing their sum trades channels against bits on one scale.

The cost: one latency term per table row, the row's cycles (`LatencyTable.cycles`) for every
combination of the decisions it depends on: its input channels' groups, its output channels'
groups, its weight width and its input width (a vector row: the groups of the channels it
carries and the width of its result). A layer's latency depends on both its input and its output
group; the coupling is modelled exactly, not iterated: the integer program has a variable per
combination that is 1 exactly when all its decisions are picked (`milp.solve`), so the optimum
is the optimum of the per-row sum. That sum is a prediction (layers overlap in time): the
co-design loop measures every answer and moves the budget it gives here.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import SSAValue

from dopant.codesign.latency_table import LatencyTable, TableRow
from dopant.codesign.milp import Choice, Solution, Term, minimum, solve
from dopant.codesign.sensitivity import Sensitivity
from dopant.dialects.qnn import AddOp, ConcatOp, Conv2DOp, LinearOp, QnnOp
from dopant.dialects.qnn.base import forward
from dopant.passes._prune_channels.costs import MemberKey
from dopant.passes._prune_channels.groups import Group
from dopant.passes._prune_channels.plan import PruningPlan
from dopant.support.errors import InputError

MAX_COUPLED = 5  # decisions one latency term may depend on (milp.Term)
DEFAULT_BITS = (8, 8)


@dataclass(frozen=True)
class Selection:
    """One answer: the plan (None: nothing pruned), the widths per layer, what the table
    predicts for it and what it is worth."""

    plan: PruningPlan | None
    bits: dict[str, tuple[int, int]]  # layer path -> (weight bits, activation bits)
    kept: dict[str, int]  # group id -> channels kept (prunable groups)
    predicted_cycles: int  # with the correction it was solved under
    value: float
    row_cycles: dict[str, float]  # each table row's entry for this answer (uncorrected)
    picks: dict[str, int]  # the option index of each decision (`BudgetProblem.choices`)

    def bits_entries(self) -> tuple[str, ...]:
        """The widths as `set-bits` entries (`conv1=w8a8`)."""
        return tuple(f"{path}=w{w}a{a}" for path, (w, a) in self.bits.items())


@dataclass(frozen=True)
class Correction:
    """What a measured network says about the table: its measured cycles per cycle of its
    per-row sum. Solving under it predicts that network exactly and networks near it closely:
    for answers within four decisions of a measured one, this one ratio predicted to 0.9 %,
    0.7 % and 0.4 % mean error (LeNet-5, ResNet-8, ResNet-20 on edge16; 25 answers each),
    better than scaling each row by the cycles it added to the measured run (1.5 %, 1.0 %,
    0.7 %): where layers overlap, how much of a row shows moves with its neighbours."""

    scale: float

    @staticmethod
    def measured(total_cycles: int, row_cycles: Mapping[str, float]) -> Correction:
        """From a run of `total_cycles` of the network whose entries are `row_cycles`."""
        return Correction(total_cycles / sum(row_cycles.values()))


class BudgetProblem:
    """The joint choice for one network, set up once and solved for any budget (module doc).

    `module`: the network's float qnn IR the groups and the table were made from; `groups` its
    coupling groups; `scores` saliency per prunable group (needed with `prune`); `sensitivity`
    per layer and width (needed with `bits`); `widths`: the bit widths offered (those of the
    target's the table accepts).
    """

    def __init__(
        self,
        module: ModuleOp,
        groups: Sequence[Group],
        table: LatencyTable,
        *,
        scores: Mapping[str, np.ndarray] | None = None,
        sensitivity: Sensitivity | None = None,
        widths: Sequence[int] = (2, 4, 8),
        bits_weight: float = 1.0,
    ) -> None:
        self.table = table
        self.groups = {g.id: g for g in groups if g.prunable} if scores is not None else {}
        self.sensitivity = sensitivity
        tensors = _tensors(module)
        self.layers, self.readers, self.result_of = (
            tensors.layers,
            tensors.readers,
            tensors.result_of,
        )
        self.ties: list[Term] = []
        self.choices: list[Choice] = []
        self.options: dict[str, tuple[int, ...]] = {}
        self._orders: dict[str, np.ndarray] = {}
        if scores is not None:
            self._channel_choices(scores)
        if sensitivity is not None:
            config = table.config
            self.w_widths = tuple(w for w in widths if w in config.weight_bits)
            self.a_widths = tuple(a for a in widths if a in config.act_bits)
            self._bit_choices(sensitivity, bits_weight)
            self.ties = [self._tie(source, result) for source, result in tensors.ties]
        self.dims = self._dims()
        self.terms = [self._term(row) for row in table.rows]

    # -- the decisions ------------------------------------------------------------------

    def _channel_choices(self, scores: Mapping[str, np.ndarray]) -> None:
        step = self.table.step
        for group in self.groups.values():
            values = np.asarray(scores.get(group.id, ()), dtype=np.float64)
            if values.shape != (group.size,) or not np.all(np.isfinite(values)):
                raise InputError(
                    f"the saliency of group '{group.id}' must be {group.size} finite numbers "
                    f"(one per channel), got shape {list(values.shape)}; score this network."
                )
            order = np.argsort(-values, kind="stable")  # most salient first
            counts = sorted({min(group.size, j * step) for j in range(1, group.size // step + 1)})
            counts = sorted({*counts, group.size})
            cumulative = np.concatenate([[0.0], np.cumsum(values[order])])
            self._orders[group.id] = order
            self._add(f"group:{group.id}", tuple(counts), [cumulative[k] for k in counts])

    def _bit_choices(self, sensitivity: Sensitivity, weight: float) -> None:
        for path in self.layers:
            costs = sensitivity.weight.get(path, {})
            missing = [w for w in self.w_widths if w not in costs]
            if missing:
                raise InputError(
                    f"the sensitivity has no weight cost of layer '{path}' at {missing} bits; "
                    "compute it for this network and these widths."
                )
            self._add(f"w:{path}", self.w_widths, [-weight * costs[w] for w in self.w_widths])
        for value, paths in self.readers.items():
            per_width = []
            for a in self.a_widths:
                cost = 0.0
                for path in paths:
                    act = sensitivity.act.get(path, {})
                    if a not in act:
                        raise InputError(
                            f"the sensitivity has no activation cost of layer '{path}' at {a} "
                            "bits; compute it for this network and these widths."
                        )
                    cost += act[a]
                per_width.append(-weight * cost)
            self._add(f"a:{value}", self.a_widths, per_width)

    def _tie(self, source: str, result: str) -> Term:
        """An add's input is stored at least as wide as its result: narrower pairs are
        forbidden (an infinite cost)."""
        widths = self.a_widths
        allowed = np.array([[0.0 if s >= r else np.inf for r in widths] for s in widths])
        return Term((f"a:{source}", f"a:{result}"), allowed)

    def _add(self, name: str, options: tuple[int, ...], values: Sequence[float]) -> None:
        self.options[name] = options
        self.choices.append(Choice(name, tuple(float(v) for v in values)))

    def _dims(self) -> dict[MemberKey, list[tuple[str, int]]]:
        """Per member dimension, the (choice, per channel) pairs that narrow it."""
        dims: dict[MemberKey, list[tuple[str, int]]] = {}
        for group in self.groups.values():
            for m in group.members:
                dims.setdefault((m.path, m.dim), []).append((f"group:{group.id}", m.per_channel))
        return dims

    # -- the costs ----------------------------------------------------------------------

    def _term(self, row: TableRow) -> Term:
        """The row's cycles over every combination of the decisions it depends on."""
        ins = self.dims.get(row.in_key, []) if row.in_key else []
        outs = self.dims.get(row.out_key, []) if row.out_key else []
        w_choice, a_choice, o_choice = self._bit_decisions(row)
        names = list(dict.fromkeys([c for c, _ in ins + outs] + [w_choice, a_choice, o_choice]))
        names = [n for n in names if n]
        if len(names) > MAX_COUPLED:
            raise InputError(
                f"the latency of '{row.name}' depends on {len(names)} decisions "
                f"({', '.join(names)}); at most {MAX_COUPLED} are supported."
            )
        shape = tuple(len(self.options[n]) for n in names)
        costs = np.empty(shape or (1,), dtype=np.float64)
        for index in itertools.product(*(range(s) for s in shape)):
            pick = {n: self.options[n][i] for n, i in zip(names, index, strict=True)}
            widths = (w_choice, a_choice, o_choice)
            costs[index or (0,)] = self._cycles(row, ins, outs, widths, pick)
        if not names:  # a row no decision moves: a constant, kept as a one-option choice
            names = [self._constant_choice()]
            costs = costs.reshape(1)
        return Term(tuple(names), costs)

    def _bit_decisions(self, row: TableRow) -> tuple[str, str, str]:
        """The decisions that set `row`'s weight width, input width and result width ("":
        none, 8 bits): a vector row runs at its result's width."""
        if self.sensitivity is None:
            return "", "", ""
        result = self.result_of.get(row.name)
        out = f"a:{result}" if result is not None else ""
        if row.kind == "vector":
            return "", out, out
        return f"w:{row.name}", f"a:{self._value_of(row.name)}", out

    def _value_of(self, path: str) -> str | None:
        return next((v for v, paths in self.readers.items() if path in paths), None)

    def _cycles(
        self,
        row: TableRow,
        ins: list[tuple[str, int]],
        outs: list[tuple[str, int]],
        widths: tuple[str, str, str],
        pick: Mapping[str, int],
    ) -> float:
        in_kept = _kept(row.full_in, ins, pick, self.groups)
        out_kept = _kept(row.full_out, outs, pick, self.groups)
        w, a, o = (pick[c] if c else 8 for c in widths)
        return float(self.table.cycles(row, in_kept, out_kept, w, a, out_bits=o))

    def _constant_choice(self) -> str:
        if "constant" not in self.options:
            self._add("constant", (0,), [0.0])
        return "constant"

    # -- answers ------------------------------------------------------------------------

    def solve(
        self,
        budget_cycles: float,
        correction: Correction | None = None,
        near: Selection | None = None,
        changes: int | None = None,
        floor_cycles: float | None = None,
    ) -> Selection:
        """The most valuable choice whose predicted cycles (the sum of the table's entries,
        times the `correction`'s scale) are at most
        `budget_cycles`, and, with `near` and `changes`, that differs from `near` in at most
        `changes` decisions (a trust region: the correction from a measured network predicts
        networks near it best), and with `floor_cycles`, whose prediction is at least that (to
        land in a band under the budget rather than below it); `milp.Infeasible` when none is
        (naming the predicted minimum)."""
        latency = self._corrected(correction)
        terms = latency + self.ties
        limits = {"latency": budget_cycles}
        if near is not None and changes is not None:
            terms = terms + self._changes(near)
            limits["changes"] = changes
        if floor_cycles is not None:  # -(predicted) <= -floor
            terms = terms + [Term(t.choices, -t.costs, "floor") for t in latency]
            limits["floor"] = -floor_cycles
        solution = solve(self.choices, terms, limits)
        return self._selection(solution)

    def _changes(self, near: Selection) -> list[Term]:
        """One term per decision: 1 for an option other than `near`'s."""
        return [
            Term(
                (c.name,),
                np.array([float(i != near.picks[c.name]) for i in range(len(c.values))]),
                "changes",
            )
            for c in self.choices
            if len(c.values) > 1
        ]

    def minimum_cycles(self, correction: Correction | None = None) -> float:
        """The fewest predicted cycles any choice reaches."""
        return minimum(self.choices, self._corrected(correction) + self.ties, "latency")

    def smallest(self, correction: Correction | None = None) -> Selection:
        """The choice with the fewest predicted cycles (the most valuable among ties)."""
        return self.solve(self.minimum_cycles(correction) * (1 + 1e-9), correction)

    def dense_row_cycles(self) -> dict[str, float]:
        """Each row's entry for the unpruned W8A8 network."""
        return {
            row.name: float(self.table.cycles(row, row.full_in, row.full_out, *DEFAULT_BITS))
            for row in self.table.rows
        }

    def _corrected(self, correction: Correction | None) -> list[Term]:
        if correction is None:
            return self.terms
        return [Term(term.choices, term.costs * correction.scale) for term in self.terms]

    def _selection(self, solution: Solution) -> Selection:
        row_cycles = {
            row.name: float(term.costs[tuple(solution.picks[c] for c in term.choices)])
            for row, term in zip(self.table.rows, self.terms, strict=True)
        }
        picks = {name: self.options[name][i] for name, i in solution.picks.items()}
        kept = {gid: picks[f"group:{gid}"] for gid in self.groups}
        keep = {
            gid: sorted(self._orders[gid][:count].tolist())
            for gid, count in kept.items()
            if count < self.groups[gid].size
        }
        plan = PruningPlan.make(list(self.groups.values()), keep) if keep else None
        bits: dict[str, tuple[int, int]] = {}
        if self.sensitivity is not None:
            for path in self.layers:
                bits[path] = (picks[f"w:{path}"], picks[f"a:{self._value_of(path)}"])
        predicted = round(solution.totals.get("latency", 0.0))
        return Selection(
            plan, bits, kept, predicted, solution.value, row_cycles, dict(solution.picks)
        )


def _kept(
    full: int, parts: list[tuple[str, int]], pick: Mapping[str, int], groups: Mapping[str, Group]
) -> int:
    """A dimension's kept width: full less what each of its groups drops."""
    kept = full
    for choice, per_channel in parts:
        group = groups[choice.removeprefix("group:")]
        kept -= (group.size - pick[choice]) * per_channel
    return kept


def layer_paths(module: ModuleOp) -> list[str]:
    """The conv/linear layer paths of `module`, in program order."""
    return _tensors(module).layers


@dataclass(frozen=True)
class _Tensors:
    """The stored tensors of a network as far as bit widths go (`_tensors`)."""

    layers: list[str]  # conv/linear paths, program order
    readers: dict[str, list[str]]  # tensor (its first reader's path) -> the layers reading it
    ties: list[tuple[str, str]]  # (input, result) tensors meeting at a residual add
    result_of: dict[str, str | None]  # op path -> the tensor whose width its result is stored at


def _tensors(module: ModuleOp) -> _Tensors:
    """The conv/linear layers, the stored tensors they read, the residual ties between those
    tensors, and at which tensor's width each op's result is stored.

    A stored tensor is the result of a conv, linear, add or concat (or the network's input):
    batch norms, activations, pools and reshapes keep their input's quantization parameters,
    so a layer reading through them reads that tensor. `quantize` stores a tensor at the widest
    width its readers ask for, and an add asks for its result's width: so an add's inputs are
    stored at least as wide as its result (a tie), and a result no layer reads (a residual
    branch's last conv) is stored at the width of the add it feeds (None: the network's
    output, stored at 8 bits)."""
    fn = forward(module, "to choose bit widths")
    stored: dict[SSAValue, SSAValue] = {arg: arg for arg in fn.body.block.args}
    layers: list[str] = []
    by_value: dict[SSAValue, list[str]] = {}
    feeds: dict[SSAValue, SSAValue] = {}  # tensor -> the result of the add it feeds
    results: dict[str, SSAValue] = {}
    adds: list[tuple[list[SSAValue], SSAValue]] = []
    for op in fn.body.walk():
        for result in op.results:
            keeps = not isinstance(op, Conv2DOp | LinearOp | AddOp | ConcatOp) and op.operands
            stored[result] = stored.get(op.operands[0], result) if keeps else result
        if isinstance(op, QnnOp) and op.results:
            results[op.path.data] = stored[op.results[0]]
        if isinstance(op, Conv2DOp | LinearOp):
            layers.append(op.path.data)
            by_value.setdefault(stored[op.input], []).append(op.path.data)
        elif isinstance(op, AddOp):
            sources = [stored[op.lhs], stored[op.rhs]]
            adds.append((sources, op.output))
            for source in sources:
                feeds.setdefault(source, op.output)
    names = {value: paths[0] for value, paths in by_value.items()}

    def demand(value: SSAValue) -> str | None:
        while value not in names and value in feeds:
            value = feeds[value]
        return names.get(value)

    ties = [
        (names[source], names[result])
        for sources, result in adds
        for source in sources
        if source in names and result in names
    ]
    return _Tensors(
        layers,
        {names[v]: paths for v, paths in by_value.items()},
        ties,
        {path: demand(value) for path, value in results.items()},
    )
