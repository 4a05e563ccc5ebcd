"""Bad input over real HTTP: a clear 4xx in one line, nothing lost, and the node keeps serving."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from hefl.config import parse_config
from hefl.crypto import generate_keys
from hefl.crypto.plain import PlainScheme
from hefl.node.push import make_push
from hefl.node.wire import JSON, Envelope
from tests.helpers import (
    AGG,
    C0,
    C1,
    EXP,
    ROOT,
    S0,
    Recorder,
    begin,
    post,
    push,
    size_of,
    small,
    tree_config,
    wait_health,
)


def test_failed_reconfiguration_keeps_the_node_as_it_was(
    serve_node: Any, recorder: Recorder
) -> None:
    url, server = serve_node()
    endpoints = {C0: recorder.url, "127.0.0.1:101": recorder.url, AGG: recorder.url, S0: url}
    assert push(url, small(), S0, endpoints).status_code == 200
    begin(url, recorder)
    switch = server.node
    bad = small(dataset={"name": "mnist", "path": "/nonexistent"})
    resp = requests.post(
        f"{url}/config",
        json={"node": C0, "experiment": "exp-2", "config": bad, "endpoints": endpoints},
        timeout=30,
    )
    assert resp.status_code == 400 and "train-images-idx3-ubyte not found" in resp.json()["error"]
    cuda = small(training={"device": "cuda"})
    resp = requests.post(
        f"{url}/config",
        json={"node": C0, "experiment": "exp-3", "config": cuda, "endpoints": endpoints},
        timeout=30,
    )
    assert resp.status_code == 400 and "training.device" in resp.json()["error"]
    assert server.node is switch and not switch.closed
    health = requests.get(f"{url}/health", timeout=5).json()
    assert (health["role"], health["experiment"], health["state"]) == ("switch", EXP, "running")
    scheme = PlainScheme(size_of(small()))
    for child in (C0, "127.0.0.1:101"):
        assert (
            post(
                url, "/update", Envelope(EXP, 0, child, 10, 1), scheme.encrypt(np.ones(scheme.size))
            ).status_code
            == 202
        )
    # the old role still works: it forwarded the sum
    ((path, headers, body),) = recorder.wait_for(1)
    np.testing.assert_allclose(scheme.decrypt(scheme.load(body), 1), 2 * np.ones(scheme.size))


def test_repushing_the_running_experiment_keeps_its_log(
    serve_node: Any, recorder: Recorder
) -> None:
    url, server = serve_node()
    endpoints = {C0: recorder.url, "127.0.0.1:101": recorder.url, AGG: recorder.url, S0: url}
    assert push(url, small(), S0, endpoints).status_code == 200
    begin(url, recorder)
    scheme = PlainScheme(size_of(small()))
    assert (
        post(
            url, "/update", Envelope(EXP, 0, C0, 10, 1), scheme.encrypt(np.ones(scheme.size))
        ).status_code
        == 202
    )
    again = push(url, small(), S0, endpoints)
    assert again.status_code == 409 and "already configured" in again.json()["error"]
    assert server.node.runlog.record(0).to_json()["byte_received"] == scheme.max_payload_bytes


def test_aggregator_refuses_bad_metrics_and_foreign_failures(
    serve_node: Any, recorder: Recorder
) -> None:
    url, server = serve_node()
    endpoints = {C0: recorder.url, "127.0.0.1:101": recorder.url, S0: recorder.url, AGG: url}
    assert push(url, small(), AGG, endpoints).status_code == 200
    server.node.metrics.open(0)  # as sending round 1's global result down would
    good = {"loss": 0.5, "accuracy": 0.9, "test_samples": 30, "byte_send": 1, "byte_received": 2}
    for bad in (
        {k: v for k, v in good.items() if k != "byte_send"},
        {**good, "accuracy": 1.5},
        {**good, "test_samples": 0},
        {**good, "loss": float("nan")},
        [1, 2],
    ):
        resp = post(
            url,
            "/metrics",
            Envelope(EXP, 0, C0, 30, 1),
            json.dumps(bad).encode(),
            "application/json",
        )
        assert resp.status_code == 400 and resp.json()["error"].startswith(f"metrics from '{C0}'")
    foreign = requests.post(
        f"{url}/fail", data="old news", timeout=5, headers=Envelope("exp-0", 0, C0).headers()
    )
    assert foreign.status_code == 400
    assert requests.get(f"{url}/health", timeout=5).json()["state"] == "running"
    requests.post(f"{url}/fail", data="boom", timeout=5, headers=Envelope(EXP, 0, C0).headers())
    assert requests.get(f"{url}/health", timeout=5).json()["error"] == "boom"


def test_odd_headers_and_paths_get_4xx_not_500(serve_node: Any, recorder: Recorder) -> None:
    url, server = serve_node()
    endpoints = {C0: recorder.url, "127.0.0.1:101": recorder.url, AGG: recorder.url, S0: url}
    assert push(url, small(), S0, endpoints).status_code == 200
    headers = {**Envelope(EXP, 0, C0, 10, 1).headers(), "Content-Type": "application/octet-stream"}
    for value in ("\u00b2".encode("latin-1"), b"9" * 5000, b"-1", b"1.5"):
        resp = requests.post(
            f"{url}/update", data=b"x", headers={**headers, "X-Hefl-Round": value}, timeout=5
        )  # type: ignore[dict-item]
        assert resp.status_code == 400, value
    assert (
        requests.get(
            f"{url}/health", headers={"X-Hefl-Round": "\u00b2".encode("latin-1")}, timeout=5
        ).status_code
        == 200
    )  # type: ignore[dict-item]
    assert requests.get(f"{url}/log/..", timeout=5).status_code == 404
    assert (
        requests.post(
            f"{url}/config",
            data="[" * 100_000,
            timeout=5,
            headers={"Content-Type": "application/json"},
        ).status_code
        == 400
    )
    assert server.node.runlog.snapshot()["iteration"] == []  # nothing above made a round record


def test_without_the_token_nothing_changes(serve_node: Any) -> None:
    url, server = serve_node(token="s3cret")
    for method, path in (
        ("POST", "/config"),
        ("POST", "/update"),
        ("POST", "/begin"),
        ("POST", "/global"),
        ("POST", "/metrics"),
        ("POST", "/fail"),
        ("POST", "/start"),
        ("GET", "/status"),
        ("GET", "/log/exp-1"),
    ):
        resp = requests.request(
            method,
            url + path,
            data=b"x" * 10,
            timeout=5,
            headers=Envelope(EXP, 7, C0, 1, 1).headers(),
        )
        assert resp.status_code == 401, path
        assert "X-Hefl-Token" in resp.json()["error"]
    assert server.node is None
    assert push(url, small(), AGG, {}, token="s3cret").status_code == 200
    resp = requests.post(
        f"{url}/update", data=b"x", timeout=5, headers=Envelope(EXP, 1, S0, 1, 2).headers()
    )
    assert resp.status_code == 401 and server.node.runlog.snapshot()["iteration"] == []


def test_concurrent_updates_are_added_once(serve_node: Any, recorder: Recorder) -> None:
    raw = tree_config(clients=8, leaves=1, spine=False)
    clients = [f"127.0.0.1:{100 + i}" for i in range(8)]
    url, _ = serve_node()
    endpoints = {**{c: recorder.url for c in clients}, AGG: recorder.url, S0: url}
    assert push(url, raw, S0, endpoints).status_code == 200
    begin(url, recorder, children=8)
    scheme = PlainScheme(size_of(raw))
    codes: list[int] = []

    def send(i: int) -> None:  # every client twice (a retried POST), all at once
        body = scheme.encrypt(np.full(scheme.size, (i % 8 + 1) / 10))
        codes.append(
            post(url, "/update", Envelope(EXP, 0, clients[i % 8], 10, 1), body).status_code
        )

    threads = [threading.Thread(target=send, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [202] * 8 + [409] * 8
    ((path, headers, body),) = recorder.wait_for(1)
    assert headers["X-Hefl-Contributors"] == "8" and headers["X-Hefl-Samples"] == "80"
    # 0.1 + ... + 0.8, each once
    np.testing.assert_allclose(
        scheme.decrypt(scheme.load(body), 1), np.full(scheme.size, 3.6), rtol=1e-6
    )
    assert wait_health(url, "running")["state"] == "running" and len(recorder.messages) == 1


@pytest.mark.process
def test_switch_and_aggregator_processes_never_load_torch(tmp_path: Any) -> None:
    code = f"""
