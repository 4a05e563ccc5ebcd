"""Each role over real HTTP on 127.0.0.1: a NodeServer in a thread, a recorder playing its peers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from hefl.crypto.plain import PlainScheme
from hefl.node.push import make_push
from hefl.node.wire import BINARY, Envelope
from tests.helpers import (
    AGG,
    C0,
    C1,
    EXP,
    S0,
    Recorder,
    begin,
    post,
    push,
    size_of,
    small,
    wait_health,
)


def test_unconfigured_node_answers_health_and_refuses_bad_config(serve_node: Any) -> None:
    url, _ = serve_node()
    assert requests.get(f"{url}/health", timeout=5).json()["state"] == "idle"
    raw = small()
    raw["others"][C0]["index"] = 7
    resp = push(url, raw, C0, {})
    assert resp.status_code == 400
    assert resp.json()["error"] == f"others['{C0}'].index: 7 is not in 0..1 (client_number)"
    assert requests.post(f"{url}/config", data="{not json", timeout=5).status_code == 400
    resp = requests.post(f"{url}/update", data=b"", timeout=5)
    assert (resp.status_code, resp.json()["error"]) == (
        404,
        "POST /update: not an endpoint of this node (role: unconfigured)",
    )
    assert requests.get(f"{url}/health", timeout=5).json()["state"] == "idle"


def test_token_guards_every_endpoint_but_health(serve_node: Any) -> None:
    url, _ = serve_node(token="s3cret")
    assert requests.get(f"{url}/health", timeout=5).status_code == 200
    resp = push(url, small(), S0, {}, token="wrong")
    assert resp.status_code == 401 and "X-Hefl-Token" in resp.json()["error"]
    assert push(url, small(), S0, {}, token="s3cret").status_code == 200


class Wire:
    """Posts round messages and remembers the body bytes that crossed in each direction."""

    def __init__(self, url: str) -> None:
        self.url, self.out, self.back, self.count = url, 0, 0, 0

    def post(self, path: str, env: Envelope, body: bytes, content_type: str = BINARY) -> int:
        """POST; the exchange is added to the tallies when it belongs to the node's experiment."""
        resp = post(self.url, path, env, body, content_type)
        if env.experiment == EXP:
            self.out += len(body)
            self.back += len(resp.content)
            self.count += 1
        return resp.status_code


