"""How much each layer's accuracy suffers at each bit width: the costs the bit-width selection
minimizes (HAWQ-V3, Yao et al., ICML 2021; METHODS.md, "Mixed precision under a latency budget").

`bit_sensitivity(model, layers, batches, widths, method)` gives, per conv/linear layer path ℓ
and width b, a cost of quantizing its weights (`weight[ℓ][b]`) and one of quantizing the input
activation it multiplies them with (`act[ℓ][b]`), on real data. Two methods:

- `hessian` (HAWQ-V3): Ω_w(ℓ, b) = ½ · (Tr(H_ℓ) / n_ℓ) · ‖Q_b(W_ℓ) − W_ℓ‖², H_ℓ the Hessian of
  the loss w.r.t. the layer's n_ℓ weights; Ω_a(ℓ, b) = ½ · (Tr(H_x) / n_x) · ‖Q_b(x_ℓ) − x_ℓ‖²,
  H_x the Hessian w.r.t. the layer's input x_ℓ (a zero perturbation added to it by a forward
  pre-hook), over the n_x elements of a batch's input and its squared error summed over the
  batch's samples. Each is the second-order change of the mean loss when the Hessian block is
  replaced by its average diagonal, so both are in loss units, like SOSP saliencies
  (`scores.group_saliency`), and may be added to them. The traces are Hutchinson estimates
  (E[vᵀAv] = Tr(A) for Rademacher v; `probes` vectors per batch, drawn from `seed`;
  `probes=0` computes them exactly, small layers only), by `hessian`:
  - `gauss-newton` (the default): of the Gauss-Newton blocks J_θᵀΛJ_θ (Λ the Hessian of the
    loss w.r.t. the logits), one backward pass per probe with a logit-space vector, all
    layers at once. On every network dopant compiles (piecewise linear in each single
    tensor) these blocks *are* the Hessian's diagonal blocks, so the trace is HAWQ-V3's
    Tr(H_ℓ); each layer's estimate sees only its own block and is never negative. On an
    untrained ResNet-20 (256 random samples, probes 16) two seeds agreed to a median 2.6%
    (weights) and 0.2% (inputs).
  - `exact`: Hessian-vector products (double backward), one Rademacher vector over all
    layers' weights and one over all their inputs per probe (2 · `probes` products a batch;
    weights and inputs apart, since a layer's weights and its input have large mixed
    derivatives). The off-diagonal blocks' first-order terms dominate the variance: on the
    same ResNet-20 two seeds disagreed by a median 90% and 7 of 22 weight traces came out
    negative, at 2.5-4x the time. Kept as the reference (and for networks with smooth
    activations, where only it is Tr(H_ℓ)); a negative estimate is returned as is.
- `loss`: the measured rise of the mean loss on the calibration data when only that layer's
  weights (Ω_w), or only its input (Ω_a), are at b bits and everything else stays float (a
  fall, noise at wide widths, counts as 0). In loss units like `hessian`, measured instead of
  extrapolated from second order: on the shipped ResNet-8 (512 images) the two agree within
  ~3x at 4 bits, while at 2 bits `hessian` is up to 16x below the measured rise for weights and
  up to 22x for inputs. But each cost is of one tensor alone, blind to how errors compound, and
  widths chosen by it did worse than by `hessian` in `benchmarks/codesign.py` (README). One
  forward pass per batch, layer, width and tensor; no backward.
- `output`: the measured error at the layer's output on the calibration data: Ω_w(ℓ, b) is
  the mean squared error of the layer's output with its weights at b bits (its input float),
  Ω_a(ℓ, b) with its input at b bits (its weights float). Not in loss units: comparable
  across widths of one layer, only roughly across layers.

Averages over the data weight each batch by its number of samples (means over all samples).
Q_b is dopant's own quantizer: weights by `passes._quantize.numerics.quantize_weight` (symmetric,
per output channel unless `per_channel=False`, min/max clipping), activations per tensor by
`activation_params(lo, hi, b)` and `runtime.intops.quantize` (round half to even, clamp), with
[lo, hi] the min/max of the layer's input over all batches, as `calibrate`'s minmax records it.

The model runs in eval mode; its parameters are not touched (`torch.func.functional_call` with
detached copies), and its hooks and train/eval modes are restored afterwards, even on error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from dopant.codesign._sensitivity.measured import loss_increase, output_errors
from dopant.codesign._sensitivity.quantizers import dequantized_activation, weight_error
from dopant.codesign._sensitivity.run import Costs, Run, means
from dopant.codesign._sensitivity.taps import Layer, Taps
from dopant.codesign._sensitivity.traces import exact, gauss_newton, hutchinson, loss_factors
from dopant.dialects.qnn.attrs import LAYER_WIDTHS
from dopant.passes.set_bits import check_bits
from dopant.support.errors import InputError

METHODS = ("hessian", "loss", "output")
HESSIANS = ("exact", "gauss-newton")
FORMAT = "dopant-bit-sensitivity"
VERSION = 1
Loss = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Sensitivity:
    """Per layer path, the cost of each weight width (`weight`) and of each input activation
    width (`act`), by `method` (module doc). `cost(path, w, a)` is their sum."""

    method: str
    weight: dict[str, dict[int, float]]
    act: dict[str, dict[int, float]]

    def cost(self, path: str, weight_bits: int, act_bits: int) -> float:
        return self.weight[path][weight_bits] + self.act[path][act_bits]

    def to_json(self) -> str:
        def table(costs: dict[str, dict[int, float]]) -> dict[str, dict[str, float]]:
            return {
                path: {str(b): v for b, v in sorted(row.items())} for path, row in costs.items()
            }

        data = {"format": FORMAT, "version": VERSION, "method": self.method}
        return json.dumps({**data, "weight": table(self.weight), "act": table(self.act)}, indent=1)

    @staticmethod
    def from_json(text: str, source: str = "the sensitivity") -> Sensitivity:
        """Parse `to_json`'s text; InputError naming `source` and the JSON path at fault."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(
                f"{source}:{error.lineno}:{error.colno}: not valid JSON ({error.msg})."
            ) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError(
                f"{source} is not a bit sensitivity: expected a JSON object with "
                f'"format": "{FORMAT}" (written by Sensitivity.to_json).'
            )
        if data.get("version") != VERSION:
            raise InputError(
                f"{source}: 'version' must be {VERSION}, not {data.get('version')!r}; compute "
                "it again with this dopant."
            )
        method = data.get("method")
        if method not in METHODS:
            raise InputError(f"{source}: 'method' must be one of {', '.join(METHODS)}.")
        weight, act = (
            _table_from_json(data.get(key), f"{source}: {key}") for key in ("weight", "act")
        )
        return Sensitivity(method, weight, act)


