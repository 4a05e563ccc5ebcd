"""The optional HE backends behind the one scheme interface: SEAL-Python's ckks and bfv, Paillier.

Each test runs per backend and is skipped, saying what to install, where its library is missing
(CI installs requirements-he.txt, so there they all run). Paillier keys here are 1024-bit (2048 by
default): the arithmetic is the same, key generation and encryption 4-8x faster.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from hefl.config import parse_config
from hefl.crypto import (
    HeParams,
    Scheme,
    add_all,
    generate_keys,
    load_keyless,
    load_secret,
    make_scheme,
    read_keyless,
    require,
)
from hefl.crypto.frame import frame, unframe
from hefl.crypto.keydir import KEYLESS, SECRET
from hefl.crypto.params import fingerprint
from hefl.errors import ConfigError, ProtocolError
from hefl.node.push import make_push
from hefl.node.wire import Envelope
from tests.helpers import AGG, C0, C1, EXP, S0, Recorder, begin, post, run_main, tree_config


def _needs(*modules: str) -> pytest.MarkDecorator:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(
        bool(missing),
        reason=f"{', '.join(missing)} not installed: pip install -r requirements-he.txt",
    )


SEAL = _needs("seal", "zstandard")
PHE = _needs("phe", "gmpy2")
PAILLIER = HeParams(scheme="paillier", key_bits=1024)
BACKENDS = [
    pytest.param(HeParams(scheme="ckks", backend="seal"), id="seal-ckks", marks=SEAL),
    pytest.param(HeParams(scheme="bfv", backend="seal"), id="seal-bfv", marks=SEAL),
    pytest.param(PAILLIER, id="paillier", marks=PHE),
]


def bound(enc: HeParams, contributors: int) -> float:
    """How far a decrypted sum may be from the float sum: CKKS noise (what bench/he.py measures:
    about 1e-6 per 100 sums), one quantization step per contributor for bfv and paillier
    (contributors x clip / 2^(bits-1))."""
    if enc.scheme == "ckks":
        return 1e-4
    return contributors * enc.clip / 2 ** (enc.quant_bits - 1)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Key folders by backend and scheme, made on first use."""
    return {"root": tmp_path_factory.mktemp("backends")}


def key_dir(keys: dict[str, Path], enc: HeParams) -> Path:
    name = hashlib.sha256(json.dumps(fingerprint(enc)).encode()).hexdigest()[:12]
    if name not in keys:
        keys[name] = keys["root"] / name
        generate_keys(enc, keys[name])
    return keys[name]


def settings(enc: HeParams, folder: Path) -> dict[str, Any]:
    """A config's `encryption` for these parameters and key folder."""
    return {
        "scheme": enc.scheme,
        "backend": enc.backend,
        "key_bits": enc.key_bits,
        "key_dir": str(folder),
    }


def pair(enc: HeParams, size: int, keys: dict[str, Path], seed: int = 0) -> tuple[Scheme, Scheme]:
    """(a client's scheme, a switch's scheme) of one experiment."""
    folder = key_dir(keys, enc)
    return (
        make_scheme(enc, size, load_secret(enc, folder), seed),
        make_scheme(enc, size, load_keyless(enc, read_keyless(enc, folder))),
    )


@pytest.mark.parametrize("enc", BACKENDS)
def test_sum_of_100_unit_range_vectors_through_two_switches(
    enc: HeParams, keys: dict[str, Path]
) -> None:
    enc = replace(enc, clients=100)
    size = 600 if enc.scheme == "paillier" else 3000  # several ciphertexts for every backend
    rng = np.random.default_rng(0)
    values = [rng.uniform(-1, 1, size) for _ in range(100)]
    clients = [pair(enc, size, keys, seed=i)[0] for i in range(2)]
    switch = pair(enc, size, keys)[1]
    halves = [
        add_all(switch, [switch.load(clients[h].encrypt(v)) for v in values[h * 50 : h * 50 + 50]])
        for h in range(2)
    ]
    total = add_all(switch, [switch.load(h) for h in halves])
    error = np.abs(clients[0].decrypt(clients[0].load(total), 100) - np.sum(values, axis=0))
    assert error.max() <= bound(enc, 100)
    assert error.max() > 0  # it went through the scheme: quantization or noise shows