@pytest.mark.parametrize("dumb", [False, True])
def test_switch_adds_or_forwards_and_relays_down(
    serve_node: Any, recorder: Recorder, dumb: bool
) -> None:
    raw = small(dumb=(0,) if dumb else (), rounds=1)
    url, _ = serve_node()
    endpoints = {C0: recorder.url, C1: recorder.url, AGG: recorder.url, S0: url}
    assert push(url, raw, S0, endpoints).status_code == 200
    begin(url, recorder)
    scheme = PlainScheme(size_of(raw))
    rng = np.random.default_rng(0)
    updates = {C0: rng.uniform(-1, 1, scheme.size), C1: rng.uniform(-1, 1, scheme.size)}
    sent = {c: scheme.encrypt(u) for c, u in updates.items()}
    wire = Wire(url)
    assert wire.post("/update", Envelope(EXP, 0, C0, 100, 1), sent[C0]) == 202
    # refused with a clear 4xx, and the switch keeps serving
    assert wire.post("/update", Envelope(EXP, 0, C0, 100, 1), sent[C0]) == 409
    assert wire.post("/update", Envelope(EXP, 0, C1, 90, 1), sent[C1][:-4]) == 400
    assert wire.post("/update", Envelope(EXP, 0, "127.0.0.1:9", 90, 1), sent[C1]) == 400
    assert wire.post("/update", Envelope("other", 0, C1, 90, 1), sent[C1]) == 400
    assert wire.post("/update", Envelope(EXP, 0, C1, 90, 2), sent[C1]) == 400
    assert wire.post("/update", Envelope(EXP, 0, C1, 90, 1), sent[C1], "application/json") == 400
    for bad in (np.nan, np.inf, 1.5):  # not finite, or beyond 1 client x clip 1
        values = updates[C1].copy()
        values[7] = bad
        assert wire.post("/update", Envelope(EXP, 0, C1, 90, 1), scheme.encrypt(values)) == 400
    assert wire.post("/update", Envelope(EXP, 0, C1, 90, 1), sent[C1]) == 202
    if dumb:
        msgs = recorder.wait_for(2)
        assert sorted((m[1]["X-Hefl-Sender"], m[2]) for m in msgs) == sorted(sent.items())
    else:
        ((path, headers, body),) = recorder.wait_for(1)
        assert (
            path,
            headers["X-Hefl-Sender"],
            headers["X-Hefl-Samples"],
            headers["X-Hefl-Contributors"],
        ) == ("/update", S0, "190", "2")
        np.testing.assert_allclose(
            scheme.decrypt(scheme.load(body), 1), updates[C0] + updates[C1], atol=1e-5
        )
    count = len(recorder.messages)
    total = scheme.encrypt(updates[C0] + updates[C1])
    assert wire.post("/global", Envelope(EXP, 0, C0, 190, 2), total) == 400  # not its parent
    assert wire.post("/global", Envelope(EXP, 0, AGG, 190, 2), total) == 202
    down = recorder.wait_for(count + 2)[count:]
    assert sorted(m[0] for m in down) == ["/global", "/global"]
    assert all(m[2] == total and m[1]["X-Hefl-Sender"] == S0 for m in down)
    assert wait_health(url, "finished")["state"] == "finished"
    rec = requests.get(f"{url}/log/{EXP}", timeout=5).json()["iteration"][0]
    forwarded = [m[2] for m in recorder.messages]  # every body the switch sent out (answers: empty)
    assert wire.back > 0  # the refusals' error bodies
    assert rec["byte_received"] == wire.out
    assert rec["byte_send"] == wire.back + sum(len(b) for b in forwarded)
    # and the begin message (empty) and its two relays, not in the tallies
    assert rec["messages_sent"] == len(forwarded) + 2
    assert rec["messages_received"] == wire.count + 1 == 13
    stranger = rec["links"]["?"]  # the update from 127.0.0.1:9, not a child of this switch
    assert stranger["received"] == len(sent[C1]) and stranger["sent"] > 0  # its refusal
    assert sum(link["received"] for link in rec["links"].values()) == rec["byte_received"]


def test_aggregator_sums_sends_down_and_closes_rounds(
    serve_node: Any, recorder: Recorder, tmp_path: Path
) -> None:
    raw = small(rounds=1)
    url, server = serve_node()
    endpoints = {C0: recorder.url, C1: recorder.url, S0: recorder.url, AGG: url}
    assert push(url, raw, AGG, endpoints).status_code == 200
    scheme = PlainScheme(size_of(raw))
    assert requests.post(f"{url}/start", timeout=5).status_code == 202
    assert requests.post(f"{url}/start", timeout=5).status_code == 400  # only once
    ((path, headers, body),) = recorder.wait_for(1)
    assert (path, headers["X-Hefl-Round"], body) == ("/begin", "0", b"")
    total = scheme.encrypt(np.linspace(-2, 2, scheme.size))  # 2 clients x clip 1
    # S0 has 2 clients
    assert post(url, "/update", Envelope(EXP, 0, S0, 190, 1), total).status_code == 400
    assert post(url, "/update", Envelope(EXP, 0, S0, 190, 2), total).status_code == 202
    ((path, headers, body),) = recorder.wait_for(2)[1:]
    assert (path, headers["X-Hefl-Samples"], headers["X-Hefl-Contributors"], body) == (
        "/global",
        "190",
        "2",
        total,
    )

    def metrics(sender: str, body: bytes) -> int:
        env = Envelope(EXP, 0, sender, 30, 1)
        return post(url, "/metrics", env, body, "application/json").status_code

    report = {"loss": 0.5, "accuracy": 0.9, "test_samples": 30, "byte_send": 1, "byte_received": 2}
    assert metrics(C0, b"{}") == 400
    assert metrics(C0, json.dumps(report).encode()) == 202
    report.update(accuracy=0.6, test_samples=10)
    assert metrics(C1, json.dumps(report).encode()) == 202
    status = wait_health(url, "finished")
    assert status["state"] == "finished"
    (row,) = requests.get(f"{url}/status", timeout=5).json()["rounds"]
    assert row["accuracy"] == pytest.approx((0.9 * 30 + 0.6 * 10) / 40)
    # its own log; the other nodes' logs are the controller's job
    own = json.loads((server.log_dir / EXP / "127.0.0.1_1.json").read_text())
    assert own["finished"] and own["iteration"][0]["accuracy"] == pytest.approx(row["accuracy"])


