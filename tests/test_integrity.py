"""Attacks on running node processes over HTTP on 127.0.0.1: with the credential (an insider) and
without it (a stranger). Each test starts real `main.py` node processes and an `agg` run, or
attacks the nodes of one finished run (`finished_cluster`, shared: this module takes one xdist
worker, tests/conftest.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from hefl.config import parse_config
from hefl.crypto.plain import PlainScheme
from hefl.errors import ConfigError
from hefl.modelspec import param_count
from hefl.node.wire import BINARY, JSON, TOKEN_HEADER, Envelope
from tests.helpers import (
    AGG,
    C0,
    C1,
    EXP,
    ROOT,
    S0,
    TOKEN,
    Cluster,
    addressed,
    post,
    push,
    run_local,
    running_cluster,
    small,
    tree_config,
    wait_health,
)

PY = sys.executable


def wait_running(cluster: Cluster, name: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        health = cluster.health(name)
        if health.get("state") == "running" or time.monotonic() > deadline:
            return health
        time.sleep(0.05)


def insider_post(
    url: str, path: str, env: Envelope, body: bytes, content_type: str = BINARY
) -> requests.Response:
    headers = {**env.headers(), "Content-Type": content_type, TOKEN_HEADER: TOKEN}
    return requests.post(url + path, data=body, headers=headers, timeout=30)


def test_messages_for_rounds_not_open_are_refused_with_422(cluster: Cluster) -> None:
    """An insider posts, early, an update for the last round to the switch, a metrics report for it
    to the aggregator and a global result of it to a client: each is refused with 422 and logged
    with sender and round, and the run's real messages of that round are then taken (not 409)."""
    agg = cluster.run()
    try:
        exp = wait_running(cluster, "sw")["experiment"]
        wait_running(cluster, "c0")
        wait_running(cluster, "agg")  # configured too (a loaded machine pushes to it later)
        size = param_count(parse_config(cluster.raw).model, parse_config(cluster.raw).dataset)
        fake = PlainScheme(size).encrypt(np.full(size, 0.5))
        c0, sw = cluster.ids["c0"], cluster.ids["sw"]
        last = 7
        update = insider_post(cluster.url("sw"), "/update", Envelope(exp, last, c0, 10, 1), fake)
        metrics = json.dumps(
            {"loss": 0.0, "accuracy": 1.0, "test_samples": 10, "byte_send": 1, "byte_received": 1}
        ).encode()
        report = insider_post(
            cluster.url("agg"), "/metrics", Envelope(exp, last, c0, 10, 1), metrics, JSON
        )
        down = insider_post(cluster.url("c0"), "/global", Envelope(exp, last, sw, 20, 2), fake)
        relay = insider_post(
            cluster.url("sw"), "/global", Envelope(exp, last, cluster.ids["agg"], 20, 2), fake
        )
        codes = (update.status_code, report.status_code, down.status_code, relay.status_code)
        assert codes == (422, 422, 422, 422), (update.text, report.text, down.text, relay.text)
        assert "round 8" in update.json()["error"] and "not open" in update.json()["error"]
        out, err = agg.communicate(timeout=240)
    finally:
        agg.kill()
        agg.wait()  # reaped: a failed test leaves no running process to warn about later
    assert agg.returncode == 0, err[-2000:]
    rows = json.loads(next((cluster.tmp / "agg").glob("*/rounds.json")).read_text())
    assert len(rows) == 8 and rows[-1]["accuracy"] < 1.0
    for name, sender in (("sw", c0), ("agg", c0), ("c0", sw)):
        line = next(
            x for x in cluster.stderr(name).splitlines() if "refused POST" in x and "round 8" in x
        )
        assert f"from {sender}:" in line and "is not open here" in line, line


class Slowloris:
    """Connections without the credential, reopened whenever the node drops them, that send one
    byte every `every` seconds: of a request head ("head"), or of the body of a request whose
    head came whole ("body": the node refuses it from its head and must not wait for the body)."""

    def __init__(
        self, addrs: list[str], count: int, every: float = 2.0, mode: str = "head"
    ) -> None:
        self.addrs, self.every, self.mode = addrs, every, mode
        self.stop = threading.Event()
        self.opened = 0
        self.threads = [threading.Thread(target=self._hold, args=(i,)) for i in range(count)]
        for t in self.threads:
            t.start()

    def _hold(self, i: int) -> None:
        host, port = self.addrs[i % len(self.addrs)].split(":")
        head = b"POST /update HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 10_000
        whole = b"POST /config HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
        while not self.stop.is_set():
            try:
                with socket.create_connection((host, int(port)), timeout=5) as sock:
                    self.opened += 1
                    if self.mode == "body":
                        sock.sendall(whole)
                        head = b"\0" * 1_000_000
                    for byte in head:
                        sock.sendall(bytes([byte]))
                        if self.stop.wait(self.every):
                            return
            except OSError:
                self.stop.wait(0.2)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)


