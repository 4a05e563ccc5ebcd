"""A TenSEAL client's seeded ciphertexts: each fresh vector is rewritten onto a seed of its own
(hefl/crypto/seeding.py says how and why) and goes on the wire as a TenSEAL vector whose SEAL
ciphertext is in SEAL's seeded layout, half the bytes. TenSEAL's own loader expands the seed, so a
receiver needs no key, and no code of ours, to load it.

The secret key's residues are read once, into the client's memory, from the context it loaded
from its own key folder; nothing here is ever written anywhere.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from hefl.crypto.ntt import Ntt
from hefl.crypto.params import HeParams, coeff_primes, coeffs
from hefl.crypto.seeding import (
    SEED_BYTES,
    WORDS,
    FixedFactor,
    Layout,
    add_mod,
    dump,
    expand,
    key_residues,
    parse,
    sub_mod,
)
from hefl.crypto.tenseal.base import part_bytes
from hefl.crypto.tenseal.keys import context_bytes
from hefl.crypto.tenseal.packing import deflate, inflate
from hefl.crypto.tenseal.proto import Vector, context_secret, read_vector, write_vector

Loader = Callable[[Any, bytes], Any]  # ts.ckks_vector_from or ts.bfv_vector_from


def data_primes(enc: HeParams) -> list[int]:
    """The primes of the first data level, where fresh ciphertexts are (all but the special
    prime, which only keys carry)."""
    primes = list(coeff_primes(enc.poly_modulus_degree, coeffs(enc)))
    return primes[:-1] if len(primes) > 1 else primes


@functools.lru_cache(maxsize=4)
def ntt(primes: tuple[int, ...], n: int) -> Ntt:
    """SEAL's NTT for these primes, made once per process (its tables take 0.3 s; they are only
    read, so clients hosted in one process share them)."""
    return Ntt(primes, n)


def symmetric(ctx: Any) -> bool:
    """Whether the context encrypts with its secret key. Only such ciphertexts are seeded: a
    seeded one is then exactly what SEAL's own seeded symmetric encryption makes, where a public
    key's would carry noise that depends on the secret key (an older key folder's)."""
    try:
        ctx.has_public_key()
    except ValueError:  # TenSEAL: "not supported for symmetric encryption"
        return True
    return False


def secret_residues(ctx: Any, primes: int, n: int, limit: int) -> np.ndarray:
    """The secret key's NTT residues at the data level, from the context as TenSEAL serializes
    it (SEAL's save of the key, zstd-compressed, inside its private context)."""
    saved = context_secret(context_bytes(ctx, secret=True))
    return key_residues(inflate(saved, limit), primes, n)


class Seeder:
    """Moves a client's fresh TenSEAL vectors onto fresh seeds; it holds the secret key's residues
    at the data level (the client's own memory: the key is on its disk already)."""

    def __init__(self, ctx: Any, enc: HeParams, loader: Loader) -> None:
        self.ctx = ctx
        self.loader = loader
        self.ckks = enc.scheme == "ckks"
        self.primes = data_primes(enc)
        self.n = enc.poly_modulus_degree
        self.q = np.array(self.primes, dtype=WORDS)[:, None]
        self.limit = part_bytes(enc)
        residues = secret_residues(ctx, len(self.primes), self.n, 2 * self.limit)
        self.key = FixedFactor(residues, self.primes)
        self.ntt = None if self.ckks else ntt(tuple(self.primes), self.n)  # BFV: coefficients

    def seed(self, vector: Any) -> SeededVector:
        """`vector`, a fresh encryption, as the same message and noise under a fresh seed: c0
        becomes c0 + (c1 - a')*s, where a' is the seed's expansion."""
        message, full = self.open(vector)
        seed = os.urandom(SEED_BYTES)  # never derived from anything, never used twice
        fresh = expand(seed, self.primes, self.n)
        c0 = add_mod(full.polys[0], self.times_key(sub_mod(full.polys[1], fresh, self.q)), self.q)
        return SeededVector(self, seed, self.wire(message, full, c0, seed))

    def times_key(self, poly: np.ndarray) -> np.ndarray:
        """poly * s, exactly: pointwise in NTT form (CKKS), through SEAL's NTT for BFV."""
        if self.ntt is None:
            return self.key.times(poly)
        return self.ntt.inverse(self.key.times(self.ntt.forward(poly)))

    def open(self, vector: Any) -> tuple[Vector, Layout]:
        """A vector's fields and its one ciphertext taken apart (a fresh one: two polynomials)."""
        message = read_vector(bytes(vector.serialize()), self.ckks)
        if len(message.ciphertexts) != 1:
            raise ValueError(f"TenSEAL made a vector of {len(message.ciphertexts)} ciphertexts")
        full = parse(inflate(message.ciphertexts[0], self.limit))
        if full.seed is not None or full.polys.shape != (2, len(self.primes), self.n):
            raise ValueError("TenSEAL made a ciphertext of another shape than a fresh one")
        return message, full

    def wire(self, message: Vector, full: Layout, c0: np.ndarray, seed: bytes) -> bytes:
        """The vector's bytes with its ciphertext as c0 and the seed, in the version it was read
        with (TenSEAL's SEAL loads no other), zstd-compressed where smaller."""
        seeded = deflate(dump(Layout(full.version, full.members, c0[None], seed)))
        return write_vector(Vector(message.sizes, (seeded,), message.scale))

    def rewire(self, vector: Any, seed: bytes) -> bytes:
        """The bytes of a seeded vector that a plaintext was added to: c0 changed, c1 is still
        the seed's expansion (TenSEAL serializes it in full: it does not know the seed)."""
        message, full = self.open(vector)
        return self.wire(message, full, full.polys[0], seed)


class SeededVector:
    """A TenSEAL vector whose c1 is the expansion of `seed`: its wire bytes while nothing changed
    it, the vector itself once asked for (loaded from them). Adding a plaintext into it (what a
    precomputed encryption of zero gets) changes c0 only, so it stays seeded."""

    def __init__(self, seeder: Seeder, seed: bytes, wire: bytes) -> None:
        self.seeder = seeder
        self.seed = seed
        self._wire: bytes | None = wire
        self._vector: Any = None

    @property
    def vector(self) -> Any:
        return self._vector if self._vector is not None else self.load()

    def load(self) -> Any:
        """The vector, loaded from the wire bytes by TenSEAL (which expands the seed)."""
        if self._vector is None:
            assert self._wire is not None  # one of the two is always there
            self._vector = self.seeder.loader(self.seeder.ctx, self._wire)
        return self._vector

    def add_plain(self, values: list[Any]) -> None:
        # TenSEAL's C++ vector takes the list as it is (see TensealScheme.add_plain)
        self.vector.data.add_plain_(values)
        self._wire = None

    def dump(self) -> bytes:
        if self._wire is None:
            self._wire = self.seeder.rewire(self.vector, self.seed)
        return self._wire