def test_client_trains_sends_and_applies_global(serve_node: Any, recorder: Recorder) -> None:
    raw = small(rounds=1)
    raw["training"]["save_models"] = True
    url, server = serve_node()
    endpoints = {C0: url, C1: recorder.url, S0: recorder.url, AGG: recorder.url}
    assert push(url, raw, C0, endpoints).status_code == 200
    scheme = PlainScheme(size_of(raw))
    assert post(url, "/begin", Envelope(EXP, 0, AGG), b"").status_code == 400  # not its parent
    assert post(url, "/begin", Envelope(EXP, 0, S0), b"").status_code == 202
    assert post(url, "/begin", Envelope(EXP, 0, S0), b"").status_code == 409
    ((path, headers, body),) = recorder.wait_for(1)
    samples = int(headers["X-Hefl-Samples"])
    assert (path, headers["X-Hefl-Sender"], headers["X-Hefl-Contributors"]) == ("/update", C0, "1")
    assert samples == 1438 // 2 and len(body) == 4 * scheme.size
    sent = scheme.decrypt(scheme.load(body), 1)  # delta x n_i x m / N: here n_i x 2 / N = 1
    other = np.full(scheme.size, 0.01)  # the other client's update
    total = scheme.encrypt(sent + other)
    # 1 of 2 clients
    assert post(url, "/global", Envelope(EXP, 0, S0, 1438, 1), total).status_code == 400
    assert post(url, "/global", Envelope(EXP, 0, S0, 1438, 2), total).status_code == 202
    ((path, headers, body2),) = recorder.wait_for(2)[1:]
    assert path == "/metrics" and 0 <= json.loads(body2)["accuracy"] <= 1
    assert wait_health(url, "finished")["state"] == "finished"
    stem = server.log_dir / EXP / C0.replace(":", "_")
    local, glob = np.load(f"{stem}.r0.local.npy"), np.load(f"{stem}.r0.global.npy")
    start = local - sent  # what the update was computed from (weight 1, nothing clipped)
    # the mean of the two clients' models
    np.testing.assert_allclose(glob, start + (sent + other) / 2, atol=1e-6)


def test_node_is_reconfigured_for_a_new_role_without_restart(
    serve_node: Any, recorder: Recorder
) -> None:
    url, server = serve_node()
    endpoints = {C0: recorder.url, C1: recorder.url, S0: url, AGG: recorder.url}
    assert push(url, small(), S0, endpoints).json()["role"] == "switch"
    old = server.node
    body = make_push(small(), AGG, "exp-2", {**endpoints, AGG: url, S0: recorder.url})
    health = requests.post(f"{url}/config", json=body, timeout=30).json()
    assert (health["role"], health["experiment"], health["state"]) == (
        "aggregator",
        "exp-2",
        "running",
    )
    # the aggregator blueprint now answers
    assert requests.get(f"{url}/status", timeout=5).status_code == 200
    gone = post(url, "/global", Envelope(EXP, 0, AGG, 1, 2), b"")  # the switch's endpoint is gone
    assert (gone.status_code, gone.json()) == (
        404,
        {"error": "POST /global: not an endpoint of this node (role: aggregator)"},
    )
    assert old is not None and server.node is not old