import sys
from pathlib import Path
from blueprints import NodeServer
from hefl.node.push import make_push
raw = {tree_config()!r}
for node in ("127.0.0.1:10", "127.0.0.1:2", "127.0.0.1:1"):
    NodeServer(Path({str(tmp_path)!r})).configure(make_push(raw, node, "e", {{}}))
bad = [m for m in ("torch", "sklearn", "tenseal") if m in sys.modules]
print(bad)
sys.exit(bool(bad))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", ["none", "ckks", "bfv"])
def test_encrypted_switch_refuses_foreign_and_short_ciphertexts(
    name: str, serve_node: Any, recorder: Recorder, key_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """Over HTTP, for every scheme: a payload from another context or of the wrong length gets a
    clear 4xx, a repeat gets 409, and the switch goes on to add the valid ones."""
    from hefl.config import parse_config
    from hefl.crypto import generate_keys, load_secret, make_scheme, read_keyless
    from hefl.modelspec import param_count
    from hefl.node.push import make_push

    raw = small(encryption={"scheme": name, "key_dir": str(key_dirs.get(name, tmp_path))})
    cfg = parse_config(raw)
    size = param_count(cfg.model, cfg.dataset)
    url, _ = serve_node()
    endpoints = {C0: recorder.url, "127.0.0.1:101": recorder.url, AGG: recorder.url, S0: url}
    enc, key_dir = cfg.he_params(), Path(cfg.encryption.key_dir)
    keyless = read_keyless(enc, key_dir) if name != "none" else b""
    resp = requests.post(
        f"{url}/config", json=make_push(raw, S0, EXP, endpoints, keyless), timeout=30
    )
    assert resp.status_code == 200 and resp.json()["can_decrypt"] is (name == "none")
    begin(url, recorder)
    keys = load_secret(enc, key_dir) if name != "none" else None
    client = make_scheme(enc, size, keys, seed=1)
    good = client.encrypt(np.full(size, 0.25))
    bad = [good[:-7], b"\x00" * 64]
    if name != "none":  # plaintext has no context to be foreign to
        other_enc = replace(enc, poly_modulus_degree=8192)
        generate_keys(other_enc, tmp_path / "other")
        bad.append(
            make_scheme(other_enc, size, load_secret(other_enc, tmp_path / "other")).encrypt(
                np.zeros(size)
            )
        )
    for payload in bad:
        resp = post(url, "/update", Envelope(EXP, 0, C1, 10, 1), payload)
        assert resp.status_code == 400 and "\n" not in resp.json()["error"], resp.text
    assert post(url, "/update", Envelope(EXP, 0, C0, 10, 1), good).status_code == 202
    assert post(url, "/update", Envelope(EXP, 0, C0, 10, 1), good).status_code == 409
    assert requests.get(f"{url}/health", timeout=5).json()["state"] == "running"
    assert (
        post(
            url, "/update", Envelope(EXP, 0, C1, 10, 1), client.encrypt(np.full(size, 0.5))
        ).status_code
        == 202
    )
    ((path, headers, body),) = recorder.wait_for(1)
    tolerance = {"none": 1e-6, "ckks": 1e-4, "bfv": 1e-4}[name]
    np.testing.assert_allclose(
        client.decrypt(client.load(body), 2), np.full(size, 0.75), atol=tolerance
    )


@pytest.mark.process
@pytest.mark.parametrize(
    "name", ["ckks", "bfv", "ckks/seal", "bfv/seal", "paillier"], ids=lambda n: n.replace("/", "-")
)
def test_switch_and_aggregator_processes_cannot_decrypt(
    name: str, key_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """Configured as they are by `agg` (the pushed keyless context), a switch and an aggregator in
    their own process hold no secret key: decrypting a client's ciphertext fails there, in the HE
    library itself (SEAL-Python's and Paillier's where installed)."""
    scheme, _, backend = name.partition("/")
    needs = {"seal": ("seal", "zstandard"), "paillier": ("phe", "gmpy2")}.get(backend or scheme)
    if needs and any(importlib.util.find_spec(m) is None for m in needs):
        pytest.skip(f"{', '.join(needs)} not installed: pip install -r requirements-he.txt")
    encryption: dict[str, Any] = {"scheme": scheme, "key_dir": str(key_dirs.get(name, ""))}
    if name not in key_dirs:  # the optional backends' keys (paillier: a test-sized key)
        encryption.update(backend=backend or "tenseal", key_bits=1024, key_dir=str(tmp_path / "k"))
        generate_keys(parse_config(tree_config(encryption=encryption)).he_params(), tmp_path / "k")
    raw = tree_config(encryption=encryption)
    code = f"""
import sys
from pathlib import Path
import numpy as np
from blueprints import NodeServer
from hefl.config import parse_config
from hefl.crypto import load_secret, make_scheme, read_keyless
from hefl.modelspec import param_count
from hefl.node.push import make_push
raw = {raw!r}
cfg = parse_config(raw)
size = param_count(cfg.model, cfg.dataset)
enc, key_dir = cfg.he_params(), Path(cfg.encryption.key_dir)
payload = make_scheme(enc, size, load_secret(enc, key_dir), 1).encrypt(np.zeros(size))
for node in ("127.0.0.1:10", "127.0.0.1:1"):
    server = NodeServer(Path({str(tmp_path)!r}))
    server.configure(make_push(raw, node, "e", {{}}, read_keyless(enc, key_dir)))
    scheme = server.node.scheme
    try:
        scheme.decrypt(scheme.load(payload), 1)
        print(node, "DECRYPTED")
    except ValueError as exc:
        print(node, "refused:", exc)
    server.node.close()
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and all("refused:" in line and "secret_key" in line for line in lines), (
        proc.stdout
    )


def test_huge_numbers_and_an_unwritable_log_get_one_line_4xx(
    serve_node: Any, recorder: Recorder, tmp_path: Path
) -> None:
    url, server = serve_node()
    endpoints = {C0: recorder.url, "127.0.0.1:101": recorder.url, AGG: url, S0: recorder.url}
    assert push(url, small(), AGG, endpoints).status_code == 200
    aggregator = server.node
    aggregator.metrics.open(0)  # as sending round 1's global result down would
    huge = '{"loss": 1%s, "accuracy": 0.5, "test_samples": 3, "byte_send": 0, "byte_received": 0}'
    resp = post(url, "/metrics", Envelope(EXP, 0, C0, 3, 1), (huge % ("0" * 400)).encode(), JSON)
    assert resp.status_code == 400 and "expected a finite number" in resp.json()["error"]
    bad = small(training={"lr": 10**400})
    resp = requests.post(f"{url}/config", json=make_push(bad, AGG, "exp-2", endpoints), timeout=30)
    assert (
        resp.status_code == 400 and "training.lr: expected a finite number" in resp.json()["error"]
    )
    (server.log_dir / "exp-3").write_text("a file where the experiment's log folder would go")
    resp = requests.post(
        f"{url}/config", json=make_push(small(), AGG, "exp-3", endpoints), timeout=30
    )
    assert resp.status_code == 400 and "cannot write its log" in resp.json()["error"], resp.text
    # the push that failed changed nothing
    assert server.node is aggregator and not aggregator.closed
    assert requests.get(f"{url}/health", timeout=5).json()["experiment"] == EXP
