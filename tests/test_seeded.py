"""Seeded ciphertexts (hefl.crypto.seal.seeded) against SEAL itself and against Python integers:
the seed's expansion is the c1 SEAL's own loader makes of it, the products mod q are exact at every
prime size a config allows, and a seeded ciphertext decrypts, adds and loads with no key as the
full one does. Skipped, saying what to install, without SEAL-Python (CI installs it)."""

from __future__ import annotations

import importlib.util
import random
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hefl.crypto import (
    HeParams,
    add_all,
    generate_keys,
    load_keyless,
    load_secret,
    make_scheme,
    read_keyless,
    seeding,
)
from hefl.crypto.frame import frame, unframe
from hefl.crypto.params import coeff_primes
from hefl.errors import ProtocolError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("seal") is None,
    reason="seal not installed: pip install -r requirements-he.txt",
)
if importlib.util.find_spec("seal") is not None:
    import seal
    import zstandard

    from hefl.crypto.seal import seeded
    from hefl.crypto.zstd import ZSTD_MAGIC as ZSTD


N = 4096


def context(kind: str, primes: list[int], plain: int = 0) -> tuple[Any, Any]:
    """A SEAL context of these primes and its secret key."""
    parms = seal.EncryptionParameters(getattr(seal.scheme_type, kind))
    parms.set_poly_modulus_degree(N)
    parms.set_coeff_modulus([seal.Modulus(q) for q in primes])
    if plain:
        parms.set_plain_modulus(plain)
    ctx = seal.SEALContext(parms, True, seal.sec_level_type.tc128)
    assert ctx.parameters_set(), ctx.parameter_error_message()
    return ctx, seal.KeyGenerator(ctx).secret_key()


def loaded(ctx: Any, raw: bytes) -> Any:
    ct = seal.Ciphertext()
    ct.load_bytes(ctx, raw)
    return ct


def c1(ct: Any) -> np.ndarray:
    return seeding.parse(bytes(ct.to_string(seal.compr_mode_type.none))).polys[1]


@pytest.mark.parametrize("bits", range(17, 61))
def test_products_mod_q_equal_python_integers_at_every_prime_size(bits: int) -> None:
    primes = list(coeff_primes(N, (bits, bits)))
    rng = random.Random(bits)
    edge = [0, 1, 2]
    y = [[*edge, q - 1, q - 2, *(rng.randrange(q) for _ in range(500))] for q in primes]
    x = [[q - 1, *edge, q - 2, *(rng.randrange(q) for _ in range(500))] for q in primes]
    got = seeding.FixedFactor(np.array(y, dtype=np.uint64), primes).times(
        np.array(x, dtype=np.uint64)
    )
    pairs = [(xs, ys, q) for xs, ys, q in zip(x, y, primes, strict=True)]
    assert got.tolist() == [[i * j % q for i, j in zip(xs, ys, strict=True)] for xs, ys, q in pairs]
    sums = [[(i + j) % q for i, j in zip(xs, ys, strict=True)] for xs, ys, q in pairs]
    differences = [[(i - j) % q for i, j in zip(xs, ys, strict=True)] for xs, ys, q in pairs]
    xa, ya = np.array(x, dtype=np.uint64), np.array(y, dtype=np.uint64)
    qa = np.array(primes, dtype=np.uint64)[:, None]
    assert seeding.add_mod(xa, ya, qa).tolist() == sums
    assert seeding.sub_mod(xa, ya, qa).tolist() == differences


def is_prime(n: int) -> bool:
    return n > 1 and all(pow(a, n - 1, n) == 1 for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31))


