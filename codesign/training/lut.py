"""The latency table as torch tensors, and the expected latency of soft choices with gradients.

    lut = LatencyLUT.of(model, x[:1], "edge16", widths=(4, 8))
    lut.decisions                    # {"group:conv1": (16, 32, ...), "w:conv1": (4, 8), ...}
    e = lut.expected_cycles(kept={"conv1": gates.sum()}, probs={"w:fc": w_probs})
    e.backward()                     # d E[cycles] / d gates, d E[cycles] / d logits

The decisions are the co-design selector's (`codesign.choose.BudgetProblem`): per prunable
coupling group, how many channels it keeps (a grid of multiples of the array width and its full
size); per conv/linear layer, its weight width (`w:<path>`); per stored activation tensor, its
width (`a:<tensor>`, named after its first reader; every layer reading it multiplies at it).
Every table row's cycles is a tensor over the decisions it depends on, the same numbers the
selector's integer program is built from (`LatencyTable.cycles`).

The expected latency (ProxylessNAS, FBNet; METHODS.md "Latency inside training") takes one
probability vector per decision, independent across decisions, and sums over rows the row's
cycles contracted with the probabilities of its decisions: the exact expectation of the table's
sum, multilinear in the probabilities, so its gradient is exact too. A group can instead be given
its expected kept count (e.g. the sum of sigmoid channel gates): it is spread over the two grid
counts around it, so the latency is the table's, linearly interpolated between grid counts (and
held at the grid's ends). A decision given nothing is dense: full width, 8 bits.

Like the table, the sum of entries is a prediction (layers overlap in time): by default it is
scaled by the dense W8A8 network's measured cycles per cycle of its entries (`scale`, the
selector's first correction), so the dense network predicts exactly what the timing model
measures and the units are the simulator's cycles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from xdsl.dialects.builtin import ModuleOp

from dopant.backend.target import AccelConfig
from dopant.codesign._latency.rows import timed_ir
from dopant.codesign.choose import BudgetProblem, layer_paths
from dopant.codesign.latency_table import LatencyTable
from dopant.codesign.sensitivity import Sensitivity
from dopant.compiler.driver import latency
from dopant.compiler.frontend import import_model
from dopant.passes._prune_channels.groups import Group, coupling_groups
from dopant.support.errors import InputError

DENSE_BITS = 8  # the width a decision given nothing takes (the dense W8A8 network)
PROBABILITY_TOLERANCE = 1e-4  # how far from 1 a probability vector's sum may be


class LatencyLUT:
    """Per-row cycles of one network on one target as tensors over the selector's decisions
    (module doc). `decisions` maps each decision to its options (channel counts or bit widths),
    `groups` the prunable coupling groups by id, `layers` the conv/linear paths, `activations`
    each stored tensor's reader layers, `ties` the (input, result) tensors of residual adds;
    `dense_cycles` is the dense W8A8 network's measured latency and `scale` the correction."""

    def __init__(
        self,
        problem: BudgetProblem,
        config: AccelConfig,
        dense_cycles: int,
        layers: Sequence[str],
    ) -> None:
        self.config = config
        self.dense_cycles = dense_cycles
        self.groups: dict[str, Group] = dict(problem.groups)
        self.layers = tuple(layers)
        self.activations = {name: tuple(paths) for name, paths in problem.readers.items()}
        self.decisions = {n: o for n, o in problem.options.items() if n != "constant"}
        self.ties = tuple((t.choices[0], t.choices[1]) for t in problem.ties)
        self.rows = tuple(row.name for row in problem.table.rows)
        self._terms = [
            (tuple(n for n in term.choices if n != "constant"), torch.from_numpy(term.costs))
            for term in problem.terms
        ]
        self._reads = {path: name for name, paths in self.activations.items() for path in paths}
        dense = self._sum(self._dense(), list(range(len(self._terms))))
        self.scale = dense_cycles / float(dense)

    @classmethod
    def of(
        cls,
        model: nn.Module | ModuleOp,
        example_inputs: Tensor | Sequence[Tensor] | None = None,
        target: str | AccelConfig = "edge16",
        *,
        channels: bool = True,
        bits: bool = True,
        widths: Sequence[int] = (2, 4, 8),
        step: int | None = None,
        cache_dir: str | None = None,
        progress: bool = False,
    ) -> LatencyLUT:
        """The LUT of a torch `model` traced on `example_inputs` (or of its float `qnn` IR) on
        `target`. `channels`/`bits`: which decisions it has (pruning, bit widths); `widths` the
        bit widths offered (those the target's array has are kept); `step` the channel grid
        (default the array width); `cache_dir` and `progress` as `LatencyTable.of`. Measures
        every entry the decisions can reach (cached on disk like the table's) and the dense
        network once. InputError for a torch model without example inputs, no decision, or
        what `LatencyTable.of` refuses."""
        if not channels and not bits:
            raise InputError("a latency LUT needs channels, bits or both; neither was asked for.")
        if isinstance(model, ModuleOp):
            module = model
        elif example_inputs is None:
            raise InputError(
                "LatencyLUT.of traces a torch model: give example_inputs (one batch of inputs)."
            )
        else:
            module = import_model(model, example_inputs)
        table = LatencyTable.of(module, target, step=step, cache_dir=cache_dir, progress=progress)
        groups = coupling_groups(module)
        layers = layer_paths(module)
        zeros = {g.id: np.zeros(g.size) for g in groups if g.prunable} if channels else None
        offered = tuple(widths)
        if progress:
            pairs = [(w, a) for w in offered for a in offered]
            table.fill([(w, a) for w, a in pairs if w in table.config.weight_bits])
        problem = BudgetProblem(
            module,
            groups,
            table,
            scores=zeros,
            sensitivity=_no_costs(layers, offered) if bits else None,
            widths=offered,
        )
        dense = latency(timed_ir(module), table.config).total_cycles
        return cls(problem, table.config, dense, layers)

    def __repr__(self) -> str:
        return (
            f"LatencyLUT({self.config.name}, {len(self.rows)} rows, "
            f"{len(self.decisions)} decisions, dense {self.dense_cycles:,} cycles)"
        )

    def tensors(self) -> list[tuple[tuple[str, ...], Tensor]]:
        """Each row's cycles (uncorrected, float64) with the decisions along its axes, in row
        order; a row no decision moves is a 0-d tensor."""
        return [(names, costs if names else costs.reshape(())) for names, costs in self._terms]

    def expected_cycles(
        self,
        kept: Mapping[str, Tensor | float] | None = None,
        probs: Mapping[str, Tensor] | None = None,
        *,
        corrected: bool = True,
    ) -> Tensor:
        """The expected cycles (a float64 scalar with gradients) when group `g` keeps `kept[g]`
        channels in expectation and decision `d` takes option i with probability
        `probs[d][i]` (module doc); decisions given nothing are dense. `corrected`: times
        `scale` (the simulator's cycles), else the table's raw sum. InputError naming the
        decision for an unknown name, a group given both ways, or a probability vector of the
        wrong length, with negative entries or not summing to 1."""
        dist = self._dense()
        for group, count in (kept or {}).items():
            name = f"group:{group}"
            if name not in self.decisions:
                raise InputError(
                    f"'{group}' is not a prunable group of this LUT; its groups are "
                    f"{', '.join(self.groups) or 'none'}."
                )
            if probs is not None and name in probs:
                raise InputError(f"group '{group}' is given both a kept count and probabilities.")
            dist[name] = _spread(torch.as_tensor(count, dtype=torch.float64), self.decisions[name])
        for name, p in (probs or {}).items():
            dist[name] = self._checked(name, p)
        total = self._sum(dist, list(range(len(self._terms))))
        return total * self.scale if corrected else total

    def cycles(
        self,
        kept: Mapping[str, int] | None = None,
        bits: Mapping[str, tuple[int, int]] | None = None,
        *,
        corrected: bool = True,
    ) -> float:
        """The table's cycles for one hard choice: group `g` keeps `kept[g]` channels (a grid
        count), layer `p` runs at `bits[p]` = (w_bits, a_bits) (a tensor is stored at the widest
        a_bits of its readers); what is left out is dense. InputError for a count off the grid,
        a width not offered or a name that is no group or layer."""
        probs: dict[str, Tensor] = {}
        for group, count in (kept or {}).items():
            probs[f"group:{group}"] = self._one_hot(f"group:{group}", count, f"group '{group}'")
        stored: dict[str, int] = {}
        for path, (w, a) in (bits or {}).items():
            if path not in self._reads or f"w:{path}" not in self.decisions:
                raise InputError(
                    f"'{path}' is not a layer with bit decisions in this LUT; its layers are "
                    f"{', '.join(self.layers)}."
                )
            probs[f"w:{path}"] = self._one_hot(f"w:{path}", w, f"layer '{path}' (weights)")
            tensor = f"a:{self._reads[path]}"
            stored[tensor] = max(a, stored.get(tensor, a))
        for tensor, a in stored.items():
            probs[tensor] = self._one_hot(tensor, a, f"the input of {tensor[2:]}")
        with torch.no_grad():
            return float(self.expected_cycles(probs=probs, corrected=corrected))

    def input_of(self, layer: str) -> str:
        """The activation decision (`a:<tensor>`) whose width `layer` multiplies at."""
        if layer not in self._reads:
            raise InputError(f"'{layer}' is not a layer of this LUT; its layers are {self.layers}.")
        return f"a:{self._reads[layer]}"

    # -- internals ------------------------------------------------------------------------

    def _dense(self) -> dict[str, Tensor]:
        """One-hot vectors on the dense option of every decision."""
        dist = {}
        for name, options in self.decisions.items():
            wide = name.startswith("group:") or DENSE_BITS not in options
            dense = max(options) if wide else DENSE_BITS
            dist[name] = torch.tensor([float(o == dense) for o in options], dtype=torch.float64)
        return dist

    def _sum(self, dist: Mapping[str, Tensor], terms: list[int]) -> Tensor:
        total = torch.zeros((), dtype=torch.float64)
        for index in terms:
            names, costs = self._terms[index]
            value = costs if names else costs.reshape(())
            for name in reversed(names):  # contract the last axis with its decision's vector
                value = value @ dist[name]
            total = total + value
        return total

    def _checked(self, name: str, p: Tensor) -> Tensor:
        if name not in self.decisions:
            raise InputError(
                f"'{name}' is not a decision of this LUT; its decisions are "
                f"{', '.join(self.decisions)}."
            )
        options = self.decisions[name]
        p = torch.as_tensor(p, dtype=torch.float64)
        if p.shape != (len(options),):
            raise InputError(
                f"the probabilities of '{name}' must be {len(options)} numbers, one per option "
                f"{options}, got shape {list(p.shape)}."
            )
        with torch.no_grad():
            if bool((p < 0).any()) or abs(float(p.sum()) - 1.0) > PROBABILITY_TOLERANCE:
                raise InputError(
                    f"the probabilities of '{name}' must be non-negative and sum to 1 (e.g. a "
                    f"softmax), got {p.tolist()}."
                )
        return p

    def _one_hot(self, name: str, option: int, what: str) -> Tensor:
        if name not in self.decisions:
            raise InputError(f"{what} has no decision '{name}' in this LUT.")
        options = self.decisions[name]
        if option not in options:
            raise InputError(f"{what} cannot take {option}; its options are {options}.")
        return torch.tensor([float(o == option) for o in options], dtype=torch.float64)


def _spread(count: Tensor, options: tuple[int, ...]) -> Tensor:
    """Probabilities on the two grid options around `count` whose mean is `count` (clamped to
    the grid), differentiable in `count`."""
    if count.ndim != 0:
        raise InputError(f"a kept count must be one number, got shape {list(count.shape)}.")
    grid = torch.tensor(options, dtype=torch.float64)
    if len(options) == 1:
        return torch.ones(1, dtype=torch.float64)
    c = count.clamp(grid[0], grid[-1])
    upper = torch.searchsorted(grid, c.detach().reshape(1), right=True).clamp(1, len(grid) - 1)
    lo, hi = grid[upper - 1], grid[upper]
    t = ((c - lo) / (hi - lo)).reshape(1)
    return torch.zeros(len(grid), dtype=torch.float64).scatter(
        0, torch.cat([upper - 1, upper]), torch.cat([1 - t, t])
    )


def _no_costs(layers: Sequence[str], widths: Sequence[int]) -> Sensitivity:
    """A sensitivity of zeros: the LUT reads only the selector's latency terms, not its values."""
    zeros = {path: {w: 0.0 for w in widths} for path in layers}
    return Sensitivity("output", zeros, {path: dict(row) for path, row in zeros.items()})
