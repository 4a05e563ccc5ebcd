"""Seeded ciphertexts on TenSEAL (hefl/crypto/tenseal/seeded.py, seeder.py): a client's fresh
vectors go as c0 and a fresh seed in SEAL's seeded layout, half the bytes; a keyless switch loads
them with TenSEAL's own loader or keeps sums as seed lists; the sums decrypt as full ones do. Real
TenSEAL ciphertexts, default parameters; SEAL-Python is not needed."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard

from hefl.crypto import HeParams, add_all, load_keyless, load_secret, make_scheme, read_keyless
from hefl.crypto.frame import frame, unframe
from hefl.crypto.ntt import Ntt
from hefl.crypto.params import coeff_primes
from hefl.crypto.seeding import HEADER, MAGIC, MEMBERS, Layout, dump, parse
from hefl.crypto.tenseal.packing import inflate
from hefl.crypto.tenseal.proto import VARINT, Vector, field, read_vector, write_vector
from hefl.crypto.tenseal.seeder import Seeder, data_primes
from hefl.errors import ProtocolError

SIZES = {"ckks": 5000, "bfv": 40000}  # three ciphertexts each
BOUND = {"ckks": 1e-4, "bfv": 1 / 2**15}  # per contributor (bfv: one quantization step)


def schemes(
    scheme: str, key_dirs: dict[str, Path], size: int, seeded: bool = True, seed: int = 0, **kw: Any
) -> tuple[Any, Any]:
    """(a client's, a switch's) scheme of one TenSEAL experiment."""
    enc = HeParams(scheme=scheme, seeded=seeded, **kw)
    folder = key_dirs[scheme]
    return (
        make_scheme(enc, size, load_secret(enc, folder), seed),
        make_scheme(enc, size, load_keyless(enc, read_keyless(enc, folder))),
    )


def ciphertext(part: bytes, ckks: bool) -> Layout:
    """A part's one SEAL ciphertext, unpacked, taken apart."""
    (saved,) = read_vector(part, ckks).ciphertexts
    return parse(inflate(saved, 1 << 20))


def forms(payload: bytes, count: int, ckks: bool) -> list[tuple[str, list[bytes]]]:
    """Each part of a payload: its form (full, seeded, seed_list) and the seeds it carries."""
    out = []
    for part in unframe(payload, count):
        raw = (
            zstandard.ZstdDecompressor().decompress(part)
            if part[:4] == b"\x28\xb5\x2f\xfd"
            else part
        )
        if raw[:4] == b"HSL1":
            (k,) = struct.unpack_from("<I", raw, 4)
            out.append(("seed_list", [raw[8 + 64 * i : 72 + 64 * i] for i in range(k)]))
            continue
        seed = ciphertext(part, ckks).seed
        out.append(("full", []) if seed is None else ("seeded", [seed]))
    return out


def kinds(payload: bytes, count: int, ckks: bool) -> set[str]:
    return {form for form, _ in forms(payload, count, ckks)}


@pytest.mark.parametrize("scheme", ["ckks", "bfv"])
def test_an_update_goes_seeded_at_half_the_bytes_and_a_keyless_switch_adds_it(
    scheme: str, key_dirs: dict[str, Path]
) -> None:
    size, ckks = SIZES[scheme], scheme == "ckks"
    client, switch = schemes(scheme, key_dirs, size)
    full_client, _ = schemes(scheme, key_dirs, size, seeded=False)
    rng = np.random.default_rng(1)
    values = [rng.uniform(-1, 1, size) for _ in range(3)]
    payloads = [client.encrypt(v) for v in values]
    for payload in payloads:
        assert (
            kinds(payload, client.chunks, ckks) == {"seeded"} and client.form(payload) == "seeded"
        )
        layouts = [ciphertext(p, ckks) for p in unframe(payload, client.chunks)]
        assert all(lay.polys.shape[0] == 1 and lay.version == (4, 3) for lay in layouts)
    full = full_client.encrypt(values[0])
    assert kinds(full, client.chunks, ckks) == {"full"} and switch.form(full) == "full"
    assert len(payloads[0]) < 0.52 * len(full)
    total = add_all(switch, [switch.load(p) for p in payloads])
    assert switch.form(total) == "seed_list"
    got = client.decrypt(client.load(total), 3)
    assert np.max(np.abs(got - np.sum(values, axis=0))) <= 3 * BOUND[scheme]


