"""Models and training: parameter counts without torch, flat weights, seeded training."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from hefl.config import DatasetConfig, ModelConfig, TrainingConfig
from hefl.data import Split, client_data
from hefl.errors import ConfigError
from hefl.model import build_model, get_flat, set_flat
from hefl.modelspec import check_model, param_count
from hefl.training import batches, evaluate, train_epochs

MODELS = ("mlp", "mlp_wide", "cnn", "nvflare_cnn", "resnet18", "resnet20")
DATASETS = ("digits", "mnist", "cifar10", "cifar100")


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


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dataset", DATASETS)
def test_param_count_matches_torch_for_every_model_and_dataset(model: str, dataset: str) -> None:
    m, ds = ModelConfig(model), DatasetConfig(dataset)
    net = build_model(m, ds, seed=0)
    assert param_count(m, ds) == sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(
    ("model", "low", "high"),
    [("resnet18", 11.1e6, 11.3e6), ("resnet20", 0.26e6, 0.28e6), ("nvflare_cnn", 3.4e6, 3.6e6)],
)
def test_cifar_models_have_their_published_sizes(model: str, low: float, high: float) -> None:
    assert low < param_count(ModelConfig(model), DatasetConfig("cifar10")) < high


@pytest.mark.parametrize("model", ["nvflare_cnn", "resnet18", "resnet20"])
def test_cifar_models_take_two_images_and_hold_no_batch_norm(model: str) -> None:
    net = build_model(ModelConfig(model), DatasetConfig("cifar100"), seed=0)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert not list(net.buffers())  # no running statistics to average or to leak


def test_image_models_refuse_vectors_and_widths() -> None:
    with pytest.raises(ConfigError, match=r"^model.name: 'resnet20' needs an image dataset"):
        check_model(ModelConfig("resnet20"), DatasetConfig("synthetic"))
    with pytest.raises(ConfigError, match=r"^model.hidden: only the MLPs"):
        check_model(ModelConfig("resnet18", hidden=(4,)), DatasetConfig("cifar10"))


@pytest.mark.parametrize(("steps", "want"), [(0, 2 * 4), (3, 3), (11, 11)])
def test_steps_bound_the_batches_of_a_round(steps: int, want: int) -> None:
    cfg = TrainingConfig(epochs=2, batch_size=8, steps=steps)
    got = list(batches(30, cfg, torch.Generator().manual_seed(0)))
    assert len(got) == want
    if steps == 11:  # a new order at each pass over the 30 rows
        assert sorted(torch.cat(got[:4]).tolist()) == list(range(30))


def test_steps_train_as_many_batches_and_stay_seeded() -> None:
    ds = DatasetConfig("digits")
    train, _, _ = client_data(ds, seed=0, parts=1, index=0)
    t = TrainingConfig(steps=2, device="cpu")
    nets = [build_model(ModelConfig("mlp"), ds, seed=0) for _ in range(2)]
    for net in nets:
        train_epochs(net, train, t, torch.device("cpu"), seed=1)
    np.testing.assert_array_equal(get_flat(nets[0]), get_flat(nets[1]))


def test_evaluate_in_chunks_matches_one_pass() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    rng = np.random.default_rng(0)
    data = Split(rng.standard_normal((5000, 4)).astype(np.float32), rng.integers(0, 3, 5000))
    loss, acc = evaluate(net, data, torch.device("cpu"))
    logits = net(torch.from_numpy(data.x))
    want = torch.nn.functional.cross_entropy(logits, torch.from_numpy(data.y)).item()
    assert loss == pytest.approx(want, rel=1e-5)
    assert acc == (logits.argmax(1).numpy() == data.y).mean()


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
