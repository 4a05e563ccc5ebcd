"""How an update becomes the chunks of its ciphertexts and a decrypted sum becomes values again, by
scheme, the same whichever library encrypts them (mixed into hefl.crypto.chunked.ChunkedScheme).

ckks: the float values themselves, n/2 per ciphertext. bfv: BatchCrypt-style, 16-bit quantized
values, two per slot, n slots per ciphertext, exact integer sums mod t. paillier: quantized values
packed into one big integer per ciphertext, each in a lane with room for the sum of every client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from hefl.crypto.params import batching_prime, lane_bits, paillier_lane_bits
from hefl.crypto.quantize import dequantize_sum, pack, quantize, unpack
from hefl.errors import ProtocolError

if TYPE_CHECKING:
    from hefl.crypto.params import HeParams


class CkksEncoding:
    name = "ckks"
    zero = 0.0
    slots: int
    size: int

    def encode(self, values: np.ndarray, rng: np.random.Generator | None) -> list[np.ndarray]:
        return [values[i : i + self.slots] for i in range(0, self.size, self.slots)]

    def decode(self, parts: list[np.ndarray], contributors: int) -> np.ndarray:
        return np.concatenate([np.asarray(p, dtype=np.float64) for p in parts])


class BfvEncoding:
    name = "bfv"
    zero: float = 0  # an integer: TenSEAL takes ints for bfv
    enc: HeParams
    slots: int
    size: int
    rng: np.random.Generator  # the scheme's own stochastic rounding stream

    def setup_encoding(self, enc: HeParams, seed: int) -> None:
        self.lane = lane_bits(enc)
        self.modulus = batching_prime(enc.plain_modulus_bits, enc.poly_modulus_degree)
        self.rng = np.random.default_rng(seed)  # stochastic rounding: reproducible per client

    def slot_count(self, values: int) -> int:
        return (values + 1) // 2

    def encode(self, values: np.ndarray, rng: np.random.Generator | None) -> list[np.ndarray]:
        q = quantize(values, self.enc.clip, self.enc.quant_bits, self.rng if rng is None else rng)
        packed = pack(q, self.lane)
        per_ct = self.slots // 2
        return [packed[i : i + per_ct] for i in range(0, len(packed), per_ct)]

    def decode(self, parts: list[np.ndarray], contributors: int) -> np.ndarray:
        slots = np.concatenate([np.asarray(p, dtype=np.int64) % self.modulus for p in parts])
        total = unpack(slots, self.lane, self.size)
        return dequantize_sum(total, self.enc.clip, self.enc.quant_bits, contributors)


class PaillierEncoding:
    """Each chunk is one integer: `slots` quantized values, value i at bits i*lane .. (i+1)*lane-1
    (lane = quant_bits + ceil(log2(clients)): the sum of every client's value never carries into
    the next lane), below 2^(key_bits - 1) <= n."""

    name = "paillier"
    zero: float = 0
    enc: HeParams
    slots: int
    size: int
    rng: np.random.Generator

    def setup_encoding(self, enc: HeParams, seed: int) -> None:
        self.lane = paillier_lane_bits(enc)
        self.rng = np.random.default_rng(seed)

    def encode(self, values: np.ndarray, rng: np.random.Generator | None) -> list[int]:
        q = quantize(values, self.enc.clip, self.enc.quant_bits, self.rng if rng is None else rng)
        step = self.slots
        return [pack_lanes(q[i : i + step], self.lane) for i in range(0, self.size, step)]

    def decode(self, parts: list[np.ndarray], contributors: int) -> np.ndarray:
        total = np.concatenate(parts)
        return dequantize_sum(total, self.enc.clip, self.enc.quant_bits, contributors)


def pack_lanes(q: np.ndarray, lane: int) -> int:
    """Non-negative values below 2^lane as one integer, value i in bits i*lane .. (i+1)*lane-1."""
    bits = ((q.astype(np.uint64)[:, None] >> np.arange(lane, dtype=np.uint64)) & 1).astype(np.uint8)
    return int.from_bytes(np.packbits(bits.ravel(), bitorder="little").tobytes(), "little")


def unpack_lanes(m: int, lane: int, count: int) -> np.ndarray:
    """The first `count` lanes of `m` (lane < 63 bits)."""
    nbits = lane * count
    raw = np.frombuffer((m % (1 << nbits)).to_bytes((nbits + 7) // 8, "little"), dtype=np.uint8)
    bits = np.unpackbits(raw, bitorder="little")[:nbits].reshape(count, lane).astype(np.int64)
    out: np.ndarray = bits @ (np.int64(1) << np.arange(lane, dtype=np.int64))
    return out


def check_seal_ciphertext(index: int, ct: Any, parms_id: list[int], enc: HeParams) -> None:
    """One fresh-shaped SEAL ciphertext of this context (TenSEAL's hold SEAL's own): anything else
    (two polynomials more, transparent, another parameter level, NTT form flipped, another CKKS
    scale) would make the library fail, or crash, or add to nonsense."""
    if (
        ct.size() != 2
        or ct.is_transparent()
        or ct.is_ntt_form() != (enc.scheme == "ckks")  # SEAL keeps CKKS in NTT form, BFV not
        or list(ct.parms_id()) != parms_id
    ):
        raise ProtocolError(
            f"ciphertext {index} is not a ciphertext of this experiment's parameters"
        )
    if enc.scheme == "ckks":
        check_scale(index, ct, enc)


def check_scale(index: int, ct: Any, enc: HeParams) -> None:
    """A CKKS ciphertext of this context's parameters but another scale would add to nonsense."""
    scale = ct.scale() if callable(ct.scale) else ct.scale
    # written so that NaN fails too
    if not abs(scale - enc.scale) <= 1e-6 * enc.scale:
        raise ProtocolError(f"ciphertext {index} has scale {scale!r}, expected 2^{enc.scale_bits}")
