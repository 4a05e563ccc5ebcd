"""CKKS (TenSEAL): approximate arithmetic on floats; small parameters suffice as nodes only add."""

from __future__ import annotations

from typing import Any

import numpy as np
import tenseal as ts

from hefl.crypto.params import HeParams
from hefl.crypto.scheme import KeyRing
from hefl.crypto.tenseal.base import TensealScheme
from hefl.errors import ProtocolError


class CkksScheme(TensealScheme):
    name = "ckks"
    make = staticmethod(ts.ckks_vector)
    zero = 0.0

    def __init__(self, enc: HeParams, size: int, keys: KeyRing) -> None:
        super().__init__(enc, size, keys, ts.ckks_vector_from)

    def encrypt_parts(
        self, values: np.ndarray, rng: np.random.Generator | None = None
    ) -> list[Any]:
        return self.encrypt_chunks(
            [values[i : i + self.slots] for i in range(0, self.size, self.slots)]
        )

    def check_scale(self, index: int, ct: Any) -> None:
        """A ciphertext of this context's parameters but another scale would add to nonsense."""
        scale = ct.scale() if callable(ct.scale) else ct.scale
        # written so that NaN fails too
        if not abs(scale - self.enc.scale) <= 1e-6 * self.enc.scale:
            raise ProtocolError(
                f"ciphertext {index} has scale {scale!r}, expected 2^{self.enc.scale_bits}"
            )

    def decrypt(self, loaded: list[ts.CKKSVector], contributors: int) -> np.ndarray:
        return np.concatenate([np.asarray(vec.decrypt(), dtype=np.float64) for vec in loaded])
