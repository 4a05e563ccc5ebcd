"""Seeded SEAL ciphertexts without an HE library: SEAL 4's byte layout, the expansion of a seed into
the uniform polynomial c1 exactly as SEAL draws it, exact arithmetic mod its primes, and sums kept
as seed lists (c0 and their contributors' seeds). The libraries' own parts are in
hefl/crypto/seal/seeded.py (SEAL-Python) and hefl/crypto/tenseal/ (TenSEAL).

A fresh symmetric ciphertext is (c0, c1) = (-(a*s + e) + m, a) with `a` uniformly random: sending
the seed `a` was drawn from instead of `a` halves the bytes (Microsoft SEAL does exactly this when
it saves a `Serializable` ciphertext; its loader expands the seed). The Python libraries'
encryptions carry `a` expanded, with a seed we cannot see, so a client moves each one to a seed of
its own: it draws the seed from `os.urandom`, expands `a'` from it as SEAL does (SHAKE256 of seed
and block counter in 4096-byte blocks; 64-bit words, rejected at or above the largest multiple of
each prime and redrawn from the same stream, then reduced), and sets c0' = c0 + (a - a')*s, which
is c0 as if `a'` had been drawn (the same noise e, the same message). The product is exact
arithmetic mod each prime: pointwise in NTT form (CKKS ciphertexts and the secret key are stored
so), through SEAL's own NTT for BFV (stored in coefficient form). A seed is never derived from
anything and never used twice: two plaintexts under one key and one `a` would give away their
difference up to noise.

The layout is SEAL 4's: a 16-byte SEALHeader, the ciphertext's members, its data as a DynArray (a
header, a count, the words) and, seeded, c0 alone followed by the generator's info (a header, the
PRNG type, the seed). A ciphertext is written with the version it was read with: seal-python 4.4.0
writes 4.4, and TenSEAL 0.3.18's SEAL writes 4.3 and loads nothing else.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hefl.errors import ProtocolError

HEADER = struct.Struct("<HBBBBHQ")  # SEALHeader: magic, size, major, minor, compression, 0, total
MAGIC = 0xA15E
# Ciphertext members (SEAL 4): parms_id, NTT form, size, n, primes, scale, correction factor
MEMBERS = struct.Struct("<32sBQQQdQ")
COUNT = struct.Struct("<Q")  # a DynArray's word count
SEED_BYTES = 64  # seal::prng_seed_byte_count
SHAKE256 = 2  # seal::prng_type::shake256
BLOCK = 4096  # the bytes Shake256PRNG draws per counter value
WORDS = np.dtype("<u8")
_DATA = HEADER.size + MEMBERS.size  # where the DynArray's header starts
_WORDS_AT = _DATA + HEADER.size + COUNT.size  # where its words start


@dataclass(frozen=True)
class Layout:
    """A SEAL ciphertext's bytes taken apart."""

    version: tuple[int, int]
    members: bytes  # as SEAL wrote them
    polys: np.ndarray  # (size, primes, n) residues, read-only (a view of the bytes)
    seed: bytes | None  # seeded: the seed c1 expands from (polys then holds c0 alone)

    @property
    def ntt_form(self) -> bool:
        return bool(self.members[32])


def parse(raw: bytes) -> Layout:
    """A ciphertext as SEAL writes it without compression, full or seeded; anything else (cut
    short, sizes out of SEAL's bounds, data that does not match them) is a ProtocolError."""
    size, n, primes, count = _shape(raw)
    polys = size if count == size * n * primes else 1
    end = _WORDS_AT + 8 * count
    if count != polys * n * primes or end > len(raw):
        raise ProtocolError("SEAL ciphertext's data does not match its size")
    data = np.frombuffer(raw, dtype=WORDS, count=count, offset=_WORDS_AT)
    seed = None
    if polys != size:
        seed = _seed(raw[end:])
    elif end != len(raw):
        raise ProtocolError("SEAL ciphertext has bytes after its data")
    version = (raw[3], raw[4])
    return Layout(version, raw[HEADER.size : _DATA], data.reshape(polys, primes, n), seed)


