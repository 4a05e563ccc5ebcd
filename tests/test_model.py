"""Models and training: parameter counts without torch, flat weights, seeded training."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from hefl.config import DatasetConfig, ModelConfig, TrainingConfig
from hefl.data import client_data
from hefl.model import build_model, get_flat, set_flat
from hefl.modelspec import param_count
from hefl.training import evaluate, train_epochs


@pytest.mark.parametrize(
    ("model", "ds"),
    [
        (ModelConfig("mlp"), DatasetConfig("digits")),
        (ModelConfig("mlp_wide"), DatasetConfig("digits")),
        (ModelConfig("cnn"), DatasetConfig("digits")),
        (ModelConfig("cnn"), DatasetConfig("mnist", resize=12)),
        (ModelConfig("mlp"), DatasetConfig("mnist", resize=12)),
        (
            ModelConfig("mlp", hidden=(500, 200)),
            DatasetConfig("synthetic", features=300, classes=3),
        ),
    ],
)
def test_param_count_without_torch_matches_torch(model: ModelConfig, ds: DatasetConfig) -> None:
    net = build_model(model, ds, seed=0)
    assert param_count(model, ds) == sum(p.numel() for p in net.parameters())


def test_original_mlp_is_input_32_10() -> None:
    assert (
        param_count(ModelConfig("mlp"), DatasetConfig("mnist", resize=12))
        == 144 * 32 + 32 + 32 * 10 + 10
    )


def test_flat_weights_round_trip() -> None:
    net = build_model(ModelConfig("cnn"), DatasetConfig("digits"), seed=0)
    flat = get_flat(net)
    set_flat(net, flat * 2)
    np.testing.assert_allclose(get_flat(net), flat * 2, rtol=1e-6)


def test_training_is_seeded_and_learns() -> None:
    ds, t = DatasetConfig("digits"), TrainingConfig(epochs=3, device="cpu")
    train, test, _ = client_data(ds, seed=0, parts=1, index=0)
    cpu = torch.device("cpu")
    runs = []
    for _ in range(2):
        net = build_model(ModelConfig("mlp"), ds, seed=0)
        before, _ = evaluate(net, test, cpu)
        train_epochs(net, train, t, cpu, seed=5)
        runs.append((get_flat(net), evaluate(net, test, cpu)))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    loss, acc = runs[0][1]
    assert loss < before and acc > 0.85


@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_our_sgd_steps_bit_for_bit_as_torchs(momentum: float) -> None:
    from hefl.training import MomentumSGD

    torch.manual_seed(0)
    ours = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    theirs = copy.deepcopy(ours)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    opts = (
        MomentumSGD(ours.parameters(), lr=0.05, momentum=momentum),
        torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=momentum),
    )
    for step in range(5):
        for model, opt in zip((ours, theirs), opts, strict=True):
            opt.zero_grad()
            batch = slice(step * 12, step * 12 + 12)
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)