def _table_from_json(entry: Any, where: str) -> dict[str, dict[int, float]]:
    if not isinstance(entry, dict):
        raise InputError(f"{where} must be an object of layer paths.")
    table: dict[str, dict[int, float]] = {}
    for path, row in entry.items():
        at = f'{where}["{path}"]'
        if not isinstance(row, dict):
            raise InputError(f'{at} must be an object of bit widths ("2", "4", "8").')
        table[path] = {}
        for bits, value in row.items():
            if bits not in {str(b) for b in LAYER_WIDTHS}:
                raise InputError(f'{at}: "{bits}" is not a bit width; use 2, 4 or 8.')
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise InputError(f'{at}["{bits}"] is {value!r}; it must be a finite number.')
            table[path][int(bits)] = float(value)
    return table


def bit_sensitivity(
    model: nn.Module,
    layers: Sequence[str],
    batches: Iterable[tuple[Tensor, Tensor]],
    widths: Sequence[int] = (2, 4, 8),
    method: str = "hessian",
    *,
    loss: Loss | None = None,
    probes: int = 16,
    hessian: str = "gauss-newton",
    seed: int = 0,
    per_channel: bool = True,
    progress: bool = False,
) -> Sensitivity:
    """The cost of each layer in `layers` (module paths of nn.Conv2d / nn.Linear in `model`) at
    each of `widths`, for weights and input activations, by `method` (module doc).

    `batches` yields (inputs, labels) pairs, read twice (the activation ranges first), so
    they are held in memory; inputs are cast to the model's float dtype. `loss(logits,
    labels)` must be the mean over the batch (default cross-entropy with class-index labels).
    `probes` Rademacher vectors per batch estimate the traces of `method` "hessian" (0: exact),
    drawn from `seed`, by the curvature `hessian` ("gauss-newton" or "exact", module doc).
    `progress` draws a bar on a terminal.

    Raises InputError for an unknown method or Hessian, a path that is not a conv/linear
    layer of the model (listing those it has), a layer that runs more than once per forward
    pass or not at all, no batches or an empty one, negative `probes`, `probes=0` on more
    than MAX_EXACT elements (or logits), and with the default loss a label outside
    0 .. C-1; DopantError for a width other than 2, 4 or 8.
    """
    if method not in METHODS:
        raise InputError(
            f"sensitivity method '{method}' is not known; use one of {', '.join(METHODS)}."
        )
    for bits in widths:
        check_bits("widths", bits)
    widths = sorted(set(widths))
    if hessian not in HESSIANS:
        raise InputError(f"hessian '{hessian}' is not known; use one of {', '.join(HESSIANS)}.")
    if probes < 0:
        raise InputError(f"probes={probes} is negative; give a count (0: the exact trace).")
    modules = _layers(model, layers)
    floats = [p for p in model.parameters() if p.is_floating_point()]
    dtype = floats[0].dtype if floats else torch.get_default_dtype()
    device = floats[0].device if floats else torch.device("cpu")
    data = [_pair(batch, i, dtype, device) for i, batch in enumerate(batches)]
    if not data:
        raise InputError(
            "bit sensitivity needs data: the batches were empty; pass (inputs, labels) batches."
        )
    if not modules:
        return Sensitivity(method, {}, {})
    with Taps(model, modules) as taps:
        ranges = _ranges(taps, model, data, loss is None)
        run = Run(taps, model, data, ranges, widths, per_channel, progress, hessian)
        if method == "hessian":
            weight, act = _hessian(run, loss or F.cross_entropy, probes, seed)
        elif method == "loss":
            weight, act = loss_increase(run, loss or F.cross_entropy)
        else:
            weight, act = output_errors(run)
    return Sensitivity(method, weight, act)


