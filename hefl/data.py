"""Datasets (digits, MNIST from IDX files, CIFAR-10/100 from their tarballs, synthetic) and how they
are sliced between clients."""

from __future__ import annotations

import gzip
import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from hefl.config import DatasetConfig, dataset_folder
from hefl.errors import ConfigError
from hefl.modelspec import CIFAR_MEAN_STD, num_classes
from hefl.seeds import dirichlet_seed, holdout_seed, synthetic_seed

log = logging.getLogger(__name__)

MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
MNIST_MIRROR = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/"  # the mirror torchvision downloads from
)


@dataclass(frozen=True)
class Split:
    """Features (float32, model input shape; CIFAR: uint8 until `normalise`), integer labels, and
    whether training augments them (dataset.augment)."""

    x: np.ndarray
    y: np.ndarray
    augment: bool = False

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: np.ndarray) -> Split:
        return Split(self.x[idx], self.y[idx], self.augment)


def load(ds: DatasetConfig, seed: int) -> tuple[Split, Split]:
    """The whole (train, test) data of an experiment; identical on every client for one seed."""
    train, test = _raw(ds, seed)
    return normalise(ds, train), normalise(ds, test)


def _raw(ds: DatasetConfig, seed: int) -> tuple[Split, Split]:
    """As `load`, but CIFAR's images still uint8 (a quarter of the memory until sliced), and cut
    to `max_samples` training rows and the same share of the test rows."""
    if ds.name == "digits":
        train, test = _holdout(*_digits(), ds.test_fraction, seed)
    elif ds.name == "mnist":
        train, test = _mnist(ds)
    elif ds.name in CIFAR_MEAN_STD:
        from hefl.cifar import cifar  # imports this module: not at the top

        train, test = cifar(ds)
    else:
        train, test = _holdout(*_synthetic(ds, seed), ds.test_fraction, seed)
    if ds.max_samples and ds.max_samples < len(train):
        n_test = max(1, round(len(test) * ds.max_samples / len(train)))
        train, test = train.take(np.arange(ds.max_samples)), test.take(np.arange(n_test))
    return replace(train, augment=ds.augment), test


def normalise(ds: DatasetConfig, split: Split) -> Split:
    """CIFAR: uint8 to float32, each channel less the dataset's mean and over its std (the
    standard values); other datasets are float already."""
    if ds.name not in CIFAR_MEAN_STD:
        return split
    mean, std = (
        np.asarray(v, dtype=np.float32).reshape(1, 3, 1, 1) for v in CIFAR_MEAN_STD[ds.name]
    )
    x = (split.x.astype(np.float32) / np.float32(255.0) - mean) / std
    return replace(split, x=x.astype(np.float32))


