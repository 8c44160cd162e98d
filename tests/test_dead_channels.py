"""Near-dead output channels (weights ~1e-9 beside a bias ~1, as batch-norm folding leaves them
in pretrained networks) quantize: their weight scale widens until the int32 bias fits, a
`QuantizeNote` names the layer and channel, and the integer network still runs bit-exact."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from xdsl.dialects.builtin import ModuleOp

from dopant.compiler.driver import compile_module, quantize_network
from dopant.compiler.evaluate import BatchedRunner, snr_db
from dopant.compiler.frontend import import_model
from dopant.compiler.models.datasets import load_sample
from dopant.compiler.models.pretrained import load_pretrained
from dopant.dialects.qnn import ConstantOp, DequantizeOp
from dopant.passes.quantize import QuantizeNote
from dopant.runtime import reference
from dopant.runtime.loader import load


def _constant(module: ModuleOp, path: str) -> ConstantOp:
    (op,) = [op for op in module.walk() if isinstance(op, ConstantOp) and op.path.data == path]
    return op


def _output_step(module: ModuleOp) -> float:
    (op,) = [op for op in module.walk() if isinstance(op, DequantizeOp)]
    return float(op.params.scales[0])


def _dead_conv() -> tuple[nn.Conv2d, torch.Tensor]:
    """The issue's reproducer: output channel 0 has weights 1e-9 and (as after folding a batch
    norm whose filter collapsed) a bias of 0.5."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3).eval()
    with torch.no_grad():
        conv.weight[0] = 1e-9
        conv.bias[0] = 0.5
    return conv, torch.randn(16, 3, 8, 8)


def test_a_dead_channel_quantizes_to_zeros_and_outputs_its_bias() -> None:
    conv, x = _dead_conv()
    with pytest.warns(QuantizeNote, match=r'layer "conv2d", output channel 0: .*the bias'):
        quantized = quantize_network(import_model(conv, x[:1]), x.numpy())
    weight, bias = _constant(quantized, "weight"), _constant(quantized, "bias")
    q_w, q_b = weight.numpy(), bias.numpy()
    assert not q_w[0].any()
    assert weight.params is not None
    # The other channels keep the scale max|w| / 127 they had before.
    w = conv.weight.detach().double().numpy()
    expected = np.abs(w[1:]).reshape(3, -1).max(axis=1) / 127
    assert weight.params.scales[1:] == pytest.approx(expected, rel=1e-12)
    # The bias sits at the limit that leaves the products room: depth 3*3*3 = 27, signed 8-bit
    # input (|q_x| <= 128), 8-bit weights (|q_w| <= 127): 2^31 - 1 - 27 * 128 * 127 = 2147044735.
    assert q_b[0] == 2147044735
    got = reference.run(quantized, x[:1].numpy())[0]
    want = conv(x[:1]).detach().numpy()
    step = _output_step(quantized)
    assert np.abs(got[0, 0] - want[0, 0]).max() <= step  # channel 0 is its bias, 0.5
    assert np.abs(got[0, 0] - 0.5).max() <= step
    assert np.abs(got - want).max() <= 2 * step


def test_a_layer_of_dead_weights_widens_its_per_tensor_scale() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 4, 3).eval()
    with torch.no_grad():
        conv.weight.mul_(1e-8)
        conv.bias.copy_(torch.tensor([0.1, -0.7, 0.3, 0.2]))
    x = torch.randn(16, 3, 8, 8)
    with pytest.warns(QuantizeNote, match=r"output channel 1: .*the layer's weight scale"):
        quantized = quantize_network(import_model(conv, x[:1]), x.numpy(), per_channel=False)
    weight = _constant(quantized, "weight")
    assert weight.params is not None and len(weight.params.scales) == 1
    # Channel 1's |bias| 0.7 sets the one scale; its integer bias is at the limit.
    assert abs(_constant(quantized, "bias").numpy()[1]) == 2147044735
    got = reference.run(quantized, x[:1].numpy())[0]
    assert np.abs(got - conv(x[:1]).detach().numpy()).max() <= _output_step(quantized)


