"""The SEAL-Python backend: ckks and bfv with Microsoft SEAL's own API (the library the original
study built by hand), the same parameters, packing, clipping and quantization as TenSEAL's.

Importing this package imports `seal` (pip install -r requirements-he.txt); `hefl.crypto` does so
only for `encryption.backend: seal`.
"""

from __future__ import annotations

from importlib.metadata import version as _version

from hefl.crypto.params import HeParams
from hefl.crypto.scheme import KeyRing, Scheme
from hefl.crypto.seal.keys import generate, load_keyless, load_secret
from hefl.crypto.seal.schemes import SealBfv, SealCkks

__all__ = ["generate", "load_keyless", "load_secret", "make_scheme", "version"]


def make_scheme(enc: HeParams, size: int, keys: KeyRing, seed: int) -> Scheme:
    if enc.scheme == "ckks":
        return SealCkks(enc, size, keys)
    if enc.scheme == "bfv":
        return SealBfv(enc, size, keys, seed)
    raise ValueError(f"SEAL-Python has no scheme {enc.scheme!r} here")


def version() -> str:
    return f"seal-python {_version('seal-python')}"