def test_bfv_sums_are_bit_for_bit_the_same_seeded_and_full(key_dirs: dict[str, Path]) -> None:
    size = SIZES["bfv"]
    rng = np.random.default_rng(2)
    values = [rng.uniform(-1, 1, size) for _ in range(2)]
    sums = []
    for seeded in (True, False):
        made = [schemes("bfv", key_dirs, size, seeded, seed=i) for i in range(2)]
        switch = made[0][1]
        loaded = [switch.load(c.encrypt(v)) for (c, _), v in zip(made, values, strict=True)]
        total = add_all(switch, loaded)
        sums.append(made[0][0].decrypt(made[0][0].load(total), 2))
    np.testing.assert_array_equal(sums[0], sums[1])


@pytest.mark.parametrize("scheme", ["ckks", "bfv"])
def test_precomputed_zeros_are_seeded_when_made_and_each_seed_used_once(
    scheme: str, key_dirs: dict[str, Path]
) -> None:
    size, ckks = SIZES[scheme], scheme == "ckks"
    client, switch = schemes(scheme, key_dirs, size, seed_list_max=0)  # TenSEAL's loader expands
    values = np.random.default_rng(3).uniform(-1, 1, size)
    seen = []
    for _ in range(3):
        assert client.precompute(lambda: False) == client.chunks
        payload = client.encrypt(values)
        assert client.precomputed == client.chunks
        parts = forms(payload, client.chunks, ckks)
        assert {form for form, _ in parts} == {"seeded"}
        seen += [seed for _, seeds in parts for seed in seeds]
        loaded = switch.load(payload)  # in the keyless context: a vector is bound to its own
        got = client.decrypt(client.load(switch.serialize(loaded)), 1)
        assert np.max(np.abs(got - values)) <= BOUND[scheme]
    assert len(set(seen)) == len(seen) == 3 * client.chunks


@pytest.mark.parametrize("scheme", ["ckks", "bfv"])
def test_seed_lists_add_and_take_back_exactly_and_go_full_past_the_limit(
    scheme: str, key_dirs: dict[str, Path]
) -> None:
    size, ckks = SIZES[scheme], scheme == "ckks"
    client, switch = schemes(scheme, key_dirs, size, seed_list_max=3)
    rng = np.random.default_rng(5)
    values = [rng.uniform(-1, 1, size) for _ in range(4)]
    payloads = [client.encrypt(v) for v in values]
    total = switch.load_into(switch.load(payloads[0]), payloads[1])
    assert kinds(switch.serialize(total), client.chunks, ckks) == {"seed_list"}
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
    listed = forms(switch.serialize(total), client.chunks, ckks)
    assert {form for form, _ in listed} == {"seed_list"} and all(len(s) == 3 for _, s in listed)
    # a payload that would take the sum past the limit, refused at its last part: the sum stays
    # the seed lists it was, bytes and all (the full sum was being built beside it)
    at_limit = switch.serialize(total)
    fourth = list(unframe(payloads[3], client.chunks))
    with pytest.raises(ProtocolError, match=f"ciphertext {client.chunks - 1}"):
        switch.load_into(total, frame([*fourth[:-1], b"junk"]))
    assert switch.serialize(total) == at_limit
    # a fourth seed is past the limit: every part goes full, and the sum is right
    total = switch.load_into(total, payloads[3])
    assert kinds(switch.serialize(total), client.chunks, ckks) == {"full"}
    got = client.decrypt(client.load(switch.serialize(total)), 4)
    assert np.max(np.abs(got - np.sum(values, axis=0))) <= 4 * BOUND[scheme]


