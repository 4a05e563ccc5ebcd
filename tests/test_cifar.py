"""CIFAR-10/100 from tarballs in the official python format: loading, normalisation, slicing,
seeded augmentation, and one-line refusals of wrong files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hefl.cifar import CIFAR
from hefl.config import DatasetConfig, ModelConfig, TrainingConfig, dataset_folder
from hefl.data import client_slices, load
from hefl.errors import ConfigError
from hefl.model import build_model, get_flat
from hefl.seeds import augment_seed
from hefl.training import augment, train_epochs
from tests.helpers import experiment_dir, node_logs, run_main, tree_config

PER_BATCH = 8  # images in each tiny batch: 5 train batches (CIFAR-10) or one train file of 40


def _batch(rng: np.random.Generator, n: int, key: bytes, classes: int) -> bytes:
    body = {
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        key: rng.integers(0, classes, n).tolist(),
        b"filenames": [b"x.png"] * n,
    }
    return pickle.dumps(body, protocol=2)


def _members(name: str, seed: int = 0) -> dict[str, bytes]:
    layout, rng = CIFAR[name], np.random.default_rng(seed)
    classes = 100 if name == "cifar100" else 10
    size = PER_BATCH * 5 // len(layout.train)
    out = {b: _batch(rng, size, layout.labels, classes) for b in layout.train}
    out[layout.test] = _batch(rng, PER_BATCH * 2, layout.labels, classes)
    return out


def _py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled as the official files were, by Python 2 (str as SHORT_BINSTRING, NumPy 1's
    module path), written opcode by opcode."""

    def s(b: bytes) -> bytes:
        return (
            b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + len(b).to_bytes(4, "little") + b
        )

    def i(n: int) -> bytes:
        return b"J" + n.to_bytes(4, "little", signed=True)

    ints = b"".join(b"K" + bytes([v]) for v in labels)
    return (
        b"\x80\x02}(" + s(b"data") + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        b"K\x00\x85" + s(b"b") + b"\x87R(K\x01" + i(data.shape[0]) + i(data.shape[1]) + b"\x86"
        b"cnumpy\ndtype\n"
        + s(b"u1")
        + b"K\x00K\x01\x87R(K\x03"
        + s(b"|")
        + b"NNN"
        + i(-1)
        + i(-1)
        + b"K\x00tb\x89"
        + s(data.tobytes())
        + b"tb"
        + s(b"labels")
        + b"]("
        + ints
        + b"eu."
    )


