"""One scheme interface for every way an update crosses the wire; `none` is the plaintext baseline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from hefl.config import EncryptionConfig
from hefl.crypto.plain import PlainScheme


class Scheme(Protocol):
    """Encrypt on clients, add anywhere, decrypt on clients; payloads are opaque bytes."""

    name: str
    size: int  # values per update
    wire_size: int  # bytes of one payload on the wire (an upper bound where it varies)

    def encrypt(self, values: np.ndarray) -> bytes: ...

    def add(self, payloads: Sequence[bytes]) -> bytes: ...

    def decrypt(self, payload: bytes) -> np.ndarray: ...

    def check(self, payload: bytes) -> None: ...


def make_scheme(cfg: EncryptionConfig, size: int) -> Scheme:
    """The scheme an experiment configured, for updates of `size` values."""
    if cfg.scheme == "none":
        return PlainScheme(size)
    raise NotImplementedError(cfg.scheme)