def test_children_of_both_forms_make_every_part_full(key_dirs: dict[str, Path]) -> None:
    size = SIZES["ckks"]
    client, switch = schemes("ckks", key_dirs, size)
    full_client, _ = schemes("ckks", key_dirs, size, seeded=False)
    values = np.random.default_rng(6).uniform(-1, 1, size)
    total = switch.load_into(switch.load(client.encrypt(values)), full_client.encrypt(values))
    assert kinds(switch.serialize(total), client.chunks, True) == {"full"}
    got = client.decrypt(client.load(switch.serialize(total)), 2)
    assert np.max(np.abs(got - 2 * values)) <= 2 * BOUND["ckks"]


def rewrite(part: bytes, change: Callable[[Vector, Layout], tuple[Vector, bytes]]) -> bytes:
    """A part with its message or its ciphertext's bytes changed (the ciphertext unpacked: SEAL
    loads compression none too)."""
    message = read_vector(part, True)
    vector, saved = change(message, parse(inflate(message.ciphertexts[0], 1 << 20)))
    return write_vector(Vector(vector.sizes, (saved,), vector.scale))


def saved(layout: Layout, **changes: Any) -> bytes:
    return dump(Layout(**{**layout.__dict__, **changes}))


def seal_object(body: bytes, mode: int = 2, minor: int = 3, extra: int = 0) -> bytes:
    return HEADER.pack(MAGIC, 16, 4, minor, mode, 0, 16 + len(body) + extra) + body


def huge(message: Vector, lay: Layout) -> tuple[Vector, bytes]:
    """Members of size 2, n = 2^63, no primes: a word count of 0 that matches them."""
    members = MEMBERS.pack(b"\0" * 32, 1, 2, 2**63, 0, 2.0**30, 1)
    body = members + HEADER.pack(MAGIC, 16, 4, 3, 0, 0, 24) + struct.pack("<Q", 0)
    return message, seal_object(body, mode=0)


def bad_vectors(part: bytes, q: int) -> dict[str, bytes]:
    """A good seeded CKKS part broken in every way a peer could break it."""
    bomb = zstandard.ZstdCompressor().compress(bytes(50_000_000))
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(1000))

    def residue(message: Vector, lay: Layout) -> tuple[Vector, bytes]:
        c0 = lay.polys.copy()
        c0[0, 0, 0] = q
        return message, saved(lay, polys=c0)

    def members(at: int, value: int) -> Callable[[Vector, Layout], tuple[Vector, bytes]]:
        def change(message: Vector, lay: Layout) -> tuple[Vector, bytes]:
            raw = bytearray(lay.members)
            raw[at] = value
            return message, saved(lay, members=bytes(raw))

        return change

    def swap(**kw: Any) -> Callable[[Vector, Layout], tuple[Vector, bytes]]:
        return lambda message, lay: (
            Vector(**{**message.__dict__, **kw}),
            kw.get("saved", saved(lay)),
        )

    good_saved = read_vector(part, True).ciphertexts[0]
    raw = inflate(good_saved, 1 << 20)
    return {
        "cut short": part[:-5],
        "a varint that never ends": b"\x0a" + b"\xff" * 11,
        "a group (wire type 3)": b"\x0b" + part,
        "a field no vector has": part + field(9, VARINT, 1),
        "no ciphertext": write_vector(Vector((2048,), (), 2.0**30)),
        "two ciphertexts": write_vector(Vector((2048,), (good_saved, good_saved), 2.0**30)),
        "other slot count": rewrite(part, swap(sizes=(2047,))),
        "other scale": rewrite(part, swap(scale=2.0**31)),
        "no scale": rewrite(part, swap(scale=None)),
        "header lies about its size": rewrite(part, lambda m, lay: (m, raw[:-1])),
        "zlib": rewrite(part, lambda m, lay: (m, seal_object(raw[16:], mode=1))),
        "zstd bomb": rewrite(part, lambda m, lay: (m, seal_object(bomb))),
        "zstd of unknown size": rewrite(part, lambda m, lay: (m, seal_object(unsized))),
        "zstd that is not": rewrite(part, lambda m, lay: (m, seal_object(b"\x28\xb5\x2f\xfd!!"))),
        "SEAL 4.4": rewrite(part, lambda m, lay: (m, saved(lay, version=(4, 4)))),
        "residue at its prime": rewrite(part, residue),
        "NTT form flipped": rewrite(part, members(32, 0)),
        "another parms_id": rewrite(part, members(0, 1)),
        "size 3": rewrite(part, members(33, 3)),
        "seed cut short": rewrite(part, lambda m, lay: (m, saved(lay)[:-1])),
        "blake2 seed (PRNG type 1)": rewrite(
            part, lambda m, lay: (m, saved(lay)[:-65] + b"\x01" + saved(lay)[-64:])
        ),
        # from the review: SEAL objects shorter than a ciphertext's header, or whose members ask
        # for an array no machine has (these raised struct.error and numpy's ValueError: a 500)
        "a header and nothing": rewrite(part, lambda m, lay: (m, seal_object(b"", mode=0))),
        "shorter than the members": rewrite(part, lambda m, lay: (m, seal_object(bytes(24), 0))),
        "n 2^63 and no primes": rewrite(part, huge),
        "a part larger than any ciphertext": part + bytes(1 << 21),
    }