def rejecting_prime() -> int:
    """A 60-bit NTT prime just above 2^64 / 17: 2^64 is then 16 q and almost another q, the
    words SEAL draws again (at or above the largest multiple of q below 2^64): about 5.9 %."""
    k = (2**64 // 17) // (2 * N) + 1
    while not is_prime(k * 2 * N + 1):
        k += 1
    return k * 2 * N + 1


@pytest.mark.parametrize("kind", ["ckks", "bfv"])
def test_the_expansion_is_seals_own_even_where_the_rejection_rule_fires_often(kind: str) -> None:
    q = rejecting_prime()
    top = 2**64 - 1
    assert (top % q + 2) / 2**64 > 0.05  # the share of words SEAL draws again
    primes = [q, *coeff_primes(N, (30,))]
    ctx, sk = context(kind, primes, plain=786433 if kind == "bfv" else 0)
    seeder = seeded.Seeder(ctx, sk)
    encryptor = seal.Encryptor(ctx, sk)
    decryptor = seal.Decryptor(ctx, sk)
    if kind == "ckks":
        encoder = seal.CKKSEncoder(ctx)
        values = np.linspace(-1, 1, N // 2)
        plain = encoder.encode(values, 2.0**40)
    else:
        encoder = seal.BatchEncoder(ctx)
        values = np.arange(N, dtype=np.int64) * 191 % 393216  # signed: below t/2
        plain = encoder.encode(values)
    for _ in range(3):
        made = seeder.seed(encryptor.encrypt_symmetric(plain))
        raw = made.dump()
        layout = seeding.parse(raw)
        assert layout.seed == made.seed and layout.polys.shape == (1, 1, N)
        ours = seeding.expand(made.seed, [q], N)
        assert len(seeding.Stream(made.seed).read(8 * N)) == 8 * N
        words = np.frombuffer(seeding.Stream(made.seed).read(8 * N), dtype=np.uint64)
        assert (words >= np.uint64(top - top % q - 1)).sum() > 100  # the rule fired
        theirs = loaded(ctx, raw)  # SEAL expands the seed itself
        np.testing.assert_array_equal(c1(theirs), ours)
        np.testing.assert_array_equal(c1(made.ct), ours)
        got = encoder.decode(decryptor.decrypt(theirs))
        if kind == "ckks":
            assert np.max(np.abs(np.asarray(got) - values)) < 1e-6
        else:
            np.testing.assert_array_equal(np.asarray(got), values)


# ------------------------------------------------------------------- in the scheme and a run


@pytest.fixture(scope="module")
def seal_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A SEAL-Python key folder per scheme (default parameters)."""
    folders = {}
    for scheme in ("ckks", "bfv"):
        folders[scheme] = tmp_path_factory.mktemp(f"seal-{scheme}")
        generate_keys(HeParams(scheme=scheme, backend="seal"), folders[scheme])
    return folders


def schemes(
    scheme: str, folder: Path, size: int, seeded_: bool = True, seed: int = 0
) -> tuple[Any, Any]:
    """(a client's, a switch's) scheme of one experiment on SEAL-Python."""
    enc = HeParams(scheme=scheme, backend="seal", seeded=seeded_)
    return (
        make_scheme(enc, size, load_secret(enc, folder), seed),
        make_scheme(enc, size, load_keyless(enc, read_keyless(enc, folder))),
    )


def layouts(payload: bytes, count: int) -> list[Any]:
    """Each ciphertext of a payload, unzipped as a receiver does, taken apart."""
    out = []
    for part in unframe(payload, count):
        raw = zstandard.ZstdDecompressor().decompress(part) if part[:4] == ZSTD else part
        out.append(seeding.parse(raw))
    return out


SIZES = {"ckks": 5000, "bfv": 20000}  # three ciphertexts each


@pytest.mark.parametrize("scheme", ["ckks", "bfv"])
def test_an_update_goes_seeded_at_half_the_bytes_and_a_keyless_switch_adds_it(
    scheme: str, seal_keys: dict[str, Path]
) -> None:
    size = SIZES[scheme]
    client, switch = schemes(scheme, seal_keys[scheme], size)
    full_client, _ = schemes(scheme, seal_keys[scheme], size, seeded_=False)
    rng = np.random.default_rng(1)
    values = [rng.uniform(-1, 1, size) for _ in range(3)]
    payloads = [client.encrypt(v) for v in values]
    for payload in payloads:
        parts = layouts(payload, client.chunks)
        assert all(p.seed is not None and p.polys.shape[0] == 1 for p in parts)
    full = full_client.encrypt(values[0])
    assert all(p.seed is None and p.polys.shape[0] == 2 for p in layouts(full, client.chunks))
    assert len(payloads[0]) < 0.52 * len(full)
    total = add_all(switch, [switch.load(p) for p in payloads])
    got = client.decrypt(client.load(total), 3)
    want = np.sum(values, axis=0)
    assert np.max(np.abs(got - want)) <= (1e-4 if scheme == "ckks" else 3 / 2**15)


def test_bfv_sums_are_bit_for_bit_the_same_seeded_and_full(seal_keys: dict[str, Path]) -> None:
    size = SIZES["bfv"]
    rng = np.random.default_rng(2)
    values = [rng.uniform(-1, 1, size) for _ in range(2)]
    sums = []
    for seeded_ in (True, False):
        clients = [schemes("bfv", seal_keys["bfv"], size, seeded_, seed=i)[0] for i in range(2)]
        switch = schemes("bfv", seal_keys["bfv"], size)[1]
        loaded = [switch.load(c.encrypt(v)) for c, v in zip(clients, values, strict=True)]
        total = add_all(switch, loaded)
        sums.append(clients[0].decrypt(clients[0].load(total), 2))
    np.testing.assert_array_equal(sums[0], sums[1])


@pytest.mark.parametrize("scheme", ["ckks", "bfv"])
def test_precomputed_zeros_are_seeded_when_made_and_each_seed_used_once(
    scheme: str, seal_keys: dict[str, Path]
) -> None:
    size = SIZES[scheme]
    client, switch = schemes(scheme, seal_keys[scheme], size)
    values = np.random.default_rng(3).uniform(-1, 1, size)
    seen = []
    for _ in range(3):
        assert client.precompute(lambda: False) == client.chunks
        payload = client.encrypt(values)
        assert client.precomputed == client.chunks
        seen += [p.seed for p in layouts(payload, client.chunks)]
        got = client.decrypt(switch.load(payload), 1)  # a keyless load expands the seeds
        assert np.max(np.abs(got - values)) <= (1e-5 if scheme == "ckks" else 1 / 2**15)
    assert len(set(seen)) == len(seen) == 3 * client.chunks


def read_without_a_key(ctx: Any, first: Any, second: Any) -> np.ndarray:
    """The attacker's routine, for CKKS: two ciphertexts under one key and one seed share c1,
    so c0 - c0' = (m - m') + (e' - e), a plaintext already: decoded with no key at all."""
    primes = [m.value() for m in ctx.first_context_data().parms().coeff_modulus()]
    q = np.array(primes, dtype=np.uint64)[:, None]
    words = seeding.sub_mod(first.polys[0], second.polys[0], q).tobytes()
    parms_id, scale = first.members[:32], struct.unpack_from("<d", first.members, 57)[0]
    array = seeding.HEADER.pack(seeding.MAGIC, 16, *first.version, 0, 0, 24 + len(words))
    body = parms_id + struct.pack("<Qd", len(words) // 8, scale) + array
    body += struct.pack("<Q", len(words) // 8) + words
    raw = seeding.HEADER.pack(seeding.MAGIC, 16, *first.version, 0, 0, 16 + len(body)) + body
    plain = seal.Plaintext()
    plain.load_bytes(ctx, raw)
    return np.asarray(seal.CKKSEncoder(ctx).decode(plain))


def test_an_eavesdropper_reads_the_difference_of_two_updates_only_where_a_seed_repeats(
    seal_keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why a seed is drawn afresh for every ciphertext: were one reused, a tap on a link would
    read m - m' from the two c0s with no key; with fresh seeds what it reads is noise."""
    client, switch = schemes("ckks", seal_keys["ckks"], 2048)
    rng = np.random.default_rng(4)
    a, b = rng.uniform(-1, 1, 2048), rng.uniform(-1, 1, 2048)
    fresh = [layouts(client.encrypt(v), 1)[0] for v in (a, b)]
    assert fresh[0].seed != fresh[1].seed
    assert np.max(np.abs(read_without_a_key(switch.ctx, *fresh) - (a - b))) > 1e3
    monkeypatch.setattr(seeded.os, "urandom", lambda n: b"\x07" * n)  # a broken generator
    reused = [layouts(client.encrypt(v), 1)[0] for v in (a, b)]
    assert reused[0].seed == reused[1].seed
    assert np.max(np.abs(read_without_a_key(switch.ctx, *reused) - (a - b))) < 1e-4


def forms(payload: bytes, count: int) -> list[tuple[str, list[bytes]]]:
    """Each part of a payload: its form (full, seeded, seed_list) and the seeds it carries."""
    out = []
    for part in unframe(payload, count):
        raw = zstandard.ZstdDecompressor().decompress(part) if part[:4] == ZSTD else part
        if raw[:4] == b"HSL1":
            (k,) = struct.unpack_from("<I", raw, 4)
            out.append(("seed_list", [raw[8 + 64 * i : 72 + 64 * i] for i in range(k)]))
            continue
        seed = seeding.parse(raw).seed
        out.append(("full", []) if seed is None else ("seeded", [seed]))
    return out


@pytest.mark.parametrize("scheme", ["ckks", "bfv"])
def test_seed_lists_add_and_take_back_exactly_and_go_full_past_the_limit(
    scheme: str, seal_keys: dict[str, Path]
) -> None:
    size = SIZES[scheme]
    client, switch = schemes(scheme, seal_keys[scheme], size)
    switch.lists.most = 3  # type: ignore[attr-defined]  # seed_list_max 3
    rng = np.random.default_rng(5)
    values = [rng.uniform(-1, 1, size) for _ in range(4)]
    payloads = [client.encrypt(v) for v in values]
    total = switch.load_into(switch.load(payloads[0]), payloads[1])
    assert {form for form, _ in forms(switch.serialize(total), client.chunks)} == {"seed_list"}
    # a payload refused at its last part: the parts before it are taken back, seeds included
    parts = list(unframe(payloads[2], client.chunks))
    before = switch.serialize(total)
    with pytest.raises(ProtocolError, match=f"ciphertext {client.chunks - 1}"):
        switch.load_into(total, frame([*parts[:-1], b"junk"]))
    assert switch.serialize(total) == before
    # the same update twice (a sibling's, replayed) repeats its seeds: refused, total unchanged
    with pytest.raises(ProtocolError, match="repeats a seed"):
        switch.load_into(total, payloads[1])
    assert switch.serialize(total) == before
    total = switch.load_into(total, payloads[2])
    assert {form for form, _ in forms(switch.serialize(total), client.chunks)} == {"seed_list"}
    # a payload that would take the sum past the limit, refused at its last part: the sum stays
    # the seed lists it was, bytes and all (the full sum was being built beside it)
    at_limit = switch.serialize(total)
    fourth = list(unframe(payloads[3], client.chunks))
    with pytest.raises(ProtocolError, match=f"ciphertext {client.chunks - 1}"):
        switch.load_into(total, frame([*fourth[:-1], b"junk"]))
    assert switch.serialize(total) == at_limit
    # a fourth seed is past the limit: every part goes full, and the sum is right
    total = switch.load_into(total, payloads[3])
    assert {form for form, _ in forms(switch.serialize(total), client.chunks)} == {"full"}
    got = client.decrypt(client.load(switch.serialize(total)), 4)
    assert np.max(np.abs(got - np.sum(values, axis=0))) <= (1e-4 if scheme == "ckks" else 4 / 2**15)


def seal_object(members: bytes) -> bytes:
    """An uncompressed SEAL 4.4 ciphertext of these members and no words."""
    array = seeding.HEADER.pack(seeding.MAGIC, 16, 4, 4, 0, 0, 24) + struct.pack("<Q", 0)
    body = members + array
    return seeding.HEADER.pack(seeding.MAGIC, 16, 4, 4, 0, 0, 16 + len(body)) + body


def test_a_seed_list_that_lies_is_refused_in_one_line(seal_keys: dict[str, Path]) -> None:
    size = SIZES["ckks"]
    client, switch = schemes("ckks", seal_keys["ckks"], size)
    first = switch.load(client.encrypt(np.zeros(size)))
    total = switch.load_into(first, client.encrypt(np.ones(size)))
    good = zstandard.ZstdDecompressor().decompress(switch.dump_part(total[0]))
    assert good[:4] == b"HSL1"
    primes = switch.lists.q.ravel()  # type: ignore[attr-defined]
    too_big = bytearray(good)
    too_big[-8:] = int(primes[-1]).to_bytes(8, "little")  # a residue equal to its prime
    bad = {
        "count zero": good[:4] + struct.pack("<I", 0) + good[8:],
        "count past the limit": good[:4] + struct.pack("<I", 17) + good[8:],
        "count and length disagree": good[:4] + struct.pack("<I", 3) + good[8:],
        "cut short": good[:-8],
        "one seed twice": good[:72] + good[8:72] + good[136:],
        # from the review: SEAL's magic and too little after it, a header and nothing more, and
        # members that ask for an array no machine has (a 500 with a traceback before)
        "SEAL's magic and ten bytes": b"\x5e\xa1" + bytes(10),
        "a header and nothing": seeding.HEADER.pack(seeding.MAGIC, 16, 4, 4, 0, 0, 16),
        "n 2^63 and no primes": seal_object(
            seeding.MEMBERS.pack(bytes(32), 1, 2, 2**63, 0, 1.0, 1)
        ),
        "a part larger than any ciphertext": good + bytes(1 << 21),
        "residue at its prime": bytes(too_big),
    }
    rest = list(unframe(switch.serialize(total), client.chunks))[1:]
    for what, part in bad.items():
        with pytest.raises(ProtocolError, match="ciphertext 0") as caught:
            switch.load(frame([part, *rest]))
        assert "\n" not in str(caught.value), what
