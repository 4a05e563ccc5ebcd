"""The TenSEAL backend: the ckks and bfv schemes, their keys by role, a worker pool that encrypts.

Importing this package imports TenSEAL; `hefl.crypto` does so only when a ckks or bfv scheme or key
function is used.
"""

from __future__ import annotations

import tenseal

from hefl.crypto.params import HeParams
from hefl.crypto.scheme import KeyRing, Scheme
from hefl.crypto.tenseal.bfv import BfvScheme
from hefl.crypto.tenseal.ckks import CkksScheme
from hefl.crypto.tenseal.keys import generate, load_keyless, load_secret

__all__ = ["generate", "load_keyless", "load_secret", "make_scheme", "version"]


def make_scheme(enc: HeParams, size: int, keys: KeyRing, seed: int) -> Scheme:
    """A ckks or bfv scheme in `keys`' context; `seed` drives bfv's stochastic rounding."""
    if enc.scheme == "ckks":
        return CkksScheme(enc, size, keys)
    if enc.scheme == "bfv":
        return BfvScheme(enc, size, keys, seed)
    raise ValueError(f"TenSEAL has no scheme {enc.scheme!r}")


def version() -> str:
    return f"tenseal {tenseal.__version__}"
