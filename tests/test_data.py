"""Datasets and slicing: IID slices, label-skew slices, MNIST from IDX files, synthetic data."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from hefl.config import DatasetConfig
from hefl.data import client_data, dirichlet_slices, iid_slice, load, read_idx
from hefl.errors import ConfigError


@pytest.mark.parametrize(("n", "parts"), [(1438, 8), (10, 3), (7, 7)])
def test_iid_slices_are_contiguous_and_cover_everything(n: int, parts: int) -> None:
    slices = [iid_slice(n, parts, i) for i in range(parts)]
    np.testing.assert_array_equal(np.concatenate(slices), np.arange(n))
    sizes = [len(s) for s in slices]
    assert max(sizes) - min(sizes) <= 1
    assert all(np.all(np.diff(s) == 1) for s in slices)


def test_dirichlet_slices_partition_and_skew_labels() -> None:
    labels = np.repeat(np.arange(10), 100)
    slices = dirichlet_slices(labels, 5, alpha=0.1, seed=3)
    np.testing.assert_array_equal(np.sort(np.concatenate(slices)), np.arange(1000))
    shares = np.array(
        [np.bincount(labels[s], minlength=10) / max(len(s), 1) for s in slices if len(s)]
    )
    # alpha 0.1: most of a client's data is one or two labels
    assert shares.max(axis=1).mean() > 0.4
    again = dirichlet_slices(labels, 5, alpha=0.1, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(slices, again, strict=True))


def test_digits_clients_get_disjoint_slices_of_one_split() -> None:
    ds = DatasetConfig()
    parts = [client_data(ds, seed=0, parts=4, index=i) for i in range(4)]
    train_all, test_all = load(ds, seed=0)
    assert sum(len(tr) for tr, _, _ in parts) == len(train_all) == 1797 - round(1797 * 0.2)
    assert all(total == len(train_all) for _, _, total in parts)
    assert sum(len(te) for _, te, _ in parts) == len(test_all)
    np.testing.assert_array_equal(np.concatenate([tr.x for tr, _, _ in parts]), train_all.x)
    assert parts[0][0].x.shape[1:] == (1, 8, 8) and parts[0][0].x.max() <= 1.0


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    """A tiny MNIST in torchvision's layout (root/MNIST/raw), train files gzipped as downloaded."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    _write_idx(raw / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (40, 28, 28)), gz=True)
    _write_idx(raw / "train-labels-idx1-ubyte.gz", np.arange(40) % 10, gz=True)
    _write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28)), gz=False)
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(20) % 10, gz=False)
    return tmp_path


def test_mnist_reads_idx_files(mnist_dir: Path) -> None:
    train, test = load(DatasetConfig(name="mnist", path=str(mnist_dir)), seed=0)
    assert train.x.shape == (40, 1, 28, 28) and test.x.shape == (20, 1, 28, 28)
    np.testing.assert_array_equal(train.y, np.arange(40) % 10)
    raw = read_idx(mnist_dir / "MNIST" / "raw" / "train-images-idx3-ubyte.gz")
    np.testing.assert_allclose(train.x[:, 0], raw / 255.0, rtol=1e-6)


def test_mnist_resized_to_12_like_the_original(mnist_dir: Path) -> None:
    train, _ = load(DatasetConfig(name="mnist", path=str(mnist_dir), resize=12), seed=0)
    assert train.x.shape == (40, 1, 12, 12)
    assert 0.0 <= train.x.min() and train.x.max() <= 1.0


def test_mnist_missing_or_corrupt_files_are_config_errors(tmp_path: Path, mnist_dir: Path) -> None:
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte not found"):
        load(DatasetConfig(name="mnist", path=str(tmp_path / "none")), seed=0)
    (mnist_dir / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").write_bytes(
        b"\x00\x00\x08\x01\x00\x00\x00\x09abc"
    )
    with pytest.raises(ConfigError, match="header says"):
        load(DatasetConfig(name="mnist", path=str(mnist_dir)), seed=0)


def test_synthetic_is_seeded_and_sized() -> None:
    ds = DatasetConfig(name="synthetic", samples=500, features=20, classes=4)
    a, _ = load(ds, seed=1)
    b, _ = load(ds, seed=1)
    c, _ = load(ds, seed=2)
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, c.x)
    assert a.x.shape == (400, 20) and set(np.unique(a.y)) <= set(range(4))


def test_digits_read_from_scikit_learns_file_equal_load_digits() -> None:
    from sklearn.datasets import load_digits

    from hefl.data import _digits, digits_file

    assert digits_file() is not None
    x, y = _digits()
    bunch = load_digits()
    assert np.array_equal(x.reshape(len(y), -1), (bunch.data / 16.0).astype(np.float32))
    assert np.array_equal(y, bunch.target) and y.dtype == np.int64


def test_max_samples_caps_training_rows_and_test_rows_in_the_same_share() -> None:
    full_train, full_test = load(DatasetConfig(), seed=0)
    train, test = load(DatasetConfig(max_samples=100), seed=0)
    assert len(train) == 100 and len(test) == round(len(full_test) * 100 / len(full_train))
    np.testing.assert_array_equal(train.x, full_train.x[:100])
    assert load(DatasetConfig(max_samples=10**6), seed=0)[0].x.shape == full_train.x.shape