def _shape(raw: bytes) -> tuple[int, int, int, int]:
    """(size, n, primes, word count) from a ciphertext's header and members, each within SEAL's
    bounds (size 2..16, n a power of two up to 32768, at most 64 primes)."""
    if len(raw) < _WORDS_AT:
        raise ProtocolError(f"a SEAL ciphertext of {len(raw)} bytes is shorter than its header")
    magic, _, major, _, compression, _, total = HEADER.unpack_from(raw)
    if magic != MAGIC or compression != 0 or total != len(raw) or major != 4:
        raise ProtocolError("not an uncompressed SEAL 4 ciphertext")
    _, _, size, n, primes, _, _ = MEMBERS.unpack_from(raw, HEADER.size)
    (count,) = COUNT.unpack_from(raw, _WORDS_AT - COUNT.size)
    if not (2 <= size <= 16 and 2 <= n <= 32768 and n & (n - 1) == 0 and 1 <= primes <= 64):
        raise ProtocolError(f"SEAL ciphertext of size {size}, n {n}, {primes} primes")
    return size, n, primes, count


def _seed(info: bytes) -> bytes:
    """The seed of a seeded ciphertext's generator info: a SEAL header, SHAKE256, 64 bytes."""
    length = HEADER.size + 1 + SEED_BYTES
    if len(info) != length or info[HEADER.size] != SHAKE256:
        raise ProtocolError("seeded SEAL ciphertext without a SHAKE256 seed")
    magic, _, major, _, compression, _, total = HEADER.unpack_from(info)
    if (magic, major, compression, total) != (MAGIC, 4, 0, length):
        raise ProtocolError("seeded SEAL ciphertext whose seed has no SEAL 4 header")
    return info[HEADER.size + 1 :]