def write_tarball(folder: Path, name: str, members: dict[str, bytes] | None = None) -> Path:
    """A small tarball in the official layout (cifar-10-batches-py/data_batch_1, ...)."""
    layout = CIFAR[name]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / layout.tarball
    with tarfile.open(path, "w:gz") as tar:
        for member, raw in (members or _members(name)).items():
            info = tarfile.TarInfo(f"{layout.folder}/{member}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


@pytest.fixture
def cifar10(tmp_path: Path) -> DatasetConfig:
    write_tarball(tmp_path, "cifar10")
    return DatasetConfig("cifar10", path=str(tmp_path))


def test_cifar10_loads_from_the_tarball_and_normalises_per_channel(cifar10: DatasetConfig) -> None:
    train, test = load(cifar10, seed=0)
    assert train.x.shape == (40, 3, 32, 32) and test.x.shape == (16, 3, 32, 32)
    assert train.x.dtype == np.float32 and train.y.dtype == np.int64
    raw = pickle.loads(_members("cifar10")["data_batch_1"])
    first = raw[b"data"][0].reshape(3, 32, 32) / 255.0
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    for c in range(3):
        np.testing.assert_allclose(train.x[0, c], (first[c] - mean[c]) / std[c], atol=1e-6)
    assert train.y[0] == raw[b"labels"][0]


def test_batches_pickled_by_python_2_as_published_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    members = {m: _py2_batch(data, [1, 2, 3, 9]) for m in CIFAR["cifar10"].train}
    members["test_batch"] = _py2_batch(data, [0, 0, 0, 0])
    write_tarball(tmp_path, "cifar10", members)
    train, test = load(DatasetConfig("cifar10", path=str(tmp_path)), seed=0)
    assert len(train) == 20 and test.y.tolist() == [0, 0, 0, 0]
    assert train.y[:4].tolist() == [1, 2, 3, 9]
    want = (data[1].reshape(3, 32, 32)[2] / 255.0 - 0.4465) / 0.2616
    np.testing.assert_allclose(train.x[1, 2], want, atol=1e-6)


def test_cifar100_loads_fine_labels_from_the_extracted_folder(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for member, raw in _members("cifar100").items():
        (folder / member).write_bytes(raw)
    train, test = load(DatasetConfig("cifar100", path=str(tmp_path)), seed=0)
    assert len(train) == 40 and len(test) == 16
    want = pickle.loads((folder / "train").read_bytes())[b"fine_labels"]
    np.testing.assert_array_equal(train.y, want)


def test_default_paths_per_dataset() -> None:
    assert dataset_folder(DatasetConfig("cifar10")) == "data/cifar10"
    assert dataset_folder(DatasetConfig("cifar100")) == "data/cifar100"
    assert dataset_folder(DatasetConfig("mnist")) == "data/mnist"
    assert dataset_folder(DatasetConfig("mnist", path="/x")) == "/x"


def test_max_samples_caps_train_rows_and_test_rows_in_the_same_share(
    cifar10: DatasetConfig,
) -> None:
    train, test = load(replace(cifar10, max_samples=20), seed=0)
    assert len(train) == 20 and len(test) == 8
    full, _ = load(cifar10, seed=0)
    np.testing.assert_array_equal(train.x, full.x[:20])


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_clients_get_disjoint_normalised_slices(cifar10: DatasetConfig, partition: str) -> None:
    ds = replace(cifar10, partition=partition, alpha=1.0)
    slices, total = client_slices(ds, 0, 2, [0, 1])
    train, test = load(ds, seed=0)
    assert total == 40 and sum(len(tr) for tr, _ in slices) == 40
    assert sum(len(te) for _, te in slices) == 16
    rows = np.concatenate([tr.x for tr, _ in slices]).reshape(40, -1)
    assert len({r.tobytes() for r in rows}) == 40
    assert {r.tobytes() for r in rows} == {r.tobytes() for r in train.x.reshape(40, -1)}
    assert all(tr.x.dtype == np.float32 for tr, _ in slices)


def test_augmentation_is_seeded_crops_and_flips() -> None:
    x = torch.randn(16, 3, 32, 32)
    same = [augment(x, torch.Generator().manual_seed(augment_seed(5))) for _ in range(2)]
    other = augment(x, torch.Generator().manual_seed(augment_seed(6)))
    assert torch.equal(same[0], same[1]) and not torch.equal(same[0], other)
    assert same[0].shape == x.shape and not torch.equal(same[0], x)
    # each output is a window of the zero-padded image, maybe mirrored
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):
        windows = [padded[i, :, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        windows += [w.flip(-1) for w in windows]
        assert any(torch.equal(same[0][i], w) for w in windows)


def test_augmented_training_is_seeded_per_round(cifar10: DatasetConfig) -> None:
    ds = replace(cifar10, augment=True)
    ((train, _),), _ = client_slices(ds, 0, 1, [0])
    assert train.augment
    t, cpu = TrainingConfig(batch_size=8, steps=2, device="cpu"), torch.device("cpu")
    flats = []
    for seed in (1, 1, 2):
        net = build_model(ModelConfig("cnn"), ds, seed=0)
        train_epochs(net, train, t, cpu, seed=seed)
        flats.append(get_flat(net))
    np.testing.assert_array_equal(flats[0], flats[1])
    assert not np.array_equal(flats[0], flats[2])


def test_augment_is_refused_for_other_datasets() -> None:
    with pytest.raises(ConfigError, match=r"^dataset.augment: only cifar10 and cifar100"):
        DatasetConfig("mnist", augment=True)


def _refusal(ds: DatasetConfig) -> str:
    with pytest.raises(ConfigError) as info:
        load(ds, seed=0)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_truncated_tarball_is_refused_in_one_line(cifar10: DatasetConfig) -> None:
    path = Path(cifar10.path) / "cifar-10-python.tar.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert _refusal(cifar10).startswith(f"{path}: not a readable cifar-10-python.tar.gz (")


def test_a_file_that_is_no_tarball_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-python.tar.gz").write_text("<html>not found</html>\n")
    message = _refusal(DatasetConfig("cifar10", path=str(tmp_path)))
    assert message.startswith(f"{tmp_path / 'cifar-10-python.tar.gz'}: not a readable")


class _Hostile:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo owned",))


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (pickle.dumps({b"data": _Hostile()}, protocol=2), r"not a CIFAR batch \(refused .*system"),
        (b"\x80\x02}q\x00(U\x04data", r"not a CIFAR batch \("),
        (pickle.dumps({b"data": np.zeros((2, 100), np.uint8)}), r"rows of 100 bytes"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}), r"2 images but 1"),
        (pickle.dumps([1, 2]), r"no uint8 b'data' rows"),
    ],
    ids=["hostile", "truncated", "short-rows", "few-labels", "no-dict"],
)
def test_a_wrong_batch_is_refused_naming_the_member(tmp_path: Path, raw: bytes, says: str) -> None:
    members = _members("cifar10")
    members["data_batch_3"] = raw
    path = write_tarball(tmp_path, "cifar10", members)
    message = _refusal(DatasetConfig("cifar10", path=str(tmp_path)))
    assert message.startswith(f"{path}: cifar-10-batches-py/data_batch_3: ")
    assert re.search(says, message), message


