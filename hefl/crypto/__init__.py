"""One scheme interface for every way an update crosses the wire; `none` is the plaintext baseline.

Clients `encrypt` and `decrypt`; adders `load` (and so validate) what they receive and `add` loaded
payloads into one new payload; a relay only `check`s a payload's shape.
TenSEAL is imported only when a ckks or bfv scheme is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from hefl.config import EncryptionConfig
    from hefl.crypto.keys import KeyRing


class Scheme(Protocol):
    """How one update of `size` float values becomes bytes on the wire and back."""

    name: str
    size: int  # values per update
    wire_size: int  # bytes of one payload (an upper bound where it varies)
    can_decrypt: bool  # False on switches and the aggregator: they hold no secret key

    def encrypt(self, values: np.ndarray) -> bytes: ...

    def check(self, payload: bytes) -> None: ...

    def load(self, payload: bytes) -> Any: ...

    def add(self, loaded: Sequence[Any]) -> bytes: ...

    def decrypt(self, loaded: Any, contributors: int) -> np.ndarray: ...

    def close(self) -> None: ...


def make_scheme(enc: EncryptionConfig, size: int, keys: KeyRing | None = None, seed: int = 0) -> Scheme:
    """The experiment's scheme for updates of `size` values; `keys` holds this node's context
    (secret on clients, public elsewhere); `seed` drives a client's stochastic rounding."""
    if enc.scheme == "none":
        from hefl.crypto.plain import PlainScheme

        return PlainScheme(size)
    if keys is None:
        raise ValueError(f"the {enc.scheme} scheme needs a key ring")
    if enc.scheme == "ckks":
        from hefl.crypto.ckks import CkksScheme

        return CkksScheme(enc, size, keys)
    from hefl.crypto.bfv import BfvScheme

    return BfvScheme(enc, size, keys, seed)
