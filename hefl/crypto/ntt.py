"""SEAL's negacyclic NTT in numpy, exact mod each prime: what a seeding client needs to multiply a
BFV polynomial (stored in coefficient form) by its secret key (stored in NTT form) without
SEAL-Python, which TenSEAL's backend does not require.

The forward transform is SEAL's own, stage for stage (util/ntt.cpp and dwthandler.h): Cooley-Tukey
butterflies over the powers of the minimal primitive 2n-th root of unity psi, stored in bit-reversed
order, the output in bit-reversed order; each residue is reduced fully at every stage where SEAL
reduces lazily, which gives the same residues. The inverse is the exact inverse of the forward
(Gentleman-Sande butterflies with the inverse roots, then a factor n^-1): an inverse is unique, so
it is SEAL's too. The products are Shoup's, as in hefl/crypto/seeding.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hefl.crypto.seeding import WORDS, mul_high, reduce_once


def minimal_root(degree: int, q: int) -> int:
    """The smallest primitive `degree`-th root of unity mod the prime q (SEAL's
    try_minimal_primitive_root): the least of the odd powers of any one of them."""
    if (q - 1) % degree:
        raise ValueError(f"{q} is not 1 mod {degree}: no NTT of this size")
    for x in range(2, q):
        root = pow(x, (q - 1) // degree, q)
        if pow(root, degree // 2, q) == q - 1:  # its order is exactly `degree`
            break
    square, power, least = root * root % q, root, root
    for _ in range(degree // 2):
        least = min(least, power)
        power = power * square % q
    return least


def bit_reversed(count: int) -> np.ndarray:
    bits = count.bit_length() - 1
    return np.array([int(f"{i:0{bits}b}"[::-1], 2) if bits else 0 for i in range(count)])


def shoup(w: np.ndarray, q: np.ndarray) -> np.ndarray:
    """w' = floor(w * 2^64 / q), per element (Python integers: made once per table)."""
    moduli = np.broadcast_to(q, w.shape).ravel()
    flat = [(int(v) << 64) // int(p) for v, p in zip(w.ravel(), moduli, strict=True)]
    return np.array(flat, dtype=WORDS).reshape(w.shape)


def times(x: np.ndarray, w: np.ndarray, w_shoup: np.ndarray, q: np.ndarray) -> np.ndarray:
    """x * w mod q for x below q, exactly (Shoup)."""
    with np.errstate(over="ignore"):
        rest = x * w - mul_high(x, w_shoup) * q  # exact mod 2^64, and below 2q
    return reduce_once(rest, q)


class Ntt:
    """SEAL's NTT for polynomials of `n` coefficients mod each of `primes`: arrays (primes, n)."""

    def __init__(self, primes: Sequence[int], n: int) -> None:
        self.n = n
        self.q = np.array(primes, dtype=WORDS)[:, None]
        order = bit_reversed(n)
        roots, inverse_roots, n_inverse = [], [], []
        for q in primes:
            psi = minimal_root(2 * n, q)
            powers = [pow(psi, i, q) for i in range(n)]
            roots.append([powers[i] for i in order])  # root_powers[reverse(i)] = psi^i
            inverse_roots.append([pow(p, q - 2, q) for p in roots[-1]])
            n_inverse.append(pow(n, q - 2, q))
        self.roots = np.array(roots, dtype=WORDS)
        self.roots_shoup = shoup(self.roots, self.q)
        self.inverse_roots = np.array(inverse_roots, dtype=WORDS)
        self.inverse_shoup = shoup(self.inverse_roots, self.q)
        self.n_inverse = np.array(n_inverse, dtype=WORDS)[:, None]
        self.n_inverse_shoup = shoup(self.n_inverse, self.q)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Coefficients (each below its prime) to SEAL's NTT form."""
        values = np.array(x, dtype=WORDS).reshape(len(self.q), self.n)
        q3 = self.q[:, :, None]
        m = 1
        while m < self.n:
            gap = self.n // (2 * m)
            pairs = values.reshape(len(self.q), m, 2, gap)
            w, w_shoup = self.roots[:, m : 2 * m, None], self.roots_shoup[:, m : 2 * m, None]
            u, v = pairs[:, :, 0, :], times(pairs[:, :, 1, :], w, w_shoup, q3)
            values = np.stack([reduce_once(u + v, q3), reduce_once(u + (q3 - v), q3)], axis=2)
            m *= 2
        return values.reshape(len(self.q), self.n)

    def inverse(self, x: np.ndarray) -> np.ndarray:
        """SEAL's NTT form back to coefficients: the forward's stages undone, last first."""
        values = np.array(x, dtype=WORDS).reshape(len(self.q), self.n)
        q3 = self.q[:, :, None]
        m = self.n // 2
        while m >= 1:
            gap = self.n // (2 * m)
            pairs = values.reshape(len(self.q), m, 2, gap)
            w = self.inverse_roots[:, m : 2 * m, None]
            w_shoup = self.inverse_shoup[:, m : 2 * m, None]
            top, bottom = pairs[:, :, 0, :], pairs[:, :, 1, :]
            twice_u = reduce_once(top + bottom, q3)
            twice_y = times(reduce_once(top + (q3 - bottom), q3), w, w_shoup, q3)
            values = np.stack([twice_u, twice_y], axis=2)
            m //= 2
        flat = values.reshape(len(self.q), self.n)
        return times(flat, self.n_inverse, self.n_inverse_shoup, self.q)
