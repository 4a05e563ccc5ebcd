"""BatchCrypt-style integer encoding for BFV: clip, stochastically quantize, pack two per slot."""

from __future__ import annotations

import numpy as np


def quantize(values: np.ndarray, clip: float, bits: int, rng: np.random.Generator) -> np.ndarray:
    """Map [-clip, clip] onto 0..2^bits-1, rounding up with probability equal to the fraction
    (unbiased: the expected sum of many is exact)."""
    top = 2**bits - 1
    scaled = (np.clip(values, -clip, clip) + clip) * (top / (2 * clip))
    low = np.floor(scaled)
    out: np.ndarray = (low + (rng.random(len(values)) < scaled - low)).astype(np.int64)
    return out


def dequantize_sum(total: np.ndarray, clip: float, bits: int, count: int) -> np.ndarray:
    """The sum of `count` clients' values from the sum of their quantized values."""
    out: np.ndarray = total.astype(np.float64) * (2 * clip / (2**bits - 1)) - count * clip
    return out


def pack(q: np.ndarray, lane: int) -> np.ndarray:
    """Two values per slot: q[2k] in the low lane, q[2k+1] in the high lane."""
    if len(q) % 2:
        q = np.append(q, 0)
    out: np.ndarray = q[0::2] + (q[1::2] << lane)
    return out


def unpack(slots: np.ndarray, lane: int, size: int) -> np.ndarray:
    out = np.empty(2 * len(slots), dtype=np.int64)
    out[0::2] = slots & ((1 << lane) - 1)
    out[1::2] = slots >> lane
    return out[:size]
