"""The three schemes behind one interface: sums through trees, precision, refusals, keys by role."""

from __future__ import annotations

import base64
import json
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tenseal as ts

from hefl.config import EncryptionConfig, parse_config
from hefl.crypto import (
    HeParams,
    Scheme,
    add_all,
    generate_keys,
    load_keyless,
    load_secret,
    make_scheme,
    read_keyless,
)
from hefl.crypto.keydir import KEYLESS, SECRET
from hefl.crypto.params import batching_prime, coeff_primes
from hefl.errors import ConfigError, ProtocolError
from hefl.node.push import make_push
from tests.helpers import ROOT, tree_config

SCHEMES = ["none", "ckks", "bfv"]


def schemes(
    name: str, size: int, key_dirs: dict[str, Path], seed: int = 0
) -> tuple[Scheme, Scheme]:
    """(a client's scheme, a switch's scheme) of one experiment."""
    enc, key_dir = HeParams(scheme=name), key_dirs.get(name, Path())
    if name == "none":
        return make_scheme(enc, size), make_scheme(enc, size)
    return (
        make_scheme(enc, size, load_secret(enc, key_dir), seed),
        make_scheme(enc, size, load_keyless(enc, read_keyless(enc, key_dir))),
    )


TOLERANCE = {
    "none": 1e-5,
    "ckks": 1e-4,
    "bfv": 8 * 2 / (2**16 - 1),
}  # bfv: one quantization step per client


@pytest.mark.parametrize("name", SCHEMES)
def test_sum_through_a_two_level_tree(name: str, key_dirs: dict[str, Path]) -> None:
    size = 5000  # more than one ciphertext for every scheme
    rng = np.random.default_rng(0)
    values = [rng.uniform(-1, 1, size) for _ in range(8)]
    client, switch = schemes(name, size, key_dirs)
    payloads = [client.encrypt(v) for v in values]
    halves = [
        add_all(switch, [switch.load(p) for p in payloads[:4]]),
        add_all(switch, [switch.load(p) for p in payloads[4:]]),
    ]
    total = add_all(switch, [switch.load(h) for h in halves])
    np.testing.assert_allclose(
        client.decrypt(client.load(total), 8), np.sum(values, axis=0), atol=TOLERANCE[name]
    )


def test_ckks_sum_of_100_unit_vectors(key_dirs: dict[str, Path]) -> None:
    client, switch = schemes("ckks", 2048, key_dirs)
    rng = np.random.default_rng(1)
    values = [rng.uniform(-1, 1, 2048) for _ in range(100)]
    total = add_all(switch, [switch.load(client.encrypt(v)) for v in values])
    assert np.abs(client.decrypt(client.load(total), 100) - np.sum(values, axis=0)).max() < 1e-4


def test_bfv_sums_of_128_clients_are_exact(key_dirs: dict[str, Path]) -> None:
    """What decrypts equals the sum of the quantized integers, exactly: no overflow, no noise."""
    size = 3000
    rng = np.random.default_rng(2)
    values = [rng.uniform(-1, 1, size) for _ in range(128)]
    clients = [schemes("bfv", size, key_dirs, seed=i)[0] for i in range(128)]
    switch = schemes("bfv", size, key_dirs)[1]
    total = add_all(
        switch, [switch.load(c.encrypt(v)) for c, v in zip(clients, values, strict=True)]
    )
    from hefl.crypto.quantize import dequantize_sum, quantize

    ints = sum(quantize(v, 1.0, 16, np.random.default_rng(i)) for i, v in enumerate(values))
    expected = dequantize_sum(np.asarray(ints), 1.0, 16, 128)
    np.testing.assert_allclose(
        clients[0].decrypt(clients[0].load(total), 128), expected, rtol=0, atol=1e-9
    )


@pytest.mark.parametrize("name", ["ckks", "bfv"])
def test_switches_cannot_decrypt(name: str, key_dirs: dict[str, Path]) -> None:
    client, switch = schemes(name, 100, key_dirs)
    assert client.can_decrypt and not switch.can_decrypt
    loaded = switch.load(client.encrypt(np.zeros(100)))
    with pytest.raises(ValueError, match="secret"):
        switch.decrypt(loaded, 1)