def test_healthy_layers_leave_no_note() -> None:
    torch.manual_seed(2)
    conv, x = nn.Conv2d(3, 4, 3).eval(), torch.randn(8, 3, 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantize_network(import_model(conv, x[:1]), x.numpy())
    assert not [w for w in caught if issubclass(w.category, QuantizeNote)]


def _conv_bn_net() -> nn.Sequential:
    """A small Conv-BN CNN with the two ways a trained batch norm kills a channel: channel 2 of
    the first conv collapsed (filter ~1e-9, so its running mean and variance are 0) and channel
    5's BN scale gamma collapsed to 1e-9; both keep a shift beta ~1."""
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    ).eval()
    conv, bn = net[0], net[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.bias.uniform_(-0.3, 0.3)
        conv.weight[2] = 1e-9
        bn.running_mean[2], bn.running_var[2], bn.bias[2] = 0.0, 0.0, 1.0
        bn.weight[5], bn.bias[5] = 1e-9, 0.8
    return net


def test_a_conv_bn_network_with_dead_channels_runs_bit_exact_on_the_simulator() -> None:
    net = _conv_bn_net()
    x = torch.randn(32, 3, 10, 10)
    module = import_model(net, x[:1])
    with pytest.warns(QuantizeNote, match=r'layer "0", output channels 2, 5:'):
        quantized = quantize_network(module, x.numpy())
    with pytest.warns(QuantizeNote):
        compiled = compile_module(module, target="edge16", calibration=x.numpy())
    for sample in x[:4].numpy():
        sample = sample[None]
        want = reference.run(quantized, sample)[0]
        result = load(compiled.binary).run(sample)
        assert np.array_equal(result.outputs[0], want)
    # The integer network follows the float one (W8A8 on random data: a loose bound).
    logits = BatchedRunner(quantized).run(x.numpy())
    assert snr_db(net(x).detach().numpy(), logits) > 20.0


def _resnet8_with_dead_channels() -> nn.Module:
    """dopant's shipped ResNet-8 (trained on Fashion-MNIST) with the dead channels a pretrained
    network carries: two channels of `layer1.0.bn1` whose scale gamma collapsed to 1e-9, and one
    filter of `layer2.0.conv1` collapsed to 1e-9 with the running statistics (0, 0) that
    follow. Each keeps its trained shift beta, so after folding it outputs a constant."""
    net = load_pretrained("resnet8")
    named = dict(net.named_modules())
    with torch.no_grad():
        named["layer1.0.bn1"].weight[[3, 7]] = 1e-9
        named["layer2.0.conv1"].weight[4] = 1e-9
        bn = named["layer2.0.bn1"]
        bn.running_mean[4], bn.running_var[4] = 0.0, 0.0
    return net


def test_a_trained_network_with_dead_channels_agrees_with_its_float_original() -> None:
    calib, test = load_sample()
    x = test.x[:250]  # of the 1000 shipped test images; all 1000 (and 256 calibration images)
    # agree 99.5%, SNR 29.3 dB
    net = _resnet8_with_dead_channels()
    module = import_model(net, torch.from_numpy(x[:1]))
    with pytest.warns(QuantizeNote) as notes:
        quantized = quantize_network(module, calib.x[:128])
    texts = [str(n.message) for n in notes if issubclass(n.category, QuantizeNote)]
    assert any(t.startswith('layer "layer1.0.conv1", output channels 3, 7:') for t in texts)
    assert any(t.startswith('layer "layer2.0.conv1", output channel 4:') for t in texts)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    got = BatchedRunner(quantized).run(x)
    agreement = float(np.mean(got.argmax(axis=1) == want.argmax(axis=1)))
    # Measured on these 250 images: 98.4% top-1 agreement, logit SNR 29.5 dB.
    assert agreement >= 0.96
    assert snr_db(want, got) >= 25.0