def bad_lists(good: bytes) -> dict[str, bytes]:
    """A good seed-list part (unpacked) broken in every way a peer could break it."""
    too_big = bytearray(good)
    too_big[-8:] = (2**63).to_bytes(8, "little")  # above every prime
    return {
        "count zero": good[:4] + struct.pack("<I", 0) + good[8:],
        "count past the limit": good[:4] + struct.pack("<I", 17) + good[8:],
        "count and length disagree": good[:4] + struct.pack("<I", 3) + good[8:],
        "cut short": good[:-8],
        "residue above its prime": bytes(too_big),
        "zstd bomb": zstandard.ZstdCompressor().compress(good + bytes(50_000_000)),
        "zstd junk": b"\x28\xb5\x2f\xfd" + bytes(20),
        "zstd of something else": zstandard.ZstdCompressor().compress(b"HSL2" + good[4:]),
    }


def test_a_malformed_vector_or_seed_list_is_refused_in_one_line(
    key_dirs: dict[str, Path],
) -> None:
    size = SIZES["ckks"]
    client, switch = schemes("ckks", key_dirs, size)
    parts = list(unframe(client.encrypt(np.zeros(size)), client.chunks))
    q = data_primes(HeParams(scheme="ckks"))[0]
    total = switch.load_into(
        switch.load(client.encrypt(np.ones(size))), client.encrypt(np.ones(size))
    )
    good_list = zstandard.ZstdDecompressor().decompress(switch.dump_part(total[1]))
    assert good_list[:4] == b"HSL1"
    cases = {
        **bad_vectors(parts[1], q),
        **{f"list: {k}": v for k, v in bad_lists(good_list).items()},
    }
    for what, bad in cases.items():
        with pytest.raises(ProtocolError, match="ciphertext 1") as caught:
            switch.load(frame([parts[0], bad, parts[2]]))
        assert "\n" not in str(caught.value), what
    assert switch.load(frame(parts))  # the good ones still load


def test_the_keyless_context_loads_and_adds_but_cannot_decrypt(key_dirs: dict[str, Path]) -> None:
    size = SIZES["ckks"]
    client, switch = schemes("ckks", key_dirs, size)
    assert switch.seeder is None and not switch.ctx.is_private() and client.seeder is not None
    values = np.random.default_rng(7).uniform(-1, 1, size)
    total = add_all(switch, [switch.load(client.encrypt(values)) for _ in range(2)])
    loaded = switch.load(total)
    expanded = switch.full(loaded[0])  # TenSEAL's loader, in the keyless context
    with pytest.raises(ValueError, match="secret"):
        expanded.decrypt()
    with pytest.raises(ValueError, match="secret"):
        switch.decrypt(loaded, 2)
    with pytest.raises(ValueError, match="Secret key"):
        Seeder(switch.ctx, HeParams(scheme="ckks"), lambda ctx, raw: None)
    got = client.decrypt(client.load(total), 2)
    assert np.max(np.abs(got - 2 * values)) <= 2 * BOUND["ckks"]


