"""BFV (TenSEAL), BatchCrypt-style: 16-bit quantized values, two per slot, exact integer sums."""

from __future__ import annotations

from typing import Any

import numpy as np
import tenseal as ts

from hefl.crypto.params import HeParams, batching_prime, lane_bits
from hefl.crypto.quantize import dequantize_sum, pack, quantize, unpack
from hefl.crypto.scheme import KeyRing
from hefl.crypto.tenseal.base import TensealScheme


class BfvScheme(TensealScheme):
    name = "bfv"
    make = staticmethod(ts.bfv_vector)
    zero = 0

    def __init__(self, enc: HeParams, size: int, keys: KeyRing, seed: int) -> None:
        super().__init__(enc, size, keys, ts.bfv_vector_from)
        self.lane = lane_bits(enc)
        self.modulus = batching_prime(enc.plain_modulus_bits, enc.poly_modulus_degree)
        self.rng = np.random.default_rng(seed)  # stochastic rounding: reproducible per client

    def slot_count(self, values: int) -> int:
        return (values + 1) // 2

    def encrypt_parts(
        self, values: np.ndarray, rng: np.random.Generator | None = None
    ) -> list[Any]:
        q = quantize(values, self.enc.clip, self.enc.quant_bits, self.rng if rng is None else rng)
        packed = pack(q, self.lane)
        per_ct = self.slots // 2
        return self.encrypt_chunks([packed[i : i + per_ct] for i in range(0, len(packed), per_ct)])

    def decrypt(self, loaded: list[ts.BFVVector], contributors: int) -> np.ndarray:
        slots = np.concatenate(
            [np.asarray(vec.decrypt(), dtype=np.int64) % self.modulus for vec in loaded]
        )
        total = unpack(slots, self.lane, self.size)
        return dequantize_sum(total, self.enc.clip, self.enc.quant_bits, contributors)