def _layers(model: nn.Module, layers: Sequence[str]) -> dict[str, Layer]:
    found = {path: m for path, m in model.named_modules() if isinstance(m, Layer)}
    if isinstance(layers, str):
        layers = [layers]
    for path in layers:
        if path not in found:
            raise InputError(
                f"'{path}' is not a Conv2d or Linear layer of the model; its layers are: "
                f"{', '.join(found) or 'none'}."
            )
    return {path: found[path] for path in dict.fromkeys(layers)}


def _pair(
    batch: object, index: int, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    if not (isinstance(batch, tuple | list) and len(batch) >= 2):
        raise InputError(f"sensitivity batch {index} is not an (inputs, labels) pair.")
    x, y = batch[0], batch[1]
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.ndim == 0 or len(x) == 0:
        raise InputError(
            f"sensitivity batch {index} must hold torch tensors with at least one sample; "
            "leave empty batches out."
        )
    return x.to(device, dtype) if x.is_floating_point() else x.to(device), y.to(device)


def _ranges(
    taps: Taps, model: nn.Module, data: list[tuple[Tensor, Tensor]], check_labels: bool
) -> dict[str, tuple[float, float]]:
    """[min, max] of each layer's input over all batches (and, for the default loss, a check
    that every label indexes a logit)."""
    lo = dict.fromkeys(taps.modules, math.inf)
    hi = dict.fromkeys(taps.modules, -math.inf)

    def visit(path: str, x: Tensor) -> None:
        lo[path] = min(lo[path], float(x.min()))
        hi[path] = max(hi[path], float(x.max()))

    for index, (x, y) in enumerate(data):
        with torch.no_grad():
            out = taps.run(visit, partial(model, x))
        classes = out.shape[-1]
        if check_labels and not y.is_floating_point() and ((y < 0) | (y >= classes)).any():
            raise InputError(
                f"sensitivity batch {index} has a label outside 0 .. {classes - 1}, but the "
                f"model gives {classes} logits and the default cross-entropy takes class "
                "indices; shift the labels or pass a `loss` that takes them."
            )
    return {path: (lo[path], hi[path]) for path in taps.modules}


def _hessian(run: Run, loss: Loss, probes: int, seed: int) -> tuple[Costs, Costs]:
    """HAWQ-V3's costs (module doc): Tr(H_ℓ) as the sample-weighted mean of the batches'
    traces; the activation term per batch (its trace, its input's error), then weighted."""
    generator = torch.Generator().manual_seed(seed)
    paths, widths = list(run.taps.modules), run.widths
    trace = dict.fromkeys(paths, 0.0)
    act = {path: dict.fromkeys(widths, 0.0) for path in paths}
    for x, y in run.batches():
        weights, inputs, errors = _batch_traces(run, x, y, loss, probes, generator)
        for path in paths:
            trace[path] += len(x) * weights[path]
            tr_x, elements = inputs[path]
            for b in widths:
                act[path][b] += len(x) * 0.5 * tr_x / elements * errors[path][b]
    weight = {}
    for path, m in run.taps.modules.items():
        scale = 0.5 * trace[path] / run.samples / m.weight.numel()  # ½ · Tr(H_ℓ) / n_ℓ
        weight[path] = {b: scale * weight_error(m.weight, b, run.per_channel) for b in widths}
    return weight, means(act, run.samples)


def _batch_traces(
    run: Run, x: Tensor, y: Tensor, loss: Loss, probes: int, generator: torch.Generator
) -> tuple[dict[str, float], dict[str, tuple[float, int]], dict[str, dict[int, float]]]:
    """For one batch's mean loss: each layer's weight Hessian trace, (its input's Hessian trace,
    the input's element count), and ‖Q_b(x) − x‖² per width b of that input."""
    layers = run.taps.modules
    weights = {path: m.weight.detach().requires_grad_() for path, m in layers.items()}
    params = {name: p.detach() for name, p in run.model.named_parameters()}
    params.update({f"{path}.weight" if path else "weight": w for path, w in weights.items()})
    deltas: dict[str, Tensor] = {}
    errors: dict[str, dict[int, float]] = {}

    def visit(path: str, inp: Tensor) -> Tensor:
        exact = inp.detach().cpu().double().numpy()
        errors[path] = {
            b: float(((dequantized_activation(inp, *run.ranges[path], b) - exact) ** 2).sum())
            for b in run.widths
        }
        deltas[path] = torch.zeros_like(inp, requires_grad=True)
        return inp + deltas[path]

    z = run.taps.run(visit, lambda: functional_call(run.model, params, (x,)))
    leaves = [*weights.values(), *(deltas[path] for path in layers)]
    count = len(weights)
    if run.hessian == "gauss-newton":
        traces = gauss_newton(z, loss_factors(loss, z, y), leaves, probes, generator)
    else:
        grads = torch.autograd.grad(loss(z, y), leaves, create_graph=True, allow_unused=True)
        groups = [range(count), range(count, len(leaves))]  # weights apart from inputs
        traces = (
            hutchinson(grads, leaves, probes, generator, groups) if probes else exact(grads, leaves)
        )
    by_path = dict(zip(layers, traces[:count], strict=True))
    inputs = {
        path: (tr, deltas[path].numel()) for path, tr in zip(layers, traces[count:], strict=True)
    }
    return by_path, inputs, errors
