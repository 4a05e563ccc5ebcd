"""Updates on the wire, by scheme, and key material by role: what the rest of hefl calls.

`none` is the plaintext baseline on the same path. Each HE library is a subpackage (tenseal/: ckks
and bfv) behind the same functions, imported only when a scheme or key function of its own is used:
the config parser, and the switches and aggregator of a `none` experiment, never load one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from hefl.crypto.keydir import keys_match, read_keyless
from hefl.crypto.params import HeParams, fingerprint
from hefl.crypto.plain import PlainScheme
from hefl.crypto.scheme import KeyRing, Scheme, add_all

__all__ = [
    "HeParams",
    "KeyRing",
    "Scheme",
    "add_all",
    "fingerprint",
    "generate_keys",
    "keys_match",
    "load_keyless",
    "load_secret",
    "make_scheme",
    "read_keyless",
]


class Backend(Protocol):
    """What an HE library's subpackage provides."""

    def make_scheme(self, enc: HeParams, size: int, keys: KeyRing, seed: int) -> Scheme: ...

    def generate(self, enc: HeParams, key_dir: Path) -> None: ...

    def load_secret(self, enc: HeParams, key_dir: Path) -> KeyRing: ...

    def load_keyless(self, enc: HeParams, data: bytes) -> KeyRing: ...


def _backend(enc: HeParams) -> Backend:
    """The library behind `enc.scheme`, imported on first use."""
    if enc.scheme in ("ckks", "bfv"):
        from hefl.crypto import tenseal

        return tenseal
    raise ValueError(f"the {enc.scheme} scheme has no HE library (and no keys)")


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