def dump(layout: Layout) -> bytes:
    """SEAL's bytes for a layout: every polynomial, or c0 and the generator's info if seeded."""
    major, minor = layout.version
    words = np.ascontiguousarray(layout.polys, dtype=WORDS).tobytes()
    array = HEADER.size + COUNT.size + len(words)
    parts = [layout.members, HEADER.pack(MAGIC, HEADER.size, major, minor, 0, 0, array)]
    parts += [COUNT.pack(len(words) // 8), words]
    if layout.seed is not None:
        info = HEADER.size + 1 + SEED_BYTES
        parts += [HEADER.pack(MAGIC, HEADER.size, major, minor, 0, 0, info), bytes([SHAKE256])]
        parts.append(layout.seed)
    body = b"".join(parts)
    return HEADER.pack(MAGIC, HEADER.size, major, minor, 0, 0, HEADER.size + len(body)) + body


# ------------------------------------------------------------------- SEAL's uniform polynomial


class Stream:
    """SEAL's Shake256PRNG: SHAKE256(seed || counter) in BLOCK-byte blocks, counter from 0."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self.block = 0
        self.buffer = b""
        self.at = 0

    def read(self, count: int) -> bytes:
        while len(self.buffer) - self.at < count:
            blocks = -(-(count - (len(self.buffer) - self.at)) // BLOCK)
            fresh = [self._block(self.block + i) for i in range(blocks)]
            self.buffer = self.buffer[self.at :] + b"".join(fresh)
            self.at = 0
            self.block += blocks
        out = self.buffer[self.at : self.at + count]
        self.at += count
        return out

    def _block(self, counter: int) -> bytes:
        return hashlib.shake_256(self.seed + struct.pack("<Q", counter)).digest(BLOCK)


def expand(seed: bytes, primes: Sequence[int], n: int) -> np.ndarray:
    """The (primes, n) polynomial SEAL's `sample_poly_uniform` draws from a SHAKE256 seed."""
    stream = Stream(seed)
    words = np.frombuffer(stream.read(8 * n * len(primes)), dtype=WORDS).reshape(len(primes), n)
    words = words.copy()
    top = (1 << 64) - 1
    for j, q in enumerate(primes):
        limit = top - top % q - 1  # SEAL's max_multiple: a word at or above it is drawn again
        for i in np.flatnonzero(words[j] >= np.uint64(limit)):
            word = limit
            while word >= limit:
                (word,) = COUNT.unpack(stream.read(8))
            words[j, i] = word
        words[j] %= np.uint64(q)
    return words


# ------------------------------------------------------------------- exact arithmetic mod q


def mul_high(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The high 64 bits of the 128-bit products x*y, from 32-bit halves (numpy has no uint128)."""
    low32 = np.uint64(0xFFFFFFFF)
    shift = np.uint64(32)
    x0, x1, y0, y1 = x & low32, x >> shift, y & low32, y >> shift
    cross1, cross2 = x1 * y0, x0 * y1
    carry = (((x0 * y0) >> shift) + (cross1 & low32) + (cross2 & low32)) >> shift
    out: np.ndarray = x1 * y1 + (cross1 >> shift) + (cross2 >> shift) + carry
    return out


class FixedFactor:
    """x * y mod q for a fixed y (the secret key) and any x below q, exactly, for primes below
    2^63: Shoup's method, y' = floor(y * 2^64 / q) computed once with Python integers."""

    def __init__(self, y: np.ndarray, primes: Sequence[int]) -> None:
        self.y = np.ascontiguousarray(y, dtype=WORDS)
        self.q = np.array(primes, dtype=WORDS)[:, None]
        self.y_shoup = np.array(
            [[(int(v) << 64) // q for v in row] for row, q in zip(self.y, primes, strict=True)],
            dtype=WORDS,
        )

    def times(self, x: np.ndarray) -> np.ndarray:
        quotient = mul_high(x, self.y_shoup)  # floor(x*y/q) or one less
        with np.errstate(over="ignore"):
            rest = x * self.y - quotient * self.q  # exact mod 2^64, and below 2q
        return reduce_once(rest, self.q)


def reduce_once(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.where(x >= q, x - q, x)
    return out


def add_mod(x: np.ndarray, y: np.ndarray, q: np.ndarray) -> np.ndarray:
    return reduce_once(x + y, q)  # below 2^61 + 2^61: no wrap


def sub_mod(x: np.ndarray, y: np.ndarray, q: np.ndarray) -> np.ndarray:
    return reduce_once(x + (q - y), q)


def key_residues(raw: bytes, primes: int, n: int) -> np.ndarray:
    """A secret key's NTT residues mod the first `primes` primes (the data level's), from SEAL's
    uncompressed bytes of it: a header, the plaintext's parms_id, coefficient count and scale, its
    data (every prime of the key level)."""
    at = HEADER.size + 32 + 8 + 8 + HEADER.size
    magic, _, major, _, compression, _, _ = HEADER.unpack_from(raw)
    if (magic, major, compression) != (MAGIC, 4, 0) or len(raw) < at + 8:
        raise ValueError("the secret key is not in SEAL 4's uncompressed layout")
    (count,) = COUNT.unpack_from(raw, at)
    if len(raw) != at + 8 + 8 * count or count % n or count // n < primes:
        raise ValueError("the secret key is not SEAL 4's layout for these parameters")
    words = np.frombuffer(raw, dtype=WORDS, count=count, offset=at + 8).reshape(-1, n)
    return words[:primes].copy()


def fresh_members(parms_id: Sequence[int], ckks: bool, n: int, primes: int, scale: float) -> bytes:
    """The members every fresh ciphertext of an experiment carries (SEAL 4's Ciphertext before its
    data): the first data level's parms_id, NTT form (CKKS), size 2, n, the primes at that level,
    the scale (1.0 but for CKKS) and correction factor 1."""
    return MEMBERS.pack(struct.pack("<4Q", *parms_id), ckks, 2, n, primes, scale, 1)


HEAD_BYTES = _WORDS_AT  # a ciphertext's bytes before its words: enough to tell its form


def seeded_head(head: bytes) -> bool:
    """Whether a SEAL ciphertext is seeded, from its first HEAD_BYTES bytes (uncompressed): its
    data holds one polynomial where its size says two."""
    if len(head) < _WORDS_AT:
        raise ProtocolError("a SEAL ciphertext shorter than its header")
    magic, _, major, _, compression, _, _ = HEADER.unpack_from(head)
    if magic != MAGIC or major != 4 or compression != 0:
        raise ProtocolError("not an uncompressed SEAL 4 ciphertext")
    _, _, size, n, primes, _, _ = MEMBERS.unpack_from(head, HEADER.size)
    (count,) = COUNT.unpack_from(head, _WORDS_AT - COUNT.size)
    return bool(count != size * n * primes)


def version_of(raw: bytes) -> tuple[int, int]:
    """The SEAL version an object's header names (what the library that wrote it loads)."""
    magic, _, major, minor, _, _, _ = HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise ProtocolError("not a SEAL object")
    return major, minor
