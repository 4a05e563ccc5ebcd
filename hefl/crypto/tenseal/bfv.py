"""BFV (TenSEAL), BatchCrypt-style: 16-bit quantized values, two per slot, exact integer sums."""

from __future__ import annotations

import tenseal as ts

from hefl.crypto.encoding import BfvEncoding
from hefl.crypto.params import HeParams
from hefl.crypto.scheme import KeyRing
from hefl.crypto.tenseal.base import TensealScheme


class BfvScheme(BfvEncoding, TensealScheme):
    make = staticmethod(ts.bfv_vector)

    def __init__(self, enc: HeParams, size: int, keys: KeyRing, seed: int) -> None:
        super().__init__(enc, size, keys, ts.bfv_vector_from)
        self.setup_encoding(enc, seed)