def test_bodies_too_large_cut_short_or_chunked(serve_node: Any, recorder: Recorder) -> None:
    """A round message's body over the node's limit gets 413 before it is read; one that ends
    before its declared length gets a 400 (or a closed connection); a chunked one is read as a
    whole. The switch keeps serving and adds what is right."""
    import socket
    from urllib.parse import urlsplit

    raw = small(rounds=1)
    url, server = serve_node()
    endpoints = {C0: recorder.url, C1: recorder.url, AGG: recorder.url, S0: url}
    assert push(url, raw, S0, endpoints).status_code == 200
    begin(url, recorder)
    scheme = PlainScheme(size_of(raw))
    limit = server.node.max_body
    env = Envelope(EXP, 0, C0, 100, 1)
    assert post(url, "/update", env, b"\0" * (limit + 1)).status_code == 413
    host, port = urlsplit(url).hostname, urlsplit(url).port
    head = "".join(f"{k}: {v}\r\n" for k, v in env.headers().items())
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(
            f"POST /update HTTP/1.1\r\nHost: x\r\nContent-Type: {BINARY}\r\n{head}"
            f"Content-Length: {scheme.max_payload_bytes}\r\nConnection: close\r\n\r\n".encode()
            + b"\0" * 100
        )
        sock.shutdown(socket.SHUT_WR)
        answer = sock.recv(4096)
    assert answer == b"" or answer.split()[1] == b"400"
    values = np.linspace(-1, 1, scheme.size)
    body = scheme.encrypt(values)
    chunked = requests.post(
        url + "/update",
        data=(body[i : i + 10_000] for i in range(0, len(body), 10_000)),
        headers={**env.headers(), "Content-Type": BINARY},
        timeout=10,
    )
    assert chunked.status_code == 202
    pieces = limit // (1 << 20) + 2  # a chunked body says no length: refused once past the limit
    try:
        over = requests.post(
            url + "/update",
            data=(b"\0" * (1 << 20) for _ in range(pieces)),
            headers={**Envelope(EXP, 0, C1, 90, 1).headers(), "Content-Type": BINARY},
            timeout=30,
        ).status_code
    except requests.ConnectionError:  # the node answered and closed while the rest was coming
        over = 413
    assert over == 413
    assert post(url, "/update", Envelope(EXP, 0, C1, 90, 1), body).status_code == 202
    ((_, _, total),) = recorder.wait_for(1)
    np.testing.assert_allclose(scheme.decrypt(scheme.load(total), 2), 2 * values, atol=1e-5)


def test_the_read_key_opens_only_its_own_runs_status(serve_node: Any, recorder: Recorder) -> None:
    """The live page's key is derived from the credential and the run's id: it reads this run's
    /status, and a key printed for another run (same credential) opens nothing."""
    from hefl.credential import read_key

    token = "t0ken-of-the-cluster"
    url, _ = serve_node(token)
    endpoints = {C0: recorder.url, C1: recorder.url, S0: recorder.url, AGG: url}
    assert push(url, small(rounds=1), AGG, endpoints, token).status_code == 200
    mine, earlier = read_key(token, EXP), read_key(token, "exp-0")
    assert mine != earlier and token not in (mine, earlier)
    assert requests.get(f"{url}/status?token={mine}", timeout=5).json()["experiment"] == EXP
    assert requests.get(f"{url}/status?token={earlier}", timeout=5).status_code == 401
    assert (
        requests.get(f"{url}/status", cookies={"hefl_token": earlier}, timeout=5).status_code == 401
    )
