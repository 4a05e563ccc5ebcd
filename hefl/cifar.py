"""CIFAR-10 and CIFAR-100 from the official python-version tarballs (or their extracted folders):
pickled batches of uint8 rows, read with the standard library and NumPy behind an unpickler that
builds NumPy arrays and nothing else."""

from __future__ import annotations

import codecs
import hashlib
import io
import logging
import pickle
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hefl.config import DatasetConfig, dataset_folder
from hefl.data import Split
from hefl.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CifarLayout:
    """One CIFAR tarball: its name, published md5, the folder inside, its batches, label key."""

    tarball: str
    md5: str
    folder: str
    train: tuple[str, ...]
    test: str
    labels: bytes


CIFAR = {
    "cifar10": CifarLayout(
        "cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        b"labels",
    ),
    "cifar100": CifarLayout(
        "cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python",
        ("train",),
        "test",
        b"fine_labels",
    ),
}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
# what a CIFAR batch may hold: dicts, lists, bytes, ints and NumPy arrays; nothing else is built
_ARRAY_REDUCE: Any = np.zeros(1, dtype=np.uint8).__reduce__()[0]
_SAFE: dict[tuple[str, str], Any] = {
    (_ARRAY_REDUCE.__module__, _ARRAY_REDUCE.__name__): _ARRAY_REDUCE,
    ("numpy.core.multiarray", "_reconstruct"): _ARRAY_REDUCE,  # as NumPy 1 wrote them
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles of Python 3 spell bytes
}


class _BatchUnpickler(pickle.Unpickler):
    """Refuses every class and function but the three that rebuild a NumPy array: a batch from
    a wrong or hostile file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE:
            return _SAFE[(module, name)]
        raise pickle.UnpicklingError(f"refused {module}.{name} (not part of a CIFAR batch)")


def cifar_batch(raw: bytes, where: str, labels: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch as (N x 3 x 32 x 32 uint8 images, int64 labels), or a one-line
    ConfigError naming `where` and what is wrong."""
    try:
        batch = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{where}: not a CIFAR batch ({_one_line(exc)})") from None
    data = batch.get(b"data") if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise ConfigError(f"{where}: not a CIFAR batch (no uint8 b'data' rows)")
    if data.shape[1] != 3072:
        raise ConfigError(f"{where}: rows of {data.shape[1]} bytes, CIFAR's hold 3072")
    y = np.asarray(batch.get(labels, []))
    if y.shape != (len(data),) or not np.issubdtype(y.dtype, np.integer):
        raise ConfigError(f"{where}: {len(data)} images but {y.size} {labels.decode()}")
    return data.reshape(-1, 3, 32, 32), y.astype(np.int64)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def cifar_source(ds: DatasetConfig) -> Path:
    """The tarball or extracted folder under dataset.path (downloading the tarball if told)."""
    layout, root = CIFAR[ds.name], Path(dataset_folder(ds))
    for found in (root / layout.folder, root, root / layout.tarball):
        if (found / layout.test).is_file() or (found.is_file() and found.name == layout.tarball):
            return found
    if ds.download:
        return download_cifar(layout, root)
    raise ConfigError(
        f"dataset.path: neither {layout.tarball} nor {layout.folder}/ under {root} "
        f"(set dataset.download: true to fetch it)"
    )


def download_cifar(layout: CifarLayout, root: Path, timeout: float = 120.0) -> Path:
    """Fetch the official tarball into root and check its published md5 (clusters with internet)."""
    import requests

    root.mkdir(parents=True, exist_ok=True)
    target, part = root / layout.tarball, root / (layout.tarball + ".part")
    log.info("downloading %s", layout.tarball)
    md5 = hashlib.md5(usedforsecurity=False)
    with requests.get(CIFAR_URL + layout.tarball, timeout=(10, timeout), stream=True) as resp:
        resp.raise_for_status()
        with part.open("wb") as out:
            for chunk in resp.iter_content(1 << 20):
                md5.update(chunk)
                out.write(chunk)
    if md5.hexdigest() != layout.md5:
        part.unlink()
        raise ConfigError(f"{target}: md5 {md5.hexdigest()} is not the published {layout.md5}")
    part.replace(target)
    return target


def cifar(ds: DatasetConfig) -> tuple[Split, Split]:
    """CIFAR-10 or CIFAR-100 (fine labels): the official train batches, then the test batch; each
    batch is parsed as it is read, so that one file's bytes at most are held beside the arrays."""
    layout = CIFAR[ds.name]
    source = cifar_source(ds)
    raws = _tar_members(source, layout) if source.is_file() else _folder_members(source, layout)
    parts = {name: cifar_batch(raw, where, layout.labels) for name, raw, where in raws}
    x, y = zip(*(parts.pop(name) for name in layout.train), strict=True)
    train = Split(np.concatenate(x), np.concatenate(y))
    return train, Split(*parts[layout.test])


def _folder_members(folder: Path, layout: CifarLayout) -> Iterator[tuple[str, bytes, str]]:
    for name in (*layout.train, layout.test):
        path = folder / name
        if not path.is_file():
            raise ConfigError(f"{path}: missing from the extracted {layout.folder}/")
        yield name, path.read_bytes(), str(path)


def _tar_members(path: Path, layout: CifarLayout) -> Iterator[tuple[str, bytes, str]]:
    """Read the batches straight out of the tarball (nothing is extracted to disk)."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            for name in (*layout.train, layout.test):
                member = f"{layout.folder}/{name}"
                try:
                    handle = tar.extractfile(member)
                except KeyError:
                    raise ConfigError(f"{path}: has no {member}") from None
                if handle is None:
                    raise ConfigError(f"{path}: {member} is not a file")
                raw = handle.read()
                yield name, raw, f"{path}: {member}"
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise ConfigError(f"{path}: not a readable {layout.tarball} ({_one_line(exc)})") from None


# ---------------------------------------------------------------- slicing between clients