@pytest.mark.parametrize("name", ["ckks", "bfv"])
def test_load_refuses_foreign_or_broken_ciphertexts(
    name: str, key_dirs: dict[str, Path], tmp_path: Path
) -> None:
    client, switch = schemes(name, 5000, key_dirs)
    good = client.encrypt(np.zeros(5000))
    other_enc = HeParams(
        scheme=name, poly_modulus_degree=8192, coeff_mod_bit_sizes=(60, 40, 60), scale_bits=40
    )
    generate_keys(other_enc, tmp_path)
    foreign = make_scheme(other_enc, 5000, load_secret(other_enc, tmp_path)).encrypt(np.zeros(5000))
    short = schemes(name, 100, key_dirs)[0].encrypt(np.zeros(100))
    for bad, match in (
        (good[:-50], "payload is|ends inside"),
        (b"x" * 100, "not a framed"),
        (foreign, "ciphertext|payload"),
        (short, "holds"),
    ):
        with pytest.raises(ProtocolError, match=match):
            switch.load(bad)


def test_wire_sizes_per_parameter(key_dirs: dict[str, Path]) -> None:
    size = 300_000  # large updates: the last, partly filled ciphertext hardly counts
    values = np.random.default_rng(3).uniform(-1, 1, size)
    per_param = {
        name: len(schemes(name, size, key_dirs)[0].encrypt(values)) / size for name in SCHEMES
    }
    assert per_param["none"] == 4
    assert per_param["ckks"] <= 25
    assert per_param["bfv"] <= 8.5