def timed_run(cluster: Cluster) -> float:
    started = time.monotonic()
    agg = cluster.run()
    try:
        out, err = agg.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        agg.kill()
        agg.wait()  # reaped: a failed test leaves no running process to warn about later
        raise AssertionError("the run did not finish within 180 s") from None
    assert agg.returncode == 0, err[-2000:]
    return time.monotonic() - started


@pytest.fixture(scope="module")
def finished_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A `cluster` after a run of one round, its nodes' network.read_timeout_s 2 s: the tests of a
    finished node's refusals share it (none changes what another reads). A first run, with the
    default timeouts, loads torch in the clients: a loaded machine's config push then fits in
    the 2 s too."""
    with running_cluster(tmp_path_factory.mktemp("finished")) as made:
        made.raw["aggregator"]["iteration"] = 1
        timed_run(made)
        made.raw["network"]["read_timeout_s"] = 2
        timed_run(made)
        yield made


def test_slow_connections_do_not_stall_a_node(cluster: Cluster) -> None:
    """32 connections trickling a head, then 32 trickling a body, into every node (8 each, no
    credential): each node still answers at once, and a run takes about as long as without
    them."""
    cluster.raw["aggregator"]["iteration"] = 3
    alone = timed_run(cluster)
    for mode in ("head", "body"):
        slow = Slowloris(list(cluster.ids.values()), 32, mode=mode)
        try:
            time.sleep(3)  # every slow connection is open and has sent a byte or two
            for name in cluster.ids:
                t0 = time.monotonic()
                assert cluster.health(name)["state"] == "finished"
                assert time.monotonic() - t0 < 2.0, (
                    f"{mode}: {name} answered /health after {time.monotonic() - t0:.1f}s"
                )
            loaded = timed_run(cluster)
        finally:
            slow.close()
        assert slow.opened >= 32, mode
        assert loaded < 1.5 * alone + 5, f"{mode}: {loaded:.1f}s loaded, {alone:.1f}s without"


def test_a_slow_body_is_cut_at_the_read_timeout(finished_cluster: Cluster) -> None:
    """An insider (with the credential) that trickles the body of a refused update frees its
    request thread once the node's network.read_timeout_s has passed: the node reads what is left
    of a refused body for that long at most (then it answers and shuts the connection)."""
    cluster = finished_cluster
    exp = cluster.health("sw")["experiment"]
    host, port = cluster.ids["sw"].split(":")
    headers = {**Envelope(exp, 0, cluster.ids["c0"], 10, 1).headers(), TOKEN_HEADER: TOKEN}
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(
            f"POST /update HTTP/1.1\r\nHost: x\r\nContent-Type: {BINARY}\r\n{head}"
            f"Content-Length: 1000\r\n\r\n".encode()
        )
        started = time.monotonic()
        answer = b""
        sock.settimeout(0.5)
        while time.monotonic() - started < 15:
            try:
                sock.sendall(b"\0")
                answer = sock.recv(4096)
                break  # an answer, or the node closed the connection
            except TimeoutError:
                continue
            except OSError:
                break
        took = time.monotonic() - started
    assert 1.5 < took < 6, f"cut after {took:.1f}s {answer[:300]!r}"
    assert answer == b"" or answer.split()[1] in (b"409", b"422"), answer[:200]
    assert cluster.health("sw")["state"] == "finished"
    # a chunked body whose chunk size line never ends: 400 and one line, not a 500 and a trace
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(
            f"POST /update HTTP/1.1\r\nHost: x\r\nContent-Type: {BINARY}\r\n{head}"
            f"Transfer-Encoding: chunked\r\n\r\n1;".encode()
            + b"x" * 200_000
            + b"\r\n"
        )
        answer = sock.recv(4096)
    assert answer.split()[1] in (b"400", b"409", b"422"), answer[:300]
    assert "Traceback" not in cluster.stderr("sw")


@pytest.mark.process
@pytest.mark.parametrize("where", ["aggregator.ip", "others"])
def test_addresses_that_name_paths_are_refused_before_anything_is_written(
    tmp_path: Path, where: str
) -> None:
    """`aggregator.ip: "../../x"` (the aggregator left out of `others`), or a node at '..': one
    line naming the field, exit 1, and no file written anywhere."""
    raw, ids = addressed([5001, 5002, 5003, 5004], rounds=1)
    if where == "aggregator.ip":
        raw["aggregator"]["ip"] = "../../x"
        raw["others"][ids["sw"]]["send"] = "../../x"
    else:
        raw["others"]["..:5005"] = raw["others"].pop(ids["c1"])
        raw["others"][ids["sw"]]["receive"] = [ids["c0"], "..:5005"]
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (work / "config.json").write_text(json.dumps(raw))
    before = sorted(p for p in tmp_path.rglob("*"))
    proc = run_local(work, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert "is not an address of the form host[:port]" in line, line
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_a_config_push_with_a_path_for_an_address_is_refused(cluster: Cluster) -> None:
    """The same through a node's /config: 400, one line, and the node stays as it was."""
    from hefl.node.push import make_push

    raw = json.loads(json.dumps(cluster.raw))
    raw["aggregator"]["ip"] = "../../x"
    raw["others"][cluster.ids["sw"]]["send"] = "../../x"
    body = {"node": cluster.ids["c0"], "experiment": "e-1", "config": raw, "endpoints": {}}
    resp = requests.post(
        f"{cluster.url('c0')}/config", json=body, headers={TOKEN_HEADER: TOKEN}, timeout=30
    )
    assert resp.status_code == 400 and "aggregator.ip: '../../x' is not an address" in resp.text
    assert cluster.health("c0")["state"] == "idle"
    assert not list(cluster.tmp.glob("**/x.json")) and not (cluster.tmp.parent / "x.json").exists()
    good = make_push(cluster.raw, cluster.ids["c0"], "e-1", {})
    good["endpoints"] = {n: "https://" + n for n in cluster.ids.values()}
    resp = requests.post(
        f"{cluster.url('c0')}/config", json=good, headers={TOKEN_HEADER: TOKEN}, timeout=30
    )
    assert resp.status_code == 400 and "is not of the form http://host[:port]" in resp.text