@pytest.mark.parametrize("enc", BACKENDS[1:])
def test_bfv_and_paillier_sums_equal_tenseal_bfv_bit_for_bit(
    enc: HeParams, keys: dict[str, Path], key_dirs: dict[str, Path]
) -> None:
    """The same quantization with the same seed: integer sums are exact in every library (ckks
    sums carry each encryption's own noise)."""
    size, rng = 2500, np.random.default_rng(5)
    values = [rng.uniform(-1, 1, size) for _ in range(6)]
    tenseal = HeParams(scheme="bfv")
    sums = []
    for params, folder in ((enc, key_dir(keys, enc)), (tenseal, key_dirs["bfv"])):
        ring = load_secret(params, folder)
        clients = [make_scheme(params, size, ring, seed=i) for i in range(6)]
        total = add_all(
            clients[0],
            [clients[0].load(c.encrypt(v)) for c, v in zip(clients, values, strict=True)],
        )
        sums.append(clients[0].decrypt(clients[0].load(total), 6))
    np.testing.assert_array_equal(sums[0], sums[1])


@pytest.mark.parametrize("enc", BACKENDS)
def test_precomputed_encryptions_of_zero_give_the_same_sums(
    enc: HeParams, keys: dict[str, Path]
) -> None:
    size = 9000
    client, switch = pair(enc, size, keys, seed=7)
    values = np.random.default_rng(8).uniform(-1, 1, size)
    made = client.precompute(lambda: False)
    assert made == client.chunks >= 2
    first = client.encrypt(values)
    assert client.precomputed == client.chunks
    second = client.encrypt(values)  # encrypted at once
    assert client.precomputed == 0 and first != second
    total = add_all(switch, [switch.load(first), switch.load(second)])
    got = client.decrypt(client.load(total), 2)
    assert np.abs(got - 2 * values).max() <= bound(enc, 2)
    # a window smaller than the update: that many made ahead, the rest encrypted at once
    windowed, _ = pair(replace(enc, precompute_window=1), size, keys, seed=7)
    assert windowed.precompute(lambda: False) == 1 < windowed.chunks
    third = windowed.encrypt(values)
    assert windowed.precomputed == 1
    total = add_all(switch, [switch.load(first), switch.load(third)])
    got = client.decrypt(client.load(total), 2)
    assert np.abs(got - 2 * values).max() <= bound(enc, 2)


@pytest.mark.parametrize("enc", BACKENDS)
def test_switches_and_the_aggregator_cannot_decrypt(enc: HeParams, keys: dict[str, Path]) -> None:
    client, switch = pair(enc, 100, keys)
    assert client.can_decrypt and not switch.can_decrypt
    loaded = switch.load(client.encrypt(np.zeros(100)))
    with pytest.raises(ValueError, match="no secret_key"):
        switch.decrypt(loaded, 1)
    folder = key_dir(keys, enc)
    with pytest.raises(ConfigError, match="only clients may"):
        load_keyless(enc, (folder / SECRET).read_bytes())