@pytest.mark.parametrize(
    ("encryption", "clients", "match"),
    [
        (
            {"scheme": "bfv"},
            129,
            "holds the sum of at most 128 clients, the config has 129: lower quant_bits",
        ),
        ({"scheme": "ckks", "clip": 100.0}, 8, "at most 5 clients, the config has 8: lower clip"),
        (
            {"scheme": "ckks", "coeff_mod_bit_sizes": [60, 60]},
            2,
            "120 bits in all is more than the 109",
        ),
        (
            {"scheme": "ckks", "scale_bits": 40},
            2,
            r"scale_bits: 40 must be at least 20 \(precision\) and below the first prime's 40",
        ),
        ({"scheme": "bfv", "quant_bits": 23}, 2, "quant_bits: 23 must be 8 or more"),
        ({"scheme": "none", "clip": 0}, 2, "clip: must be positive"),
        ({"scheme": "bfv", "plain_modulus_bits": 50}, 64, "bfv noise"),
        ({"scheme": "bfv", "plain_modulus_bits": 55}, 2, "bfv noise"),
        (
            {
                "scheme": "bfv",
                "poly_modulus_degree": 8192,
                "plain_modulus_bits": 19,
                "quant_bits": 8,
            },
            2,
            "no batching prime above",
        ),
        ({"scheme": "ckks", "scale_bits": 10}, 2, "must be at least 20"),
    ],
)
def test_parameters_that_cannot_hold_the_sum_are_refused(
    encryption: dict[str, Any], clients: int, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config(tree_config(clients=clients, leaves=1, spine=False, encryption=encryption))


def test_key_files_by_role(key_dirs: dict[str, Path], tmp_path: Path) -> None:
    folder = key_dirs["ckks"]
    assert (os.stat(folder / SECRET).st_mode & 0o777) == 0o600
    assert ts.context_from((folder / SECRET).read_bytes()).is_private()
    keyless = (folder / KEYLESS).read_bytes()
    assert not ts.context_from(keyless).is_private() and len(keyless) < 200
    enc = HeParams(scheme="ckks")
    with pytest.raises(ConfigError, match="holds a secret key"):
        load_keyless(enc, (folder / SECRET).read_bytes())
    with pytest.raises(ConfigError, match="made for other parameters"):
        load_keyless(replace(enc, poly_modulus_degree=8192), keyless)
    with pytest.raises(ConfigError, match="were made for"):
        load_secret(HeParams(scheme="ckks", poly_modulus_degree=8192), folder)
    with pytest.raises(ConfigError, match="run ./seal.sh"):
        load_secret(HeParams(scheme="ckks"), tmp_path)
    assert json.loads((key_dirs["bfv"] / "params.json").read_text())[
        "plain_modulus"
    ] == batching_prime(47, 4096)


def test_only_the_keyless_context_is_pushed(key_dirs: dict[str, Path]) -> None:
    raw = tree_config(encryption={"scheme": "ckks", "key_dir": str(key_dirs["ckks"])})
    cfg = parse_config(raw)
    secret = (key_dirs["ckks"] / SECRET).read_bytes()
    windows = [
        secret[i : i + 48] for i in range(len(secret) // 4, len(secret) - 48, len(secret) // 4)
    ]  # full windows only
    keyless = read_keyless(cfg.encryption.he_params(), Path(cfg.encryption.key_dir))
    for node in cfg.nodes:
        body = make_push(raw, node, "e", {}, keyless)
        if cfg.nodes[node].type == "client":
            assert "context" not in body
        else:
            assert not ts.context_from(base64.b64decode(body["context"])).is_private()
        pushed = base64.b64decode(body.get("context", ""))
        assert not any(w in pushed for w in windows)


@pytest.mark.parametrize("name", ["ckks", "bfv"])
def test_encryption_in_worker_processes(name: str, key_dirs: dict[str, Path]) -> None:
    size = 4 * 8192  # enough ciphertexts for two workers
    enc = HeParams(scheme=name, processes=2)
    client = make_scheme(enc, size, load_secret(enc, key_dirs[name]), seed=3)
    switch = schemes(name, size, key_dirs)[1]
    try:
        values = np.random.default_rng(4).uniform(-1, 1, size)
        total = add_all(
            switch, [switch.load(client.encrypt(values)), switch.load(client.encrypt(values))]
        )
        np.testing.assert_allclose(
            client.decrypt(client.load(total), 2), 2 * values, atol=TOLERANCE[name]
        )
    finally:
        client.close()


def _fields(blob: bytes) -> list[tuple[int, bytes]]:
    """Top-level (field number, raw bytes of the whole field) of a protobuf (TenSEAL's vectors)."""
    out, i = [], 0
    while i < len(blob):
        start = i
        key, i = _varint(blob, i)
        kind = key & 7
        if kind == 0:
            _, i = _varint(blob, i)
        elif kind == 1:
            i += 8
        elif kind == 2:
            n, i = _varint(blob, i)
            i += n
        else:
            raise ValueError(kind)
        out.append((key >> 3, blob[start:i]))
    return out


def _varint(blob: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = blob[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


@pytest.mark.parametrize("name", ["ckks", "bfv"])
@pytest.mark.parametrize("ciphertexts", [0, 2])
def test_vectors_without_exactly_one_ciphertext_are_refused(
    name: str, ciphertexts: int, key_dirs: dict[str, Path]
) -> None:
    """A vector declaring its size but holding no (or two) SEAL ciphertexts loads in TenSEAL and
    used to crash the adding node (segfault); it must be refused when it arrives."""
    from hefl.crypto.frame import frame, unframe

    client, switch = schemes(name, 100, key_dirs)
    (part,) = unframe(client.encrypt(np.zeros(100)), 1)
    fields = _fields(part)
    cts = [raw for number, raw in fields if number == 2]
    crafted = b"".join(raw for number, raw in fields if number != 2) + b"".join(cts * ciphertexts)
    with pytest.raises(ProtocolError, match=f"holds {ciphertexts} SEAL ciphertexts"):
        switch.load(frame([crafted]))


@pytest.mark.parametrize("edge", [-1.0, 1.0])
def test_bfv_128_clients_at_the_clip_edges(edge: float, key_dirs: dict[str, Path]) -> None:
    size = 2 * 8192 + 5  # several ciphertexts, the last partly filled, an odd count
    client, switch = schemes("bfv", size, key_dirs)
    one = switch.load(client.encrypt(np.full(size, edge)))
    total = add_all(
        switch, [one] + [switch.load(client.encrypt(np.full(size, edge))) for _ in range(127)]
    )
    np.testing.assert_allclose(
        client.decrypt(client.load(total), 128), np.full(size, 128 * edge), atol=1e-9
    )


@pytest.mark.process
def test_seal_with_an_explicit_parameter_list(tmp_path: Path) -> None:
    import subprocess
    import sys

    cfg = tmp_path / "c.json"
    cfg.write_text(
        json.dumps(tree_config(encryption={"scheme": "ckks", "coeff_mod_bit_sizes": [40, 20]}))
    )
    proc = subprocess.run(
        [sys.executable, "main.py", "seal", "--config", str(cfg), "--key-dir", str(tmp_path / "k")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ckks:" in proc.stdout and "bfv:" in proc.stdout and (tmp_path / "k" / SECRET).is_file()
    assert json.loads((tmp_path / "k" / "params.json").read_text())["key_id"]


def test_local_mode_reuses_sealed_keys_only_when_they_fit(key_dirs: dict[str, Path]) -> None:
    from hefl.crypto import keys_match

    enc, folder = HeParams(scheme="ckks"), key_dirs["ckks"]
    assert keys_match(enc, folder)
    # the scale is set at load: the same keys serve
    assert keys_match(replace(enc, scale_bits=25), folder)
    assert not keys_match(replace(enc, poly_modulus_degree=8192), folder)
    assert not keys_match(replace(enc, scheme="bfv"), folder)


def test_encryption_config_converts_to_the_crypto_parameters() -> None:
    assert EncryptionConfig().he_params() == HeParams()  # the same defaults on both sides
    enc = EncryptionConfig(scheme="bfv", quant_bits=12, clip=0.5, processes=3, key_dir="elsewhere")
    assert enc.he_params() == HeParams(scheme="bfv", quant_bits=12, clip=0.5, processes=3)


def test_independent_key_pairs_get_different_key_ids(tmp_path: Path) -> None:
    """The key id names the secret key: two `./seal.sh` runs never share one, one folder always
    gives the same, and it is what params.json recorded."""
    enc = HeParams(scheme="ckks")
    ids = []
    for name in ("a", "b"):
        generate_keys(enc, tmp_path / name)
        ring = load_secret(enc, tmp_path / name)
        made = json.loads((tmp_path / name / "params.json").read_text())["key_id"]
        assert ring.key_id == made == load_secret(enc, tmp_path / name).key_id
        ids.append(ring.key_id)
    assert ids[0] != ids[1]
    # a secret file from another run than its params.json is refused
    (tmp_path / "a" / SECRET).write_bytes((tmp_path / "b" / SECRET).read_bytes())
    with pytest.raises(ConfigError, match="copy both from the same ./seal.sh run"):
        load_secret(enc, tmp_path / "a")


@pytest.mark.parametrize("name", ["ckks", "bfv"])
def test_clients_encrypt_with_the_secret_key(name: str, key_dirs: dict[str, Path]) -> None:
    """A client's context is symmetric: it has no public key at all (so nothing can encrypt for
    this experiment without the secret key); the keyless context has no key of any kind; two
    encryptions of the same values differ (fresh randomness each time) and decrypt alike."""
    enc = HeParams(scheme=name)
    ctx = load_secret(enc, key_dirs[name]).context
    assert ctx.is_private()
    with pytest.raises(ValueError, match="symmetric"):
        ctx.public_key()
    keyless = ts.context_from((key_dirs[name] / KEYLESS).read_bytes())
    assert not keyless.is_private()
    with pytest.raises(ValueError):
        keyless.public_key()
    client = schemes(name, 3000, key_dirs)[0]
    values = np.random.default_rng(14).uniform(-1, 1, 3000)
    first, second = client.encrypt(values), client.encrypt(values)
    assert first != second
    np.testing.assert_allclose(
        client.decrypt(client.load(first), 1), client.decrypt(client.load(second), 1), atol=1e-4
    )


def test_keys_of_an_older_seal_still_load(tmp_path: Path) -> None:
    """A key folder written before clients encrypted symmetrically (a public key, its hash as the
    key id) loads as it is, with its old id."""
    from hefl.crypto.keydir import write_params
    from hefl.crypto.tenseal.keys import keyless_part, new_context, public_key_id

    enc = HeParams(scheme="ckks")
    ctx = new_context(enc, symmetric=False)
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / SECRET).write_bytes(ctx.serialize(save_secret_key=True))
    (folder / KEYLESS).write_bytes(keyless_part(ctx))
    old_id = public_key_id(ctx)
    assert old_id is not None
    write_params(enc, folder, old_id)
    ring = load_secret(enc, folder)
    assert ring.key_id == old_id
    client, switch = (
        make_scheme(enc, 3000, ring),
        make_scheme(enc, 3000, load_keyless(enc, read_keyless(enc, folder))),
    )
    values = np.random.default_rng(9).uniform(-1, 1, 3000)
    total = add_all(switch, [switch.load(client.encrypt(values)) for _ in range(2)])
    np.testing.assert_allclose(client.decrypt(client.load(total), 2), 2 * values, atol=1e-4)


@pytest.mark.parametrize("name", ["ckks", "bfv"])
def test_precomputed_encryptions_of_zero_give_the_same_sums(
    name: str, key_dirs: dict[str, Path]
) -> None:
    """An update encrypted onto precomputed encryptions of zero (all, some or none of its
    ciphertexts) adds and decrypts as one encrypted at once; each zero is used once."""
    size = 5000  # three ciphertexts for ckks (the last one short), one for bfv
    client, switch = schemes(name, size, key_dirs)
    rng = np.random.default_rng(12)
    values = [rng.uniform(-1, 1, size) for _ in range(3)]
    assert not switch.precompute(lambda: False)  # no key, nothing to make
    chunks = math.ceil(size / (2048 if name == "ckks" else 8192))
    assert client.precompute(lambda: False) == chunks
    assert client.precompute(lambda: False) == 0  # all there already
    first = client.encrypt(values[0])
    assert client.precomputed == chunks and client._zeros == []  # taken: each is used once
    calls = iter([False, True])
    assert client.precompute(lambda: next(calls)) == 1  # stopped after one
    second = client.encrypt(values[1])
    assert client.precomputed == 1
    third = client.encrypt(values[2])  # nothing left: encrypted at once
    assert client.precomputed == 0
    total = add_all(switch, [switch.load(p) for p in (first, second, third)])
    np.testing.assert_allclose(
        client.decrypt(client.load(total), 3), np.sum(values, axis=0), atol=TOLERANCE[name]
    )


@pytest.mark.parametrize("name", ["ckks", "bfv"])
def test_an_update_refused_part_way_leaves_the_total_as_it_was(
    name: str, key_dirs: dict[str, Path]
) -> None:
    """Adding on arrival adds ciphertext by ciphertext; when one fails its checks, what the update
    had added is taken out again, to the bit, and the error names the ciphertext."""
    from hefl.crypto.frame import frame, unframe

    size = 3 * (2048 if name == "ckks" else 8192)
    client, switch = schemes(name, size, key_dirs)
    rng = np.random.default_rng(13)
    a, b = rng.uniform(-1, 1, size), rng.uniform(-1, 1, size)
    total = switch.load_into(None, client.encrypt(a))
    before = switch.serialize(total)
    parts = list(unframe(client.encrypt(b), 3))
    broken = frame([parts[0], parts[1], parts[1][: len(parts[1]) // 2]])
    with pytest.raises(ProtocolError, match="ciphertext 2"):
        switch.load_into(total, broken)
    assert switch.serialize(total) == before
    total = switch.load_into(total, frame(parts))  # the whole update still adds
    np.testing.assert_allclose(
        client.decrypt(client.load(switch.serialize(total)), 2), a + b, atol=TOLERANCE[name]
    )


@pytest.mark.parametrize(
    ("degree", "bits"),
    [(4096, (40, 20)), (4096, (60, 20)), (8192, (60, 40, 40, 60)), (16384, (50, 30, 30, 30, 50))],
)
def test_the_recorded_primes_are_those_the_libraries_make(
    degree: int, bits: tuple[int, ...]
) -> None:
    """run.json's `coeff_modulus` is computed without an HE library: it must be the list SEAL's
    CoeffModulus.Create gives (SEAL-Python exactly; TenSEAL shows only the product's low word)."""
    primes = coeff_primes(degree, bits)
    assert [q.bit_length() for q in primes] == list(bits)
    assert all(q % (2 * degree) == 1 for q in primes) and len(set(primes)) == len(primes)
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, degree, coeff_mod_bit_sizes=list(bits))
    low_word = ctx.seal_context().data.key_context_data().total_coeff_modulus()
    assert math.prod(primes) % 2**64 == low_word
    seal = pytest.importorskip("seal")
    assert [m.value() for m in seal.CoeffModulus.Create(degree, list(bits))] == list(primes)