def test_a_finished_experiment_is_never_pushed_again(finished_cluster: Cluster) -> None:
    """test.py with a finished experiment's id: refused with 409, exit 1, and the node's log of
    it is left as it was, as that node or as another one."""
    cluster = finished_cluster
    exp = cluster.health("sw")["experiment"]
    (log,) = (cluster.tmp / "sw" / exp).glob("*.json")
    before = log.read_bytes()
    config = cluster.tmp / "config.json"
    env = {**os.environ, "HEFL_TOKEN": TOKEN}
    for role in ("sw", "c1"):  # the node it was, and another node of that experiment
        push = subprocess.run(
            [
                PY,
                str(ROOT / "test.py"),
                cluster.ids["sw"],
                "--as",
                cluster.ids[role],
                "--config",
                str(config),
                "--experiment",
                exp,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=ROOT,
        )
        assert push.returncode == 1, (push.stdout, push.stderr)
        assert push.stderr.startswith("refused: 409 ") and exp in push.stderr, push.stderr
    assert log.read_bytes() == before and len(list((cluster.tmp / "sw" / exp).iterdir())) == 1


def test_health_tells_strangers_only_state_and_role(finished_cluster: Cluster) -> None:
    cluster = finished_cluster
    stranger = requests.get(f"{cluster.url('sw')}/health", timeout=10).json()
    assert stranger == {"state": "finished", "role": "switch"}
    insider = cluster.health("sw")
    assert insider["experiment"] and insider["credential"] is True and "error" in insider


def test_a_push_answered_409_reads_the_nodes_state(
    serve_node: Any, key_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """A push retried after the node took it gets 409: the controller reads the key id from the
    node's /health (with the credential), so the key check still compares real ids; a 409 for an
    experiment the node has a log of is a refusal, named."""
    from hefl.control.experiment import Controller

    raw = tree_config(
        clients=2,
        leaves=1,
        spine=False,
        rounds=1,
        encryption={"scheme": "ckks", "key_dir": str(key_dirs["ckks"])},
    )
    cfg = parse_config(raw)
    served = {node: serve_node(token=TOKEN) for node in cfg.nodes}
    endpoints = {node: url for node, (url, _) in served.items()}

    def controller(experiment: str) -> tuple[Controller, list[str]]:
        lines: list[str] = []
        made = Controller(raw, cfg, endpoints, experiment, tmp_path, TOKEN, out=lines.append)
        return made, lines

    first, _ = controller("e-1")
    first.push_configs()
    ids = {first.key_ids[c] for c in cfg.tree.clients()}
    assert len(ids) == 1 and "" not in ids
    again, _ = controller("e-1")  # as a retry whose first try went through
    again.push_configs()
    assert again.key_ids == first.key_ids
    controller("e-2")[0].push_configs()  # the nodes move on to another experiment
    with pytest.raises(ConfigError, match="refused its config: 409 experiment 'e-1' already has"):
        controller("e-1")[0].push_configs()


def test_the_controller_warns_of_nodes_without_a_credential(
    serve_node: Any, tmp_path: Path
) -> None:
    from hefl.control.experiment import Controller

    raw = tree_config(clients=2, leaves=1, spine=False, rounds=1)
    cfg = parse_config(raw)
    open_node = "127.0.0.1:100"
    served = {node: serve_node(token="" if node == open_node else TOKEN) for node in cfg.nodes}
    lines: list[str] = []
    Controller(
        raw, cfg, {n: u for n, (u, _) in served.items()}, "e-1", tmp_path, TOKEN, out=lines.append
    ).push_configs()
    (warning,) = [x for x in lines if x.startswith("warning:")]
    assert "1 node(s) run without a credential" in warning and warning.endswith(open_node)


def first_answer_in_window(url: str, env: Envelope, body: bytes, timeout: float = 60) -> Any:
    """POST until the round is open at the node (anything but 422); that answer."""
    deadline = time.monotonic() + timeout
    while True:
        resp = insider_post(url, "/update", env, body)
        if resp.status_code != 422 or time.monotonic() > deadline:
            return resp
        time.sleep(0.01)


def test_adders_refuse_values_and_sample_counts_a_sender_cannot_have(cluster: Cluster) -> None:
    """Plaintext with NaN or values beyond the clip range, and a sample count other than the one
    the client declared, are refused (400) by the switch as soon as the round opens; the real
    update then goes in and the run finishes with exit 0."""
    cluster.raw["aggregator"]["iteration"] = 1
    cluster.raw["training"]["epochs"] = 40  # the real updates come seconds after round 1 opens
    agg = cluster.run()
    try:
        exp = wait_running(cluster, "sw")["experiment"]
        size = param_count(parse_config(cluster.raw).model, parse_config(cluster.raw).dataset)
        scheme = PlainScheme(size)
        c0 = cluster.ids["c0"]
        declared = cluster.health("c0")["samples"]
        values = np.full(size, 0.01)
        values[3] = np.nan
        nan = first_answer_in_window(
            cluster.url("sw"), Envelope(exp, 0, c0, declared, 1), scheme.encrypt(values)
        )
        values[3] = 1.5
        big = insider_post(
            cluster.url("sw"), "/update", Envelope(exp, 0, c0, declared, 1), scheme.encrypt(values)
        )
        values[3] = 0.0
        many = insider_post(
            cluster.url("sw"), "/update", Envelope(exp, 0, c0, 10**8, 1), scheme.encrypt(values)
        )
        out, err = agg.communicate(timeout=240)
    finally:
        agg.kill()
        agg.wait()  # reaped: a failed test leaves no running process to warn about later
    assert (nan.status_code, big.status_code, many.status_code) == (400, 400, 400)
    assert "non-finite" in nan.text and "magnitude 1.5, beyond 1 client(s) x clip 1" in big.text
    assert f"says its update holds 100000000 samples; its clients declared {declared}" in many.text
    assert agg.returncode == 0, err[-2000:]


def test_a_client_refuses_a_global_result_beyond_the_clip_range(
    serve_node: Any, recorder: Any
) -> None:
    """A decrypted sum beyond contributors x clip stops the client with one line naming it."""

    raw = small(rounds=1)
    url, server = serve_node()
    endpoints = {C0: url, C1: recorder.url, S0: recorder.url, AGG: recorder.url}
    assert push(url, raw, C0, endpoints).status_code == 200
    assert post(url, "/begin", Envelope(EXP, 0, S0), b"").status_code == 202
    recorder.wait_for(1)  # its update
    size = param_count(parse_config(raw).model, parse_config(raw).dataset)
    total = PlainScheme(size).encrypt(np.full(size, 3.0))  # 2 clients x clip 1 at most
    assert post(url, "/global", Envelope(EXP, 0, S0, 1438, 2), total).status_code == 202
    health = wait_health(url, "failed")
    assert "global result of round 1 decrypts to a value of magnitude 3" in health["error"]
    assert "beyond 2 client(s) x clip 1" in health["error"]
