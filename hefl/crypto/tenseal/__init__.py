"""The TenSEAL backend: the ckks and bfv schemes, their keys by role, a worker pool that encrypts,
and seeded ciphertexts (seeded.py: half the uplink, sums as seed lists).

Importing this package imports TenSEAL; `hefl.crypto` does so only when a ckks or bfv scheme or key
function is used.
"""

from __future__ import annotations

from typing import Any

import tenseal

from hefl.crypto.params import HeParams
from hefl.crypto.scheme import KeyRing, Scheme
from hefl.crypto.tenseal.base import seeded_here
from hefl.crypto.tenseal.bfv import BfvScheme
from hefl.crypto.tenseal.ckks import CkksScheme
from hefl.crypto.tenseal.keys import generate, load_keyless, load_secret

__all__ = ["generate", "load_keyless", "load_secret", "make_scheme", "version"]


def make_scheme(enc: HeParams, size: int, keys: KeyRing, seed: int) -> Scheme:
    """A ckks or bfv scheme in `keys`' context; `seed` drives bfv's stochastic rounding."""
    if enc.scheme not in ("ckks", "bfv"):
        raise ValueError(f"TenSEAL has no scheme {enc.scheme!r}")
    ckks, bfv = _classes(enc)
    made: Scheme = ckks(enc, size, keys) if enc.scheme == "ckks" else bfv(enc, size, keys, seed)
    return made


def _classes(enc: HeParams) -> tuple[Any, Any]:
    """The seeded schemes where `seeded_here`, else those that send every ciphertext full."""
    if seeded_here(enc):
        from hefl.crypto.tenseal.seeded import SeededBfv, SeededCkks

        return SeededCkks, SeededBfv
    return CkksScheme, BfvScheme


def version() -> str:
    return f"tenseal {tenseal.__version__}"
