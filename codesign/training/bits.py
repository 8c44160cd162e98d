"""Soft bit-width choices on a torch model, trained with it, that become per-layer widths.

    bits = BitChoices(model, lut)              # hooks on the model; logits per decision
    e = lut.expected_cycles(probs=bits.probabilities())
    ...train model and bits together...
    widths = bits.widths()                     # {"conv1": (4, 8), ...}
    bits.remove()

One decision per conv/linear weight (`w:<path>`) and per stored activation tensor (`a:<tensor>`,
read by one or more layers), as the LUT has them; each holds one logit per offered width, and
its probabilities are softmax(logits / temperature) (FBNet's, without Gumbel noise). While the
hooks are on, a layer runs with the mixture of its weight fake-quantized at every width,
sum_b p_b Q_b(w), and reads the mixture of its input fake-quantized at every width of its
tensor, so the task loss sees what each width costs in accuracy and the LUT what it costs in
cycles (DNAS-style mixed precision, e.g. Wu et al. 2018). Q_b is the quantize pass's grid:
symmetric per output channel for weights (+-(2^(b-1) - 1), the largest magnitude on the top
level), per tensor for inputs (unsigned 0..2^b - 1 when the batch has no negative value), with
a straight-through round. Logits start equal (uniform probabilities) unless `init` says
otherwise.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from dopant.codesign.training.hooks import Hooked, parameter_key
from dopant.codesign.training.lut import LatencyLUT
from dopant.support.errors import InputError


def fake_quant(x: Tensor, bits: int, *, per_channel: bool) -> Tensor:
    """`x` on the quantize pass's grid of `bits` (module doc), rounding with a straight-through
    gradient. Per channel: one scale per index of axis 0 (weights); else one per tensor."""
    magnitude = x.detach().abs()
    signed = per_channel or bool((x.detach() < 0).any())
    levels = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    top = magnitude.flatten(1).amax(dim=1) if per_channel else magnitude.amax()
    scale = torch.where(top > 0, top / levels, torch.ones_like(top))
    if per_channel:
        scale = scale.reshape(-1, *([1] * (x.ndim - 1)))
    q = x / scale
    rounded = q + (torch.round(q) - q).detach()
    low = -levels if signed else 0
    return rounded.clamp(low, levels) * scale


class BitChoices(Hooked):
    """Logits over the offered widths of every bit decision of `lut`, applied to `model`'s
    conv/linear layers by hooks from construction until `remove()` (module doc). `init` maps a
    decision to the width its logits favour (`init_logit` above the others)."""

    def __init__(
        self,
        model: nn.Module,
        lut: LatencyLUT,
        *,
        temperature: float = 1.0,
        init: Mapping[str, int] | None = None,
        init_logit: float = 2.0,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise InputError(f"the bit choices' temperature must be positive, got {temperature}.")
        names = [n for n in lut.decisions if n.startswith(("w:", "a:"))]
        if not names:
            raise InputError("the LUT has no bit decisions; build it with bits=True.")
        self.lut = lut
        self.temperature = temperature
        self.names = {parameter_key(n): n for n in names}
        self.logits = nn.ParameterDict(
            {parameter_key(n): nn.Parameter(torch.zeros(len(lut.decisions[n]))) for n in names}
        )
        for name, width in (init or {}).items():
            if name not in names:
                raise InputError(
                    f"init names '{name}', which is no bit decision; they are {', '.join(names)}."
                )
            if width not in lut.decisions[name]:
                raise InputError(
                    f"init gives '{name}' {width} bits; it offers {lut.decisions[name]} bits."
                )
            with torch.no_grad():
                self.logits[parameter_key(name)][lut.decisions[name].index(width)] = init_logit
        modules = dict(model.named_modules())
        missing = [path for path in lut.layers if path not in modules]
        if missing:
            raise InputError(
                f"the model has no module '{missing[0]}', a layer of the LUT; make the LUT "
                "from this model."
            )
        self._weighted = [modules[path] for path in lut.layers]
        for path, module in zip(lut.layers, self._weighted, strict=True):
            name = f"w:{path}"
            mixed = _MixedWeight(lut.decisions[name], functools.partial(self._probability, name))
            parametrize.register_parametrization(module, "weight", mixed)
            hook = self._input_hook(lut.input_of(path))
            self._handles.append(module.register_forward_pre_hook(hook))

    def remove(self) -> None:
        """Take the hooks and the weight mixtures off the model, its float weights as they
        were trained (the logits stay for `widths`)."""
        super().remove()
        for module in self._weighted:
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        self._weighted = []

    def probabilities(self) -> dict[str, Tensor]:
        """Each decision's probabilities over its options, by decision name: what
        `LatencyLUT.expected_cycles(probs=...)` takes."""
        return {name: self._probability(name) for name in self.names.values()}

    def _probability(self, name: str) -> Tensor:
        return torch.softmax(self.logits[parameter_key(name)] / self.temperature, dim=0)

    def widths(self) -> dict[str, tuple[int, int]]:
        """Per layer, (w_bits, a_bits): each decision's most likely width, an add's inputs
        raised to its result's width where they came out narrower (`quantize` stores them at
        least that wide)."""
        with torch.no_grad():
            picked = {
                name: self.lut.decisions[name][int(torch.argmax(p))]
                for name, p in self.probabilities().items()
            }
        changed = True
        while changed:  # ties chain through consecutive residual blocks
            changed = False
            for source, result in self.lut.ties:
                if picked[source] < picked[result]:
                    picked[source], changed = picked[result], True
        return {
            path: (picked[f"w:{path}"], picked[self.lut.input_of(path)]) for path in self.lut.layers
        }

    def _input_hook(
        self, activation: str
    ) -> Callable[[nn.Module, tuple[Tensor, ...]], tuple[Tensor, ...]]:
        options = self.lut.decisions[activation]

        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            probs = self._probability(activation)
            x = inputs[0]
            mixed = sum(
                p * fake_quant(x, b, per_channel=False) for p, b in zip(probs, options, strict=True)
            )
            return (mixed, *inputs[1:])

        return hook


class _MixedWeight(nn.Module):
    """A parametrization: the weight as the mixture of its fake-quantized copies."""

    def __init__(self, options: tuple[int, ...], probs: Callable[[], Tensor]) -> None:
        super().__init__()
        self.options = options
        self.probs = probs  # a function, so the choices' logits are no submodule of the model

    def forward(self, w: Tensor) -> Tensor:
        return sum(
            p * fake_quant(w, b, per_channel=True)
            for p, b in zip(self.probs(), self.options, strict=True)
        )
