"""The latency LUT as tensors, the expected latency and its gradient, the soft choices and a
model trained under a latency budget, checked against the table and the simulator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dopant.codesign.latency_table import LatencyTable
from dopant.codesign.training import (
    BitChoices,
    ChannelGates,
    LatencyLoss,
    LatencyLUT,
    budget_penalty,
    fbnet_loss,
    finalize,
)
from dopant.codesign.training.bits import fake_quant
from dopant.compiler.driver import compile_module, latency, quantize_network
from dopant.compiler.frontend import import_model
from dopant.compiler.models.datasets import load_sample
from dopant.compiler.models.pretrained import load_pretrained
from dopant.passes._prune_channels.plan import PruningPlan
from dopant.passes.prune_channels import prune as prune_ir
from dopant.passes.set_bits import set_layer_bits
from dopant.support.errors import InputError

TARGET = "small8"  # an 8-wide array: a grid of 8, 16, 24 channels
WIDTHS = (4, 8)
# The largest error of the table's raw sum against the whole network measured in the latency
# table benchmark (README, "Latency tables": every prediction high, by 0.1% to 17.4%).
TABLE_ERROR = 0.174


# Where each row's result is stored, read off Tiny.forward: the tensor a reader multiplies at
# (the stem's output is the block's input; the block's second conv feeds the add, whose result
# the head conv reads; the logits leave at 8 bits).
RESULT = {
    "stem": "a:block.conv1",
    "block.conv1": "a:block.conv2",
    "block.conv2": "a:conv",
    "block/add": "a:conv",
    "conv": "a:fc",
    "adaptive_avg_pool2d": "a:fc",
    "fc": None,
}


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class Tiny(nn.Module):
    """A stem, one residual block (a tie between stored widths), a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.block = Block(16)
        self.conv = nn.Conv2d(16, 24, 3, stride=2, padding=1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(F.relu(self.bn(self.stem(x))))
        x = F.relu(self.conv(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    train, _ = load_sample()
    return train.x, train.y


@pytest.fixture(scope="module")
def lut(data: tuple[np.ndarray, np.ndarray]) -> LatencyLUT:
    torch.manual_seed(0)
    return LatencyLUT.of(Tiny().eval(), torch.from_numpy(data[0][:1]), TARGET, widths=WIDTHS)


def _soft_point(
    lut: LatencyLUT, seed: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Kept counts strictly between grid points and random softmax probabilities, float64
    leaves with gradients."""
    rng = np.random.default_rng(seed)
    kept = {}
    for gid in lut.groups:
        grid = lut.decisions[f"group:{gid}"]
        if len(grid) > 1:
            i = rng.integers(len(grid) - 1)
            count = grid[i] + rng.uniform(0.2, 0.8) * (grid[i + 1] - grid[i])
            kept[gid] = torch.tensor(count, dtype=torch.float64, requires_grad=True)
    logits = {
        name: torch.tensor(rng.normal(size=len(options)), requires_grad=True)
        for name, options in lut.decisions.items()
        if not name.startswith("group:")
    }
    return kept, logits


def test_lut_has_the_decisions_of_the_network(lut: LatencyLUT) -> None:
    assert lut.decisions["group:stem"] == (8, 16)  # stem, block convs and add: one group
    assert lut.decisions["group:conv"] == (8, 16, 24)
    assert lut.decisions["w:block.conv1"] == WIDTHS
    # the block's input is stored at least as wide as the add's result that the head reads
    assert ("a:block.conv1", "a:conv") in lut.ties
    # the dense network, corrected, is what the timing model measured on it
    assert lut.cycles() == pytest.approx(lut.dense_cycles, abs=1e-6)


def test_expected_gradient_matches_finite_differences(lut: LatencyLUT) -> None:
    kept, logits = _soft_point(lut, seed=1)

    def expected(kept: dict, logits: dict) -> torch.Tensor:
        probs = {n: torch.softmax(v, 0) for n, v in logits.items()}
        return lut.expected_cycles(kept=kept, probs=probs)

    expected(kept, logits).backward()
    h = 1e-5
    checked = 0
    for where, key in [(kept, k) for k in kept] + [(logits, k) for k in logits]:
        leaf = where[key]
        for i in range(leaf.numel()):
            values = []
            for sign in (1, -1):
                moved = leaf.detach().clone().reshape(-1)
                moved[i] += sign * h
                shifted = {**where, key: moved.reshape(leaf.shape)}
                with torch.no_grad():
                    args = (shifted, logits) if where is kept else (kept, shifted)
                    values.append(float(expected(*args)))
            numeric = (values[0] - values[1]) / (2 * h)
            analytic = float(leaf.grad.reshape(-1)[i])
            assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-4), (key, i)
            checked += 1
    assert checked > 20 and any(abs(float(v.grad)) > 1 for v in kept.values())


def _member_widths(lut: LatencyLUT, kept: dict[str, int]) -> dict[tuple[str, str], int]:
    """Each member dimension's kept width, as `LatencyTable.predict` takes them."""
    widths: dict[tuple[str, str], int] = {}
    for gid, count in kept.items():
        group = lut.groups[gid]
        for m in group.members:
            full = widths.get((m.path, m.dim), m.channels.size)
            widths[(m.path, m.dim)] = full - (group.size - count) * m.per_channel
    return widths


def _hard_point(lut: LatencyLUT, seed: int) -> tuple[dict[str, int], dict[str, tuple[int, int]]]:
    """Random grid counts and widths; an add's input at least as wide as its result."""
    rng = np.random.default_rng(seed)
    kept = {g: int(rng.choice(lut.decisions[f"group:{g}"])) for g in lut.groups}
    stored = {name: int(rng.choice(WIDTHS)) for name in lut.decisions if name.startswith("a:")}
    for source, result in lut.ties:
        stored[source] = max(stored[source], stored[result])
    bits = {p: (int(rng.choice(WIDTHS)), stored[lut.input_of(p)]) for p in lut.layers}
    return kept, bits


def _one_hot(options: tuple[int, ...], option: int) -> torch.Tensor:
    return torch.tensor([float(o == option) for o in options], dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_hot_equals_the_table(
    lut: LatencyLUT, data: tuple[np.ndarray, np.ndarray], seed: int
) -> None:
    kept, bits = _hard_point(lut, seed)
    probs = {f"group:{g}": _one_hot(lut.decisions[f"group:{g}"], k) for g, k in kept.items()}
    for path, (w, a) in bits.items():
        probs[f"w:{path}"] = _one_hot(WIDTHS, w)
        probs[lut.input_of(path)] = _one_hot(WIDTHS, a)
    raw = float(lut.expected_cycles(probs=probs, corrected=False))
    # the reference: the latency table's entries summed by hand, each row at its kept widths,
    # its weight width, the width of the tensor it reads and the one its result is stored at
    table = LatencyTable.of(import_model(Tiny(), torch.from_numpy(data[0][:1])), TARGET)
    stored = {lut.input_of(p): a for p, (_, a) in bits.items()}
    widths = _member_widths(lut, kept)
    reference = 0
    for row in table.rows:
        out_kept = widths.get(row.out_key, row.full_out)
        in_kept = widths.get(row.in_key, row.full_in) if row.in_key else out_kept
        result = stored[RESULT[row.name]] if RESULT[row.name] else 8
        w, a = (bits[row.name][0], bits[row.name][1]) if row.kind != "vector" else (8, result)
        reference += table.cycles(row, in_kept, out_kept, w, a, out_bits=result)
    assert raw == pytest.approx(reference, rel=1e-12)
    assert lut.cycles(kept, bits, corrected=False) == pytest.approx(raw, rel=1e-12)
    assert lut.cycles(kept, bits) == pytest.approx(raw * lut.scale, rel=1e-12)
    # a kept count on the grid, given as a count, is that one-hot too
    counts = {g: torch.tensor(float(k), dtype=torch.float64) for g, k in kept.items()}
    rest = {n: p for n, p in probs.items() if not n.startswith("group:")}
    assert float(lut.expected_cycles(kept=counts, probs=rest, corrected=False)) == pytest.approx(
        raw
    )


def _train(
    model: nn.Module, objective: LatencyLoss, data: tuple[np.ndarray, np.ndarray], epochs: int
) -> None:
    choices = [c for c in (objective.gates, objective.bits) if c is not None]
    optimizer = torch.optim.Adam(
        [
            {"params": model.parameters(), "lr": 0.01},
            {"params": [p for c in choices for p in c.parameters()], "lr": 0.1},
        ]
    )
    x, y = torch.from_numpy(data[0]), torch.from_numpy(data[1].astype(np.int64))
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(64):
            loss = objective(F.cross_entropy(model(x[batch]), y[batch]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()


def test_a_model_trained_with_the_latency_loss_meets_its_budget_on_the_simulator(
    lut: LatencyLUT, data: tuple[np.ndarray, np.ndarray]
) -> None:
    torch.manual_seed(0)
    model = Tiny()
    example = torch.from_numpy(data[0][:1])
    gates, bits = ChannelGates(model, lut), BitChoices(model, lut, init={})
    objective = LatencyLoss(lut, lut.dense_cycles, gates=gates, bits=bits, weight=10.0)
    start = float(objective.expected_cycles().detach())
    budget = 0.5 * start  # under the uniform start, which is under the dense network
    objective.budget_cycles = budget
    _train(model, objective, data, epochs=3)
    result = finalize(model, example, lut, gates=gates, bits=bits, calibration=data[0][:64])
    assert objective.last["expected_cycles"] < start
    assert result.measured_cycles <= budget
    assert result.plan is not None and any(k < lut.groups[g].size for g, k in result.kept.items())
    # the measured cycles are a fresh compile's; the table's sum is high (layers overlap in the
    # network, each entry is a layer alone)
    compiled = compile_module(result.quantized, target=TARGET)
    assert compiled.program.stats.total_cycles == result.measured_cycles
    raw = lut.cycles(result.kept, result.bits, corrected=False)
    assert raw >= result.measured_cycles
    assert result.table_cycles == pytest.approx(raw * lut.scale)
    # the hooks are gone: the model runs as a plain torch model again
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert {n for n, _ in model.named_parameters()} == {n for n, _ in Tiny().named_parameters()}


@pytest.mark.parametrize("seed", [0, 1])
def test_the_table_predicts_lenet5_within_the_error_measured_before(
    data: tuple[np.ndarray, np.ndarray], seed: int
) -> None:
    """The raw table against the timing model on the network a hard choice makes, on the model
    and target whose table error the latency-table benchmark reported (README: LeNet-5 on edge16,
    every prediction high, at most 17.4% over all models)."""
    model = load_pretrained("lenet5")
    example = torch.from_numpy(data[0][:1])
    lenet = LatencyLUT.of(model, example, "edge16", widths=WIDTHS)
    kept, bits = _hard_point(lenet, seed)
    network = import_model(model, example)
    keep = {g: list(range(k)) for g, k in kept.items() if k < lenet.groups[g].size}
    if keep:
        prune_ir(network, PruningPlan.make(list(lenet.groups.values()), keep))
    set_layer_bits(network, [f"{p}=w{w}a{a}" for p, (w, a) in bits.items()])
    measured = latency(quantize_network(network, data[0][:32]), "edge16").total_cycles
    raw = lenet.cycles(kept, bits, corrected=False)
    assert 0 <= raw / measured - 1 <= TABLE_ERROR


def test_gates_and_bits_change_the_forward_pass_as_stated(
    lut: LatencyLUT, data: tuple[np.ndarray, np.ndarray]
) -> None:
    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.from_numpy(data[0][:8])
    plain = model(x).detach()
    with ChannelGates(model, lut, init_logit=40.0) as gates:  # every gate 1.0 in float32
        assert torch.equal(model(x), plain)
        for logit in gates.logits.values():
            logit.data[:] = -40.0  # every gate 0: the gated channels are gone
        # every channel of every group at 0 (the conv's gate is on its own output, no batch
        # norm follows it): the logits are the head's bias
        assert torch.allclose(model(x), model.fc.bias.expand(8, -1), atol=1e-6)
        assert gates.kept_counts() == {
            "stem": 8,
            "block.conv1": 8,
            "conv": 8,
        }  # the grid's smallest count
    assert torch.equal(model(x), plain)
    rng = np.random.default_rng(0)
    init = {name: int(rng.choice(WIDTHS)) for name in lut.decisions if name[:2] in ("w:", "a:")}
    with BitChoices(model, lut, init=init, init_logit=80.0):  # every choice one-hot in float32
        mixed = model(x)
    assert torch.equal(model(x), plain)

    def q(path: str, tensor: torch.Tensor, weight: bool) -> torch.Tensor:
        bits = init[f"w:{path}"] if weight else init[lut.input_of(path)]
        return fake_quant(tensor, bits, per_channel=weight)

    def conv(path: str, x: torch.Tensor) -> torch.Tensor:
        layer = model.get_submodule(path)
        return F.conv2d(
            q(path, x, False), q(path, layer.weight, True), layer.bias, layer.stride, layer.padding
        )

    h = F.relu(model.bn(conv("stem", x)))
    h = F.relu(
        h + model.block.bn2(conv("block.conv2", F.relu(model.block.bn1(conv("block.conv1", h)))))
    )
    h = torch.flatten(F.adaptive_avg_pool2d(F.relu(conv("conv", h)), 1), 1)
    expected = F.linear(q("fc", h, False), q("fc", model.fc.weight, True), model.fc.bias)
    assert torch.allclose(mixed, expected, atol=1e-6)
    w = model.fc.weight.detach().numpy()
    top = np.abs(w).max(axis=1, keepdims=True)
    four = np.clip(np.round(w / top * 7), -7, 7) * top / 7  # 4 bits: +-(2^3 - 1) levels
    assert np.allclose(fake_quant(model.fc.weight, 4, per_channel=True).detach().numpy(), four)


def test_fake_quant_is_the_quantize_pass_grid() -> None:
    x = torch.tensor([0.0, 0.3, 1.0, 2.55])
    # unsigned 4 bits: 15 levels of 2.55 / 15 = 0.17
    expected = np.round(np.array([0.0, 0.3, 1.0, 2.55]) / 0.17) * 0.17
    assert np.allclose(fake_quant(x, 4, per_channel=False).numpy(), expected)
    signed = torch.tensor([-1.0, 0.2, 0.6])  # 2^(4-1) - 1 = 7 levels of 1/7
    assert np.allclose(
        fake_quant(signed, 4, per_channel=False).numpy(), np.round(signed.numpy() * 7) / 7
    )
    leaf = x.clone().requires_grad_()
    fake_quant(leaf, 4, per_channel=False).sum().backward()
    assert torch.equal(leaf.grad, torch.ones(4))  # straight through


def test_loss_terms_by_hand() -> None:
    e = torch.tensor(1500.0, dtype=torch.float64)
    assert float(budget_penalty(e, 1000.0, weight=2.0)) == pytest.approx(2.0 * 0.5)
    assert float(budget_penalty(torch.tensor(900.0), 1000.0)) == 0.0
    ce = torch.tensor(2.0)
    # FBNet: 2.0 * 0.2 * (log 1500 / log 1000) ** 0.6
    assert float(fbnet_loss(ce, e, 1000.0)) == pytest.approx(
        2.0 * 0.2 * (np.log(1500) / np.log(1000)) ** 0.6
    )


def test_bad_input_names_the_decision(lut: LatencyLUT) -> None:
    with pytest.raises(InputError, match="'nope' is not a prunable group"):
        lut.expected_cycles(kept={"nope": torch.tensor(8.0)})
    with pytest.raises(InputError, match=r"'w:fc' must be 2 numbers"):
        lut.expected_cycles(probs={"w:fc": torch.tensor([0.2, 0.3, 0.5])})
    with pytest.raises(InputError, match="non-negative and sum to 1"):
        lut.expected_cycles(probs={"w:fc": torch.tensor([1.1, -0.1])})
    with pytest.raises(InputError, match="'w:none' is not a decision"):
        lut.expected_cycles(probs={"w:none": torch.tensor([1.0])})
    with pytest.raises(InputError, match=r"group 'stem' cannot take 12; its options are \(8, 16\)"):
        lut.cycles({"stem": 12})
    with pytest.raises(InputError, match=r"'fc' \(weights\) cannot take 3"):
        lut.cycles(bits={"fc": (3, 8)})
    with pytest.raises(InputError, match=r"'w:fc' 2 bits; it offers \(4, 8\)"):
        BitChoices(Tiny(), lut, init={"w:fc": 2})
    with pytest.raises(InputError, match="give example_inputs"):
        LatencyLUT.of(Tiny())
    with pytest.raises(InputError, match="form 'l2' is not known"):
        LatencyLoss(lut, 1000.0, form="l2")
