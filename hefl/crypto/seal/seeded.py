"""SEAL-Python's seeded ciphertexts: a client moves each fresh symmetric encryption onto a seed of
its own (hefl/crypto/seeding.py says how and why), and adders expand seed lists with SEAL's own
loader.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import seal

from hefl.crypto.ntt import Ntt
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
    version_of,
)
from hefl.crypto.seedlist import SeedSum

# ------------------------------------------------------------------- the client's part


@dataclass
class SeededCiphertext:
    """A SEAL ciphertext whose c1 is the expansion of `seed`: adding a plaintext into it (what
    precomputed encryptions of zero get) changes c0 only, so it stays seeded."""

    ct: Any  # seal.Ciphertext
    seed: bytes

    def dump(self) -> bytes:
        full = parse(bytes(self.ct.to_string(seal.compr_mode_type.none)))
        return dump(Layout(full.version, full.members, full.polys[:1], self.seed))


class Seeder:
    """Moves a client's fresh ciphertexts onto fresh seeds; it holds the secret key's residues at
    the data level (a client's own memory: the key is on its disk already)."""

    def __init__(self, context: Any, secret: Any) -> None:
        parms = context.first_context_data().parms()
        self.context = context
        self.primes = [m.value() for m in parms.coeff_modulus()]
        self.n = parms.poly_modulus_degree()
        self.q = np.array(self.primes, dtype=WORDS)[:, None]
        self.key = FixedFactor(secret_residues(secret, len(self.primes), self.n), self.primes)

    @functools.cached_property
    def ntt(self) -> Ntt:
        """BFV's (its ciphertexts are in coefficient form), made on first use."""
        return Ntt(self.primes, self.n)

    def seed(self, ct: Any) -> SeededCiphertext:
        """`ct`, a fresh symmetric encryption, as the same message and noise under a fresh seed."""
        full = parse(bytes(ct.to_string(seal.compr_mode_type.none)))
        seed = os.urandom(SEED_BYTES)
        fresh = expand(seed, self.primes, self.n)
        moved = sub_mod(full.polys[1], fresh, self.q)
        if full.ntt_form:
            fix = self.key.times(moved)
        else:
            fix = self.ntt.inverse(self.key.times(self.ntt.forward(moved)))
        polys = np.stack([add_mod(full.polys[0], fix, self.q), fresh])
        out = seal.Ciphertext()
        out.load_bytes(self.context, dump(Layout(full.version, full.members, polys, None)))
        return SeededCiphertext(out, seed)


def secret_residues(secret: Any, primes: int, n: int) -> np.ndarray:
    """The secret key's NTT residues at the data level (SEAL-Python writes no compression)."""
    return key_residues(bytes(secret.to_string()), primes, n)


class Expander:
    """Seed lists into SEAL-Python ciphertexts, with SEAL's own loader (no key needed)."""

    def __init__(self, context: Any, members: bytes) -> None:
        self.context = context
        self.members = members
        self.version = version_of(bytes(seal.Ciphertext().to_string()))  # SEAL-Python's own
        self.evaluator = seal.Evaluator(context)

    def expand(self, total: SeedSum) -> Any:
        """The ciphertext itself: SEAL's loader expands each seed (c0 with the first, zero with
        the others), and the pieces are added."""
        ct = self.load(total.c0, total.seeds[0])
        for seed in total.seeds[1:]:
            self.evaluator.add_inplace(ct, self.load(np.zeros_like(total.c0), seed))
        return ct

    def load(self, c0: np.ndarray, seed: bytes) -> Any:
        ct = seal.Ciphertext()
        ct.load_bytes(self.context, dump(Layout(self.version, self.members, c0[None], seed)))
        return ct
