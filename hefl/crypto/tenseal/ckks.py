"""CKKS (TenSEAL): approximate arithmetic on floats; small parameters suffice as nodes only add."""

from __future__ import annotations

import tenseal as ts

from hefl.crypto.encoding import CkksEncoding
from hefl.crypto.params import HeParams
from hefl.crypto.scheme import KeyRing
from hefl.crypto.tenseal.base import TensealScheme


class CkksScheme(CkksEncoding, TensealScheme):
    make = staticmethod(ts.ckks_vector)

    def __init__(self, enc: HeParams, size: int, keys: KeyRing) -> None:
        super().__init__(enc, size, keys, ts.ckks_vector_from)
