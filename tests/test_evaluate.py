"""Batched runs, accuracy and per-layer SNR of a quantized network."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dopant.compiler.driver import CANONICAL_PIPELINE, quantize_network
from dopant.compiler.evaluate import BatchedRunner, accuracy, layer_snr, snr_db
from dopant.compiler.frontend import import_model
from dopant.compiler.models import zoo
from dopant.compiler.pipeline import run_pipeline
from dopant.runtime import reference
from dopant.support.errors import InputError


@pytest.fixture(scope="module")
def lenet() -> tuple[object, np.ndarray]:
    model = zoo.get("lenet5").build()
    x = np.random.default_rng(0).uniform(0, 1, (70, 1, 28, 28)).astype(np.float32)
    module = import_model(model, torch.from_numpy(x[:1]))
    run_pipeline(module, CANONICAL_PIPELINE)
    return module, x


def test_batched_runs_equal_one_sample_at_a_time(lenet: tuple[object, np.ndarray]) -> None:
    module, x = lenet
    batched = BatchedRunner(module, batch_size=32).run(x)  # chunks of 32, 32 and 6
    singles = np.concatenate([reference.run(module, x[i : i + 1])[0] for i in range(len(x))])
    np.testing.assert_allclose(batched, singles, rtol=0, atol=1e-5)


def test_accuracy_counts_argmax_hits(lenet: tuple[object, np.ndarray]) -> None:
    module, x = lenet
    predicted = BatchedRunner(module).run(x).argmax(axis=1)
    labels = predicted.copy()
    labels[:7] = (labels[:7] + 1) % 10  # 7 of 70 wrong
    assert accuracy(module, x, labels) == pytest.approx(0.9)


def test_layer_snr_pairs_float_layers_with_their_integer_outputs(
    lenet: tuple[object, np.ndarray],
) -> None:
    module, x = lenet
    q = quantize_network(module, x[:32])
    rows = dict(layer_snr(module, q, x[:16]))
    # Every conv and linear layer is compared (via "<path>/requantize"), and the pools.
    assert {"features.0", "features.3", "classifier.1", "classifier.5"} <= set(rows)
    assert all(20.0 < snr < 80.0 for snr in rows.values())
    q4 = quantize_network(module, x[:32], weight_bits=4, act_bits=4)
    assert dict(layer_snr(module, q4, x[:16]))["classifier.5"] < rows["classifier.5"]


def test_snr_by_hand() -> None:
    # signal power 3^2 + 4^2 = 25, noise 0.5^2 = 0.25 -> 10 log10(100) = 20 dB
    assert snr_db(np.array([3.0, 4.0]), np.array([3.0, 4.5])) == pytest.approx(20.0)
    assert snr_db(np.array([1.0]), np.array([1.0])) == math.inf


def test_unknown_quantize_options_are_named(lenet: tuple[object, np.ndarray]) -> None:
    module, x = lenet
    with pytest.raises(InputError, match=r"unknown quantize option\(s\) \['bits'\]"):
        quantize_network(module, x[:4], bits=4)
