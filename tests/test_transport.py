"""The one outbound client vs a real HTTP server in a thread: retries, timeouts, byte counting."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request

from hefl.config import NetworkConfig
from hefl.control.local import free_ports
from hefl.errors import PeerUnreachable, ProtocolError
from hefl.node.runlog import RunLog
from hefl.node.transport import Timeouts, TrafficMeter, Transport
from hefl.node.wire import TOKEN_HEADER, Envelope, Kind
from tests.helpers import Served

PEER, DEAD = "10.10.1.9", "10.10.1.10"
ENV = Envelope("exp-1", 1, "10.10.1.1", 10, 1)


class Peer:
    """A peer failing the first `failures` updates with 503, refusing globals, slow on metrics."""

    def __init__(self) -> None:
        self.failures, self.calls, self.tokens = 2, 0, []
        app = Flask("peer")

        @app.post(Kind.UPDATE.route.path)
        def update() -> Any:
            self.calls += 1
            self.tokens.append(request.headers.get(TOKEN_HEADER))
            if self.calls <= self.failures:
                return {"error": "busy"}, 503
            return "", 202

        @app.post(Kind.GLOBAL.route.path)
        def refuse() -> Any:
            self.calls += 1
            return {"error": "round 1 is outside 0..0"}, 400

        @app.post(Kind.BEGIN.route.path)
        def duplicate() -> Any:
            return {"error": "begin of round 0 already received"}, 409

        @app.post(Kind.METRICS.route.path)
        def slow() -> Any:
            self.calls += 1
            time.sleep(1.0)
            return "", 202

        @app.get(Kind.HEALTH.route.path)
        def health() -> Any:
            return {"state": "idle"}

        self.served = Served(app)


@pytest.fixture
def peer() -> Iterator[Peer]:
    p = Peer()
    yield p
    p.served.close()


def transport(
    peer: Peer, tmp_path: Path, retries: int = 3, read: float = 5.0
) -> tuple[Transport, RunLog]:
    runlog = RunLog(tmp_path / "n.json", ENV.sender, "client", ENV.experiment)
    meter = TrafficMeter(runlog, ENV.experiment, rounds=3, peers=[PEER, DEAD, ENV.sender])
    endpoints = {PEER: peer.served.url, DEAD: f"http://127.0.0.1:{free_ports(1)[0]}"}
    return Transport(endpoints, Timeouts(0.5, read, retries, backoff=0.01), "t0k", meter), runlog


def test_retries_a_busy_peer_and_counts_every_attempt(peer: Peer, tmp_path: Path) -> None:
    t, runlog = transport(peer, tmp_path)
    assert t.send(PEER, Kind.UPDATE, ENV, b"x" * 1000).status_code == 202
    rec = runlog.record(1).to_json()
    error = len(b'{"error":"busy"}\n')
    assert peer.calls == 3 and peer.tokens == ["t0k"] * 3
    assert (rec["byte_send"], rec["byte_send_up"], rec["messages_sent"]) == (3000, 3000, 3)
    assert rec["byte_received"] == rec["byte_received_up"] == 2 * error
    link = rec["links"][PEER]
    assert list(rec["links"]) == [PEER]
    assert (
        (link["sent"], link["received"])
        == (link["sent_up"], link["received_up"])
        == (
            3000,
            2 * error,
        )
    )
    # every attempt is a message of its own, in the order they went
    assert [(m["dir"], m["kind"], m["bytes"]) for m in rec["messages"]] == [
        ("sent", "update", 1000)
    ] * 3
    assert rec["messages"][0]["t"] < rec["messages"][1]["t"] < rec["messages"][2]["t"]
    assert rec["byte_send_down"] == rec["byte_send_control"] == 0


def test_gives_up_after_the_retries_naming_the_peer(peer: Peer, tmp_path: Path) -> None:
    peer.failures = 10
    t, runlog = transport(peer, tmp_path, retries=2)
    with pytest.raises(
        PeerUnreachable, match=rf"cannot reach {PEER} .* after 3 attempts: 503 busy"
    ) as failed:
        t.send(PEER, Kind.UPDATE, ENV, b"abc")
    assert peer.calls == 3 and runlog.record(1).to_json()["messages_sent"] == 3
    # it answered, with errors: a failure line says so, not that it could not be reached
    assert (
        failed.value.peer == PEER and failed.value.headline == f"{PEER} answers with errors (503)"
    )


def test_a_refusal_is_not_retried_and_a_duplicate_counts_as_delivered(
    peer: Peer, tmp_path: Path
) -> None:
    t, runlog = transport(peer, tmp_path)
    with pytest.raises(
        ProtocolError, match=rf"^{PEER} refused POST /global: 400 round 1 is outside 0..0$"
    ):
        t.send(PEER, Kind.GLOBAL, ENV, b"abc")
    assert peer.calls == 1
    assert t.send(PEER, Kind.BEGIN, ENV).status_code == 409
    rec = runlog.record(1).to_json()
    assert (
        rec["byte_send_down"] == 3 and rec["byte_received_down"] > 0 and rec["messages_sent"] == 2
    )


def test_no_answer_within_the_read_timeout(peer: Peer, tmp_path: Path) -> None:
    t, runlog = transport(peer, tmp_path, retries=1, read=0.3)
    started = time.monotonic()
    with pytest.raises(PeerUnreachable, match=r"after 2 attempts: no answer within 0.3s"):
        t.send(PEER, Kind.METRICS, ENV, b"{}")
    assert time.monotonic() - started < 2.0 and peer.calls == 2
    rec = runlog.record(1).to_json()  # the body went out each time; nothing came back
    assert (rec["byte_send_control"], rec["byte_received"]) == (4, 0)


def test_a_probe_does_not_ask_a_silent_peer_twice(peer: Peer, tmp_path: Path) -> None:
    """retry_silent False (the controller's /health probe): a peer that took the request and
    said nothing is not asked again, however many retries a failed connection gets."""
    t, _ = transport(peer, tmp_path, retries=3, read=0.3)
    t.timeouts = replace(t.timeouts, retry_silent=False)
    with pytest.raises(PeerUnreachable, match=r"after 1 attempt: no answer within 0.3s") as got:
        t.send(PEER, Kind.METRICS, ENV, b"{}")
    assert peer.calls == 1 and got.value.silent
    assert got.value.headline == f"{PEER} does not answer"
    with pytest.raises(PeerUnreachable, match=r"after 4 attempts: connection refused") as gone:
        t.send(DEAD, Kind.METRICS, ENV, b"{}")  # a refused connection is still tried again
    assert gone.value.headline == f"{DEAD} is unreachable"


def test_unreachable_peer_costs_no_bytes(peer: Peer, tmp_path: Path) -> None:
    t, runlog = transport(peer, tmp_path, retries=1)
    with pytest.raises(PeerUnreachable, match=rf"cannot reach {DEAD} .*: connection refused"):
        t.send(DEAD, Kind.UPDATE, ENV, b"abc")
    with pytest.raises(PeerUnreachable, match="'10.10.1.99' is not a node of this experiment"):
        t.send("10.10.1.99", Kind.UPDATE, ENV, b"abc")
    assert runlog.snapshot()["iteration"] == []


def test_control_calls_and_other_experiments_are_not_metered(peer: Peer, tmp_path: Path) -> None:
    t, runlog = transport(peer, tmp_path)
    assert t.call(PEER, Kind.HEALTH).json() == {"state": "idle"}
    peer.failures = 0
    t.send(PEER, Kind.UPDATE, Envelope("exp-0", 1, ENV.sender, 10, 1), b"abc")
    t.send(PEER, Kind.UPDATE, Envelope(ENV.experiment, 7, ENV.sender, 10, 1), b"abc")  # no round 7
    assert runlog.snapshot()["iteration"] == []


def test_timeouts_come_from_the_network_config() -> None:
    net = NetworkConfig(connect_timeout_s=1.5, read_timeout_s=9.0, retries=5)
    assert Timeouts.of(net) == Timeouts(connect=1.5, read=9.0, retries=5)


def test_a_kind_goes_through_the_call_it_belongs_to(peer: Peer, tmp_path: Path) -> None:
    t, _ = transport(peer, tmp_path)
    with pytest.raises(ValueError, match="health is not a round message"):
        t.send(PEER, Kind.HEALTH, ENV)
    with pytest.raises(ValueError, match="update is a round message"):
        t.call(PEER, Kind.UPDATE, b"abc")
    assert peer.calls == 0