def _holdout(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[Split, Split]:
    order = np.random.default_rng(holdout_seed(seed)).permutation(len(y))
    n_test = max(1, round(len(y) * fraction))
    test, train = order[:n_test], order[n_test:]
    return Split(x[train], y[train]), Split(x[test], y[test])


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (offline), read from the file it ships: importing
    scikit-learn costs about 2 s of CPU in every client process, reading the file 0.1 s.
    `load_digits` where the file is not where scikit-learn keeps it."""
    found = digits_file()
    if found is not None:
        raw = np.loadtxt(found, delimiter=",")
        data, target = raw[:, :-1], raw[:, -1]
    else:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        data, target = bunch.data, bunch.target
    x = (data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return x, target.astype(np.int64)


def digits_file() -> Path | None:
    """Where scikit-learn keeps digits.csv.gz (found without importing scikit-learn)."""
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


def _synthetic(ds: DatasetConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian inputs labelled by a random linear teacher: learnable, any size."""
    rng = np.random.default_rng(synthetic_seed(seed))
    x = rng.standard_normal((ds.samples, ds.features)).astype(np.float32)
    teacher = rng.standard_normal((ds.features, num_classes(ds))).astype(np.float32)
    return x, np.argmax(x @ teacher, axis=1).astype(np.int64)


# ---------------------------------------------------------------- MNIST from IDX files


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (maybe .gz) as torchvision downloads it: big-endian header, then data."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ConfigError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ConfigError(f"{path}: header says {dims} but holds {body.size} values")
    return body.reshape(dims)


def find_idx(root: Path, stem: str) -> Path | None:
    """Look where torchvision puts the files (root/MNIST/raw) and in root itself."""
    for folder in (root, root / "MNIST" / "raw", root / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def download_mnist(root: Path, timeout: float = 60.0) -> None:
    """Fetch the four IDX files into root/MNIST/raw (clusters with internet only)."""
    import requests

    target = root / "MNIST" / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for stem in MNIST_FILES.values():
        if find_idx(root, stem) is None:
            log.info("downloading %s.gz", stem)
            resp = requests.get(MNIST_MIRROR + stem + ".gz", timeout=(10, timeout))
            resp.raise_for_status()
            (target / (stem + ".gz")).write_bytes(resp.content)


def _mnist(ds: DatasetConfig) -> tuple[Split, Split]:
    root = Path(dataset_folder(ds))
    if ds.download:
        download_mnist(root)
    arrays = {}
    for key, stem in MNIST_FILES.items():
        found = find_idx(root, stem)
        if found is None:
            raise ConfigError(
                f"dataset.path: {stem} not found under {root} "
                f"(set dataset.download: true to fetch it)"
            )
        arrays[key] = read_idx(found)
    side = ds.resize or 28
    return (
        Split(_images(arrays["train_x"], side), arrays["train_y"].astype(np.int64)),
        Split(_images(arrays["test_x"], side), arrays["test_y"].astype(np.int64)),
    )


def _images(raw: np.ndarray, side: int) -> np.ndarray:
    x = (raw.astype(np.float32) / 255.0)[:, None, :, :]
    if side != x.shape[-1]:
        import torch
        import torch.nn.functional as F

        x = F.adaptive_avg_pool2d(torch.from_numpy(x), side).numpy()  # the original study's 12x12
    return x


def iid_slice(n: int, parts: int, index: int) -> np.ndarray:
    """Contiguous slice `index` of `parts` (sizes differ by at most 1), as in the original study."""
    return np.array_split(np.arange(n), parts)[index]


def dirichlet_slices(labels: np.ndarray, parts: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Label-skew non-IID split: each class is shared out by proportions drawn from Dir(alpha)."""
    rng = np.random.default_rng(dirichlet_seed(seed))
    slices: list[list[int]] = [[] for _ in range(parts)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cuts = (np.cumsum(rng.dirichlet([alpha] * parts))[:-1] * len(members)).astype(int)
        for part, chunk in enumerate(np.split(members, cuts)):
            slices[part].extend(chunk.tolist())
    return [np.sort(np.asarray(s, dtype=np.int64)) for s in slices]


def client_data(ds: DatasetConfig, seed: int, parts: int, index: int) -> tuple[Split, Split, int]:
    """Client `index`'s train slice (IID or label skew), its contiguous test slice, and the number
    of training samples of all clients together."""
    slices, all_samples = client_slices(ds, seed, parts, [index])
    return *slices[0], all_samples


def client_slices(
    ds: DatasetConfig, seed: int, parts: int, indices: Sequence[int]
) -> tuple[list[tuple[Split, Split]], int]:
    """The (train, test) slices of clients `indices`, from one load of the data, and the number of
    training samples of all clients together."""
    train, test = _raw(ds, seed)
    if ds.partition == "dirichlet":
        skewed = dirichlet_slices(train.y, parts, ds.alpha, seed)
    out = []
    for index in indices:
        idx = skewed[index] if ds.partition == "dirichlet" else iid_slice(len(train), parts, index)
        if len(idx) == 0:
            raise ConfigError(f"dataset: client {index} of {parts} gets no training samples")
        held = iid_slice(len(test), parts, index)
        if len(held) == 0:
            raise ConfigError(
                f"dataset: client {index} of {parts} gets no test samples ({len(test)} test "
                f"samples for {parts} clients: use more data or fewer clients)"
            )
        out.append((normalise(ds, train.take(idx)), normalise(ds, test.take(held))))
    return out, len(train)