def test_an_older_key_folder_with_a_public_key_sends_full_ciphertexts(tmp_path: Path) -> None:
    """A public key's encryption is not what SEAL's seeded symmetric one makes (its noise depends
    on the secret key): a client of an older key folder sends full ciphertexts, and they add."""
    from hefl.crypto.keydir import KEYLESS, SECRET, write_params
    from hefl.crypto.tenseal.keys import keyless_part, new_context, public_key_id

    enc = HeParams(scheme="ckks")
    ctx = new_context(enc, symmetric=False)
    (tmp_path / SECRET).write_bytes(ctx.serialize(save_secret_key=True))
    (tmp_path / KEYLESS).write_bytes(keyless_part(ctx))
    write_params(enc, tmp_path, str(public_key_id(ctx)))
    client, switch = schemes("ckks", {"ckks": tmp_path}, 3000)
    assert client.seeder is None
    values = np.random.default_rng(8).uniform(-1, 1, 3000)
    payloads = [client.encrypt(values) for _ in range(2)]
    assert kinds(payloads[0], client.chunks, True) == {"full"}
    total = add_all(switch, [switch.load(p) for p in payloads])
    assert kinds(total, client.chunks, True) == {"full"}
    got = client.decrypt(client.load(total), 2)
    assert np.max(np.abs(got - 2 * values)) <= 2 * BOUND["ckks"]


@pytest.mark.parametrize("scheme", ["ckks", "bfv"])
def test_the_secret_residues_decrypt_a_fresh_encryption_of_zero(
    scheme: str, key_dirs: dict[str, Path]
) -> None:
    """The decryption identity, with no library: c0 + c1*s of an encryption of zero is its small
    noise, with the residues read from TenSEAL's serialized context (a wrong key gives uniform
    residues)."""
    client, _ = schemes(scheme, key_dirs, 100, seeded=True)
    seeder = client.seeder
    n = 4096
    zero = client.make(client.ctx, [client.zero] * 100)
    _, full = seeder.open(zero)
    c0, c1 = full.polys[0], full.polys[1]
    (q,) = seeder.primes
    ntt = Ntt([q], n)
    product = seeder.key.times(c1) if scheme == "ckks" else seeder.times_key(c1)
    noise = (c0.astype(object) + product.astype(object)) % q
    if scheme == "ckks":  # NTT form: back to coefficients
        noise = ntt.inverse(noise.astype(np.uint64)).astype(object)
    centered = [int(x) if x < q // 2 else int(x) - q for x in noise.ravel()]
    assert max(abs(x) for x in centered) < 100  # SEAL's noise: |e| <= 19 x 3.2 (clipped normal)
    assert coeff_primes(n, (40, 20) if scheme == "ckks" else (60, 20))[0] == q


@pytest.mark.parametrize("scheme", ["ckks", "bfv"])
def test_worker_processes_send_seeded_payloads_that_decrypt(
    scheme: str, key_dirs: dict[str, Path]
) -> None:
    size, ckks = 4 * (2048 if scheme == "ckks" else 8192), scheme == "ckks"
    client, switch = schemes(scheme, key_dirs, size, processes=2, seed=3)
    try:
        values = np.random.default_rng(4).uniform(-1, 1, size)
        payloads = [client.encrypt(values) for _ in range(2)]
        seeds = [s for p in payloads for _, ss in forms(p, client.chunks, ckks) for s in ss]
        assert kinds(payloads[0], client.chunks, ckks) == {"seeded"}
        assert len(set(seeds)) == len(seeds) == 2 * client.chunks
        total = add_all(switch, [switch.load(p) for p in payloads])
        got = client.decrypt(client.load(total), 2)
        assert np.max(np.abs(got - 2 * values)) <= 2 * BOUND[scheme]
    finally:
        client.close()