def test_a_missing_member_and_a_missing_dataset_are_named(tmp_path: Path) -> None:
    members = _members("cifar10")
    del members["test_batch"]
    path = write_tarball(tmp_path / "a", "cifar10", members)
    message = _refusal(DatasetConfig("cifar10", path=str(tmp_path / "a")))
    assert message == f"{path}: has no cifar-10-batches-py/test_batch"
    message = _refusal(DatasetConfig("cifar100", path=str(tmp_path / "b")))
    assert message.startswith("dataset.path: neither cifar-100-python.tar.gz nor")


class _Reply:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def __enter__(self) -> _Reply:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def raise_for_status(self) -> None:
        pass

    def iter_content(self, size: int) -> list[bytes]:
        return [self.body[i : i + size] for i in range(0, len(self.body), size)]


def test_download_checks_the_published_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    body = write_tarball(tmp_path / "src", "cifar10").read_bytes()
    asked: list[str] = []

    def get(url: str, **_: object) -> _Reply:
        asked.append(url)
        return _Reply(body)

    monkeypatch.setattr(requests, "get", get)
    ds = DatasetConfig("cifar10", path=str(tmp_path / "dst"), download=True)
    message = _refusal(ds)
    assert asked == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert "md5" in message and "c58f30108f718f92721af3b95e74349a" in message
    assert not list((tmp_path / "dst").iterdir())  # nothing half-checked is left
    md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
    monkeypatch.setitem(CIFAR, "cifar10", replace(CIFAR["cifar10"], md5=md5))
    train, _ = load(ds, seed=0)
    assert len(train) == 40 and (tmp_path / "dst" / "cifar-10-python.tar.gz").is_file()


@pytest.mark.process
def test_main_local_runs_a_round_of_resnet20_on_cifar(tmp_path: Path) -> None:
    write_tarball(tmp_path / "data", "cifar10")
    raw = tree_config(clients=2, leaves=1, spine=False, rounds=1)
    raw["dataset"] = {"name": "cifar10", "path": str(tmp_path / "data"), "augment": True}
    raw["model"] = {"name": "resnet20"}
    raw["training"].update(batch_size=8, steps=2)
    (tmp_path / "cifar.json").write_text(json.dumps(raw))
    log = tmp_path / "log"
    proc = run_main("local", "--config", str(tmp_path / "cifar.json"), "--log-dir", str(log))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    clients = [d for n, d in node_logs(experiment_dir(log)).items() if n.endswith(("100", "101"))]
    assert [d["iteration"][0]["train_samples"] for d in clients] == [20, 20]
    assert all(np.isfinite(d["iteration"][0]["train_loss"]) for d in clients)


def test_a_cifar_config_parses_and_a_misfit_is_refused_in_one_line() -> None:
    from hefl.config import parse_config

    raw = tree_config(clients=2, leaves=1, spine=False)
    raw["dataset"] = {"name": "cifar100", "augment": True, "max_samples": 500}
    raw["model"] = {"name": "resnet18"}
    raw["training"]["steps"] = 5
    cfg = parse_config(raw)
    assert (cfg.dataset.name, cfg.dataset.path, cfg.model.name) == ("cifar100", "", "resnet18")
    assert cfg.training.steps == 5 and dataset_folder(cfg.dataset) == "data/cifar100"
    raw["dataset"] = {"name": "synthetic"}
    with pytest.raises(ConfigError, match=r"^model.name: 'resnet18' needs an image dataset"):
        parse_config(raw)
    raw["dataset"] = {"name": "digits", "augment": True}
    with pytest.raises(ConfigError, match=r"^dataset.augment: only cifar10 and cifar100"):
        parse_config(raw)
    raw["dataset"], raw["training"]["steps"] = {"name": "cifar10"}, -1
    with pytest.raises(ConfigError, match=r"^training.steps: "):
        parse_config(raw)