@pytest.mark.parametrize("enc", BACKENDS)
def test_no_secret_crosses_the_wire(enc: HeParams, keys: dict[str, Path]) -> None:
    """What `agg` pushes to switches and the aggregator holds no byte of the secret: SEAL's
    parameters alone (no key), Paillier's n alone (not p or q)."""
    folder = key_dir(keys, enc)
    raw = tree_config(encryption=settings(enc, folder))
    cfg = parse_config(raw)
    secret = (folder / SECRET).read_bytes()
    if enc.scheme == "paillier":
        held = json.loads(secret)
        needles = [held["p"][:40].encode(), held["q"][:40].encode()]
    else:
        key = next(p for i, p in enumerate(unframe(secret, 2)) if i == 1)
        needles = [key[i : i + 32] for i in range(len(key) // 8, len(key) - 32, len(key) // 8)]
    keyless = read_keyless(cfg.he_params(), folder)
    assert keyless == (folder / KEYLESS).read_bytes()
    pushed = 0
    for node in cfg.nodes:
        body = make_push(raw, node, "e", {}, keyless)
        if cfg.nodes[node].type == "client":
            assert "context" not in body  # clients read their key folder
            continue
        blob = base64.b64decode(body["context"])
        assert not any(n in blob for n in needles)
        assert not load_keyless(cfg.he_params(), blob).private
        pushed += 1
    assert pushed == len(cfg.nodes) - len(cfg.tree.client_nodes())


def _other(enc: HeParams) -> HeParams:
    """Other parameters of the same scheme: another key size, another ring."""
    if enc.scheme == "paillier":
        return replace(enc, key_bits=512)
    return replace(enc, poly_modulus_degree=8192, coeff_mod_bit_sizes=(60, 40, 60), scale_bits=40)


@pytest.mark.parametrize("enc", BACKENDS)
def test_load_refuses_foreign_or_broken_ciphertexts(enc: HeParams, keys: dict[str, Path]) -> None:
    size = 9000  # several ciphertexts for every backend
    client, switch = pair(enc, size, keys)
    good = client.encrypt(np.zeros(size))
    parts = list(unframe(good, client.chunks))
    other = _other(enc)
    foreign = pair(other, size, keys)[0].encrypt(np.zeros(size))
    same_key_other_size = pair(enc, 10, keys)[0].encrypt(np.zeros(10))
    junk = frame([b"\x5e\xa1" + bytes(len(p) - 2) for p in parts])
    zeros = frame([bytes(len(p)) for p in parts])
    bomb = frame([b"\x28\xb5\x2f\xfd" + b"\x00" * 16] * client.chunks)
    cases: list[tuple[bytes, str]] = [
        (good[:-50], "ends inside"),
        (b"x" * 100, "not a framed"),
        (foreign, "ciphertext|payload"),
        (same_key_other_size, f"holds 1 ciphertexts, expected {client.chunks}"),
        (zeros, "ciphertext 0"),
    ]
    if enc.scheme != "paillier":  # any unit below n^2 is some Paillier ciphertext
        cases += [(junk, "ciphertext 0"), (bomb, "ciphertext 0")]
    if enc.backend == "seal":  # zstd frames that would unpack to more than a ciphertext
        import zstandard

        huge = bytes(3 * len(parts[0]))
        unsized = zstandard.ZstdCompressor(write_content_size=False).compress(huge)
        oversized = zstandard.ZstdCompressor().compress(huge)
        cases += [
            (frame([unsized] * client.chunks), "ciphertext 0 unpacks to -1 bytes"),
            (frame([oversized] * client.chunks), "ciphertext 0 unpacks to"),
        ]
        other_scale = replace(enc, scale_bits=25)
        if enc.scheme == "ckks":  # the same ring, another scale: would add to nonsense
            ring = load_secret(enc, key_dir(keys, enc))
            scaled = make_scheme(other_scale, size, ring).encrypt(np.zeros(size))
            cases.append((scaled, "scale"))
    for bad, match in cases:
        with pytest.raises(ProtocolError, match=match):
            switch.load(bad)
    # a payload refused part way (its last ciphertext broken) leaves the running total as it was
    total = switch.load(client.encrypt(np.full(size, 0.5)))
    broken = frame([*parts[:-1], bytes(len(parts[-1]))])
    with pytest.raises(ProtocolError, match=f"ciphertext {client.chunks - 1}"):
        switch.load_into(total, broken)
    got = client.decrypt(client.load(switch.serialize(total)), 1)
    assert np.abs(got - 0.5).max() <= bound(enc, 1)


@pytest.mark.parametrize("enc", BACKENDS)
def test_keys_of_another_library_or_size_are_refused(
    enc: HeParams, keys: dict[str, Path], key_dirs: dict[str, Path]
) -> None:
    folder = key_dir(keys, enc)
    with pytest.raises(ConfigError, match="were made for"):
        load_secret(_other(enc), folder)
    if enc.scheme != "paillier":  # TenSEAL's keys for the same parameters are another library's
        with pytest.raises(ConfigError, match="were made for"):
            load_secret(enc, key_dirs[enc.scheme])
        with pytest.raises(ConfigError, match="were made for"):
            load_secret(replace(enc, backend="tenseal"), folder)
    with pytest.raises(ConfigError, match="push.context"):
        load_keyless(_other(enc), (folder / KEYLESS).read_bytes())


def test_a_missing_library_fails_at_once_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("seal", "phe") else real(name),
    )
    for enc, named in (
        (HeParams(scheme="ckks", backend="seal"), "seal-python"),
        (HeParams(scheme="paillier"), "phe"),
    ):
        with pytest.raises(ConfigError, match="requirements-he.txt") as err:
            require(enc)
        assert named in str(err.value) and "\n" not in str(err.value)
        with pytest.raises(ConfigError, match="requirements-he.txt"):
            generate_keys(enc, Path("/nonexistent"))
    require(HeParams(scheme="ckks"))  # TenSEAL is always there


def test_paillier_packing_leaves_room_for_every_client() -> None:
    from hefl.crypto.encoding import pack_lanes, unpack_lanes
    from hefl.crypto.params import check_encryption, max_clients, paillier_lane_bits, slots

    enc = replace(PAILLIER, clients=8)
    assert paillier_lane_bits(enc) == 16 + 3 and max_clients(enc) >= 8
    assert slots(enc) == 1023 // 19
    assert slots(replace(enc, key_bits=2048, clients=0)) == 2047 // (16 + 14)
    q = np.random.default_rng(1).integers(0, 2**19, slots(enc))
    assert (unpack_lanes(pack_lanes(q, 19), 19, len(q)) == q).all()
    assert pack_lanes(q, 19).bit_length() <= 1023
    with pytest.raises(ConfigError, match="key_bits"):
        check_encryption(replace(enc, key_bits=1000), 8)


@pytest.mark.parametrize("enc", BACKENDS)
def test_a_switch_over_http_refuses_bad_ciphertexts_and_keeps_adding(
    enc: HeParams, keys: dict[str, Path], serve_node: Any, recorder: Recorder
) -> None:
    folder = key_dir(keys, enc)
    raw = tree_config(
        clients=2,
        leaves=1,
        spine=False,
        encryption=settings(enc, folder),
    )
    cfg = parse_config(raw)
    url, server = serve_node()
    endpoints = {C0: recorder.url, C1: recorder.url, AGG: recorder.url, S0: url}
    body = make_push(raw, S0, EXP, endpoints, read_keyless(cfg.he_params(), folder))
    assert requests.post(f"{url}/config", json=body, timeout=60).status_code == 200
    begin(url, recorder)
    health = requests.get(f"{url}/health", timeout=5).json()
    assert (health["role"], health["scheme"], health["can_decrypt"]) == (
        "switch",
        enc.scheme,
        False,
    )
    size = server.node.scheme.size
    params = cfg.he_params()
    client = make_scheme(params, size, load_secret(params, folder), seed=1)
    other = _other(enc)
    foreign = make_scheme(other, size, load_secret(other, key_dir(keys, other)), 1)
    good = client.encrypt(np.full(size, 0.25))
    parts = list(unframe(good, client.chunks))
    for bad in (
        foreign.encrypt(np.zeros(size)),  # another key size or ring
        frame([bytes(len(p)) for p in parts]),  # does not load
        frame(parts[:-1]) if client.chunks > 1 else frame(parts * 2),  # wrong count
    ):
        resp = post(url, "/update", Envelope(EXP, 0, C0, 10, 1), bad)
        assert 400 <= resp.status_code < 500, resp.text
        assert "\n" not in resp.json()["error"].strip()
    # each child's own encryption (SEAL-Python's seeded ones: the same bytes twice are refused)
    for child, payload in ((C0, good), (C1, client.encrypt(np.full(size, 0.25)))):
        assert post(url, "/update", Envelope(EXP, 0, child, 10, 1), payload).status_code == 202
    ((_, _, summed),) = recorder.wait_for(1)
    got = client.decrypt(client.load(summed), 2)
    assert np.abs(got - 0.5).max() <= bound(enc, 2)


@pytest.mark.process
@pytest.mark.parametrize(
    ("flags", "made_for"),
    [
        pytest.param(
            ["--backend", "seal", "--scheme", "bfv"],
            {"scheme": "bfv", "backend": "seal"},
            id="seal-bfv",
            marks=SEAL,
        ),
        pytest.param(
            ["--scheme", "paillier"],
            {"scheme": "paillier", "key_bits": 2048},
            id="paillier",
            marks=PHE,
        ),
    ],
)
def test_seal_command_takes_backend_and_scheme_flags(
    flags: list[str], made_for: dict[str, Any], tmp_path: Path
) -> None:
    """`./seal.sh`'s command self-tests the library the flags name and writes its keys."""

    proc = run_main("seal", *flags, "--key-dir", str(tmp_path / "k"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    library = "seal-python" if "seal" in flags else "phe"
    assert library in proc.stdout.splitlines()[0]  # the versions line names the library
    params = json.loads((tmp_path / "k" / "params.json").read_text())
    assert {k: params[k] for k in made_for} == made_for
    assert (tmp_path / "k" / SECRET).stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "enc",
    [
        pytest.param(HeParams(scheme="ckks"), id="tenseal-ckks"),
        *BACKENDS,
    ],
)
def test_an_update_that_cancels_the_total_is_refused_and_undone(
    enc: HeParams, keys: dict[str, Path]
) -> None:
    """A child that sends the negation of what its sibling sent (no key needed) would make the
    total an encryption of zero with no randomness left, which SEAL refuses as transparent while
    adding: the update is refused (a ProtocolError: a 4xx), and the total keeps the sibling's."""
    size = 9000
    client, switch = pair(enc, size, keys)
    first = client.encrypt(np.full(size, 0.5))
    total = switch.load(first)
    negated = switch.load(first)
    for i, ct in enumerate(negated):
        if enc.scheme != "paillier":
            full = switch.full(ct)  # type: ignore[attr-defined]  # a seed list: expanded
            if enc.backend == "seal":
                negated[i] = switch.evaluator.negate(full)  # type: ignore[attr-defined]
            else:
                negated[i] = full.neg()  # TenSEAL
        else:
            negated[i] = gmpy2_invert(ct, switch)
    cancel = switch.serialize(negated)
    if enc.scheme == "paillier":  # c x c^-1 = 1: a valid encryption of 0, Paillier adds it
        switch.load_into(total, cancel)
        got = client.decrypt(client.load(switch.serialize(total)), 1)
        assert np.abs(got + 1.0).max() <= bound(enc, 1)  # the offsets of one client remain
        return
    with pytest.raises(ProtocolError, match="cannot be added"):
        switch.load_into(total, cancel)
    got = client.decrypt(client.load(switch.serialize(total)), 1)
    assert np.abs(got - 0.5).max() <= bound(enc, 1)


def gmpy2_invert(ct: Any, scheme: Any) -> Any:
    import gmpy2

    return gmpy2.invert(ct, scheme.n2)
