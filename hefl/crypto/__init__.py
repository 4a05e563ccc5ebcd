"""Updates on the wire, by scheme, and key material by role: what the rest of hefl calls.

`none` is the plaintext baseline on the same path. Each HE library is a subpackage behind the same
functions (tenseal/: ckks and bfv, the default; seal/: ckks and bfv with SEAL-Python; paillier/:
phe), imported only when a scheme or key function of its own is used: the config parser, and the
switches and aggregator of a `none` experiment, never load one. SEAL-Python, phe and gmpy2 are
optional (requirements-he.txt): `require` says in one line what to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Protocol, cast

from hefl.crypto.keydir import keys_match, read_keyless
from hefl.crypto.params import HeParams, fingerprint
from hefl.crypto.plain import PlainScheme
from hefl.crypto.scheme import KeyRing, Scheme, add_all
from hefl.errors import ConfigError

__all__ = [
    "HeParams",
    "KeyRing",
    "Scheme",
    "add_all",
    "fingerprint",
    "generate_keys",
    "keys_match",
    "library",
    "load_keyless",
    "load_secret",
    "make_scheme",
    "preload",
    "read_keyless",
    "require",
]


class Backend(Protocol):
    """What an HE library's subpackage provides."""

    def make_scheme(self, enc: HeParams, size: int, keys: KeyRing, seed: int) -> Scheme: ...

    def generate(self, enc: HeParams, key_dir: Path) -> None: ...

    def load_secret(self, enc: HeParams, key_dir: Path) -> KeyRing: ...

    def load_keyless(self, enc: HeParams, data: bytes) -> KeyRing: ...


# subpackage -> (modules it imports, what provides them)
LIBRARIES = {
    "tenseal": (("tenseal", "zstandard"), "tenseal and zstandard (requirements.txt)"),
    "seal": (("seal", "zstandard"), "seal-python (requirements-he.txt) and zstandard"),
    "paillier": (("phe", "gmpy2"), "phe and gmpy2 (requirements-he.txt)"),
}


def library(enc: HeParams) -> str:
    """The subpackage that serves `enc`: "" for none, paillier for paillier, else the backend."""
    if enc.scheme == "none":
        return ""
    if enc.scheme == "paillier":
        return "paillier"
    return enc.backend


def require(enc: HeParams) -> None:
    """Refuse at once, in one line, a config whose HE library is not installed here."""
    name = library(enc)
    if not name:
        return
    modules, provides = LIBRARIES[name]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        what = (
            f"{enc.scheme} with encryption.backend {name}"
            if enc.scheme != "paillier"
            else "scheme paillier"
        )
        raise ConfigError(
            f"encryption: {what} needs {provides}, missing here (no module "
            f"{', '.join(missing)}): .venv/bin/pip install -r requirements-he.txt"
        )


def _backend(enc: HeParams) -> Backend:
    """The library behind `enc`, imported on first use."""
    name = library(enc)
    if not name:
        raise ValueError(f"the {enc.scheme} scheme has no HE library (and no keys)")
    require(enc)
    return cast(Backend, importlib.import_module(f"hefl.crypto.{name}"))


def preload(enc: HeParams) -> None:
    """Import the library behind `enc` now (local mode, before it forks the nodes that use it)."""
    if library(enc):
        _backend(enc)


def make_scheme(enc: HeParams, size: int, keys: KeyRing | None = None, seed: int = 0) -> Scheme:
    """The experiment's scheme for updates of `size` values; `keys` holds this node's context
    (secret on clients, keyless elsewhere); `seed` drives a client's stochastic rounding."""
    if enc.scheme == "none":
        return PlainScheme(size, enc.clip)
    if keys is None:
        raise ValueError(f"the {enc.scheme} scheme needs a key ring")
    return _backend(enc).make_scheme(enc, size, keys, seed)


def generate_keys(enc: HeParams, key_dir: Path) -> None:
    """Write new key material for these parameters into `key_dir` (see hefl.crypto.keydir)."""
    _backend(enc).generate(enc, key_dir)


def load_secret(enc: HeParams, key_dir: Path) -> KeyRing:
    """A client's context from its key folder; refuses a file without a secret key or other
    parameters."""
    return _backend(enc).load_secret(enc, key_dir)


def load_keyless(enc: HeParams, data: bytes) -> KeyRing:
    """A switch's or the aggregator's context from pushed bytes; refuses a secret key or other
    parameters."""
    return _backend(enc).load_keyless(enc, data)
