"""CKKS (TenSEAL): approximate arithmetic on floats; small parameters suffice because nodes only add."""

from __future__ import annotations

import numpy as np
import tenseal as ts

from hefl.config import EncryptionConfig
from hefl.crypto.frame import frame
from hefl.crypto.keys import KeyRing
from hefl.crypto.vectors import VectorScheme
from hefl.errors import ProtocolError


class CkksScheme(VectorScheme):
    name = "ckks"

    def __init__(self, enc: EncryptionConfig, size: int, keys: KeyRing) -> None:
        super().__init__(enc, size, keys, ts.ckks_vector_from)
        self.scale = 2.0**enc.scale_bits

    def encrypt(self, values: np.ndarray) -> bytes:
        parts = [ts.ckks_vector(self.ctx, values[i:i + self.slots].tolist()).serialize()
                 for i in range(0, self.size, self.slots)]
        return frame(parts)

    def check_vector(self, index: int, vec: ts.CKKSVector) -> None:
        """A ciphertext of this context's parameters but another scale would add to nonsense."""
        (ct,) = vec.ciphertext()
        scale = ct.scale() if callable(ct.scale) else ct.scale
        if abs(scale - self.scale) > 1e-6 * self.scale or ct.size() != 2 or ct.is_transparent():
            raise ProtocolError(f"ciphertext {index} has scale 2^{np.log2(max(scale, 1.0)):.1f} and {ct.size()} "
                                f"polynomials; expected 2^{np.log2(self.scale):g} and 2")

    def decrypt(self, loaded: list[ts.CKKSVector], contributors: int) -> np.ndarray:
        return np.concatenate([np.asarray(vec.decrypt(), dtype=np.float64) for vec in loaded])
