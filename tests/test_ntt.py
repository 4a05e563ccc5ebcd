"""hefl/crypto/ntt.py, SEAL's negacyclic NTT in numpy: exactly the inverse of itself at every prime
size a config allows, a negacyclic product equal to the schoolbook one with Python integers, and
equal to SEAL's own transform (SEAL-Python's evaluator, where installed)."""

from __future__ import annotations

import importlib.util
import random

import numpy as np
import pytest

from hefl.crypto.ntt import Ntt, minimal_root
from hefl.crypto.params import coeff_primes
from hefl.crypto.seeding import FixedFactor


def schoolbook(a: list[int], b: list[int], q: int) -> list[int]:
    """a * b mod (x^n + 1, q) with Python integers."""
    n = len(a)
    out = [0] * n
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            k, sign = (i + j, 1) if i + j < n else (i + j - n, -1)
            out[k] = (out[k] + sign * x * y) % q
    return out


@pytest.mark.parametrize("bits", range(17, 61))
def test_the_inverse_undoes_the_forward_at_every_prime_size(bits: int) -> None:
    n = 1024
    primes = list(coeff_primes(n, (bits, bits)))
    rng = np.random.default_rng(bits)
    x = np.array([rng.integers(0, q, n, dtype=np.uint64) for q in primes])
    x[:, :3] = np.array(primes, dtype=np.uint64)[:, None] - np.array([1, 2, 3], dtype=np.uint64)
    ntt = Ntt(primes, n)
    forward = ntt.forward(x)
    assert (forward < np.array(primes, dtype=np.uint64)[:, None]).all()
    np.testing.assert_array_equal(ntt.inverse(forward), x)


@pytest.mark.parametrize("bits", [17, 30, 40, 50, 60])
def test_a_product_through_the_ntt_is_the_negacyclic_product(bits: int) -> None:
    n = 32
    (q,) = coeff_primes(n, (bits,))
    rng = random.Random(bits)
    a = [rng.randrange(q) for _ in range(n)]
    s = [rng.choice([0, 1, q - 1]) for _ in range(n)]  # a secret key's ternary coefficients
    ntt = Ntt([q], n)
    key = FixedFactor(ntt.forward(np.array([s], dtype=np.uint64)), [q])
    got = ntt.inverse(key.times(ntt.forward(np.array([a], dtype=np.uint64))))
    assert got[0].tolist() == schoolbook(a, s, q)


def test_the_root_is_the_least_primitive_one() -> None:
    (q,) = coeff_primes(64, (20,))
    root = minimal_root(128, q)
    primitive = [r for r in range(1, q) if pow(r, 64, q) == q - 1]
    assert root == min(primitive)


@pytest.mark.skipif(importlib.util.find_spec("seal") is None, reason="seal not installed")
@pytest.mark.parametrize(("n", "bits"), [(4096, (60, 20)), (4096, (40, 40, 20)), (8192, (50,) * 4)])
def test_the_forward_transform_is_seals(n: int, bits: tuple[int, ...]) -> None:
    import seal

    from hefl.crypto.seeding import Layout, dump, fresh_members, parse, version_of

    parms = seal.EncryptionParameters(seal.scheme_type.bfv)
    parms.set_poly_modulus_degree(n)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(n, list(bits)))
    parms.set_plain_modulus(786433)
    ctx = seal.SEALContext(parms, True, seal.sec_level_type.tc128)
    primes = [m.value() for m in ctx.first_context_data().parms().coeff_modulus()]
    rng = np.random.default_rng(n)
    x = np.array([rng.integers(0, q, n, dtype=np.uint64) for q in primes])
    # SEAL's transform of x, carried by a ciphertext whose two polynomials are x
    version = version_of(bytes(seal.Ciphertext().to_string()))
    members = fresh_members(ctx.first_parms_id(), False, n, len(primes), 1.0)
    carrier = seal.Ciphertext()
    carrier.load_bytes(ctx, dump(Layout(version, members, np.stack([x, x]), None)))
    seal.Evaluator(ctx).transform_to_ntt_inplace(carrier)
    theirs = parse(bytes(carrier.to_string())).polys[0]
    np.testing.assert_array_equal(Ntt(primes, n).forward(x), theirs)
