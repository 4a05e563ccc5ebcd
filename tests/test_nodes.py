"""Round state driven directly: a switch and an aggregator with a fake transport, inline worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hefl.config import ExperimentConfig, parse_config
from hefl.crypto.plain import PlainScheme
from hefl.errors import DuplicateMessage, OutOfWindow, ProtocolError
from hefl.node.nodes.aggregator import AggregatorNode
from hefl.node.nodes.switch import SwitchNode
from hefl.node.runlog import RunLog
from hefl.node.wire import Envelope, Kind
from tests.helpers import AGG, C0, C1, EXP, S0, FakeTransport, InlineWorker, make, tree_config


@pytest.fixture
def cfg() -> ExperimentConfig:
    return parse_config(tree_config(clients=2, leaves=1, spine=False, rounds=2))


def test_switch_adds_its_children_and_relays_the_global_result(
    cfg: ExperimentConfig, tmp_path: Path
) -> None:
    switch, transport = make(SwitchNode, S0, cfg, tmp_path)
    scheme = switch.scheme
    a, b = np.full(scheme.size, 0.25), np.linspace(-1, 1, scheme.size)
    with pytest.raises(OutOfWindow, match="no round is open"):  # before begin
        switch.on_update(Envelope(EXP, 0, C0, 100, 1), scheme.encrypt(a))
    switch.on_begin(Envelope(EXP, 0, AGG), b"")
    assert [(p, k) for p, k, _, _ in transport.sent] == [(C0, Kind.BEGIN), (C1, Kind.BEGIN)]
    transport.sent.clear()
    with pytest.raises(OutOfWindow, match=r"round 2 from '127.0.0.1:100' is not open"):
        switch.on_update(Envelope(EXP, 1, C0, 100, 1), scheme.encrypt(a))
    switch.on_update(Envelope(EXP, 0, C0, 100, 1), scheme.encrypt(a))
    assert transport.sent == []  # waits for its other child
    with pytest.raises(DuplicateMessage):
        switch.on_update(Envelope(EXP, 0, C0, 100, 1), scheme.encrypt(a))
    with pytest.raises(ProtocolError, match="claims 2 contributors"):
        switch.on_update(Envelope(EXP, 0, C1, 90, 2), scheme.encrypt(b))
    # the refusal above did not take it
    switch.on_update(Envelope(EXP, 0, C1, 90, 1), scheme.encrypt(b))
    ((peer, kind, env, body),) = transport.sent
    assert (peer, kind, env) == (AGG, Kind.UPDATE, Envelope(EXP, 0, S0, 190, 2, members=0b11))
    np.testing.assert_allclose(scheme.decrypt(scheme.load(body), 2), a + b, atol=1e-6)
    with pytest.raises(ProtocolError, match="not this node's parent"):
        switch.on_global(Envelope(EXP, 0, C0, 190, 2), body)
    with pytest.raises(OutOfWindow, match="the last update this switch sent up: round 1"):
        switch.on_global(Envelope(EXP, 1, AGG, 190, 2), body)
    with pytest.raises(ProtocolError, match="begin is for round 1, got round 2"):
        switch.on_begin(Envelope(EXP, 1, AGG), b"")
    switch.on_global(Envelope(EXP, 0, AGG, 190, 2), body)
    down = transport.sent[1:]
    assert sorted((p, k, e.sender, b2 == body) for p, k, e, b2 in down) == [
        (C0, Kind.GLOBAL, S0, True),
        (C1, Kind.GLOBAL, S0, True),
    ]
    rec = switch.runlog.record(0).to_json()
    assert rec["end_time"] is not None and {"load", "serialize", "send", "wait"} <= set(
        rec["phases"]
    )
    assert not switch.runlog.finished  # two rounds; the first ended
    with pytest.raises(DuplicateMessage):
        switch.on_global(Envelope(EXP, 0, AGG, 190, 2), body)
    # the global result of round 1 opened round 2 (and closed round 1)
    switch.on_update(Envelope(EXP, 1, C0, 100, 1), scheme.encrypt(a))


def test_dumb_switch_forwards_each_child_unchanged(tmp_path: Path) -> None:
    cfg = parse_config(tree_config(clients=2, leaves=1, spine=False, dumb=(0,), rounds=1))
    switch, transport = make(SwitchNode, S0, cfg, tmp_path)
    switch.on_begin(Envelope(EXP, 0, AGG), b"")
    transport.sent.clear()
    bodies = {
        c: switch.scheme.encrypt(np.full(switch.scheme.size, i + 1.0))
        for i, c in enumerate((C0, C1))
    }
    for c, body in bodies.items():
        switch.on_update(Envelope(EXP, 0, c, 10, 1), body)
    assert [(p, k, e.sender, b) for p, k, e, b in transport.sent] == [
        (AGG, Kind.UPDATE, c, body) for c, body in bodies.items()
    ]


def test_aggregator_sends_begin_then_global_and_closes_rounds(
    cfg: ExperimentConfig, tmp_path: Path
) -> None:
    agg, transport = make(AggregatorNode, AGG, cfg, tmp_path)
    agg.begin_experiment()
    with pytest.raises(ProtocolError, match="already started"):
        agg.begin_experiment()
    assert [(p, k, e.round, b) for p, k, e, b in transport.sent] == [(S0, Kind.BEGIN, 0, b"")]
    total = agg.scheme.encrypt(np.ones(agg.scheme.size))
    with pytest.raises(OutOfWindow, match="round 2 from '127.0.0.1:10' is not open"):
        agg.on_update(Envelope(EXP, 1, S0, 190, 2), total)
    metrics = (
        b'{"loss": 0.5, "accuracy": 1.0, "test_samples": 5, "byte_send": 1, "byte_received": 2}'
    )
    with pytest.raises(OutOfWindow, match="no round is open"):  # no global result sent yet
        agg.on_metrics(Envelope(EXP, 0, C0, 5, 1), metrics)
    agg.on_update(Envelope(EXP, 0, S0, 190, 2), total)
    assert transport.sent[-1][:2] == (S0, Kind.GLOBAL) and transport.sent[-1][2].contributors == 2
    with pytest.raises(
        OutOfWindow, match=r"round 2 from '127.0.0.1:100' is not open here \(open: round 1\)"
    ):
        agg.on_metrics(Envelope(EXP, 1, C0, 5, 1), metrics)
    for client, acc, n in ((C0, 0.9, 30), (C1, 0.6, 10)):
        body = (
            f'{{"loss": 0.5, "accuracy": {acc}, "test_samples": {n}, '
            f'"byte_send": 1, "byte_received": 2}}'
        )
        agg.on_metrics(Envelope(EXP, 0, client, n, 1), body.encode())
    (row,) = agg.status()["rounds"]
    assert row["accuracy"] == pytest.approx((0.9 * 30 + 0.6 * 10) / 40)
    assert row["client_byte_send"] == 2 and agg.status()["state"] == "running"


def test_a_failing_job_is_reported_to_the_aggregator(cfg: ExperimentConfig, tmp_path: Path) -> None:
    switch, transport = make(SwitchNode, S0, cfg, tmp_path)
    switch.submit(lambda: 1 / 0)
    ((peer, kind, env, body),) = transport.sent
    assert (peer, kind, env.sender) == (AGG, Kind.FAIL, S0)
    assert (
        body.decode().startswith(f"{S0} (switch), round 1: ")
        and switch.status()["state"] == "failed"
    )


def test_an_adder_holds_one_running_total_not_its_childrens_updates(tmp_path: Path) -> None:
    cfg = parse_config(tree_config(clients=3, leaves=1, spine=False, rounds=1))
    switch, transport = make(SwitchNode, S0, cfg, tmp_path)
    switch.buffer.open(0)
    scheme = switch.scheme
    values = [np.linspace(-1, 1, scheme.size) * (i + 1) / 7 for i in range(3)]
    for i, v in enumerate(values[:2]):
        switch.on_update(Envelope(EXP, 0, f"127.0.0.1:{100 + i}", 10, 1), scheme.encrypt(v))
    inbox = switch.buffer._inboxes[0]
    assert inbox.payloads == {} and sorted(inbox.envelopes) == [C0, C1]
    # the two arrived updates are already added, in float64
    assert inbox.total.dtype == np.float64
    np.testing.assert_allclose(inbox.total, (values[0] + values[1]).astype(np.float32), rtol=1e-6)
    switch.on_update(Envelope(EXP, 0, "127.0.0.1:102", 10, 1), scheme.encrypt(values[2]))
    ((_, kind, env, body),) = transport.sent
    assert (kind, env.contributors) == (Kind.UPDATE, 3)
    assert set(switch.runlog.record(0).to_json()["phases"]) >= {"load", "serialize", "send"}
    assert 0 not in switch.buffer._inboxes  # released: nothing of the round is held any more


def test_plaintext_sums_do_not_depend_on_arrival_order() -> None:
    """Float64 running totals of float32 updates give the same bytes in every arrival order, where
    float32 running totals would not (checked on the same data, so the test can tell them apart)."""
    import itertools

    from hefl.crypto import add_all

    scheme = PlainScheme(20_000)
    rng = np.random.default_rng(11)
    updates = [scheme.load(scheme.encrypt(rng.normal(0, 0.01, 20_000) * 10**i)) for i in range(4)]
    sums = {add_all(scheme, list(order)) for order in itertools.permutations(updates)}
    assert len(sums) == 1
    float32 = set()
    for order in itertools.permutations(updates):
        total = np.zeros(20_000, dtype=np.float32)
        for u in order:
            total += u
        float32.add(total.tobytes())
    assert len(float32) > 1


class SlowTransport(FakeTransport):
    """A transport whose sends to one peer take `delay` seconds; records when each send began."""

    def __init__(self, slow: str, delay: float) -> None:
        super().__init__()
        self.slow, self.delay = slow, delay
        self.began: dict[str, float] = {}

    def send(self, peer: str, kind: Kind, env: Envelope, body: bytes = b"") -> None:
        import time

        self.began[peer] = time.monotonic()
        if peer == self.slow:
            time.sleep(self.delay)
        super().send(peer, kind, env, body)


def test_a_slow_child_does_not_delay_its_siblings(tmp_path: Path) -> None:
    import time

    cfg = parse_config(tree_config(clients=3, leaves=1, spine=False, rounds=1))
    switch, _ = make(SwitchNode, S0, cfg, tmp_path)
    slow = SlowTransport(C0, 3.0)
    switch.transport = slow
    t0 = time.monotonic()
    switch.on_begin(Envelope(EXP, 0, AGG), b"")
    assert sorted(slow.began) == [C0, C1, "127.0.0.1:102"]
    # every sibling's send began at once, not after the slow child's 3 s (in sequence: >= 3 s)
    assert max(slow.began[c] for c in (C1, "127.0.0.1:102")) - t0 < 1.5
    assert time.monotonic() - t0 >= 3.0  # the phase still waits for the slow child
    assert switch.runlog.record(0).to_json()["phases"]["send"] >= 3.0


def test_a_child_that_fails_fails_the_fan_out_after_the_others_got_it(tmp_path: Path) -> None:
    cfg = parse_config(tree_config(clients=3, leaves=1, spine=False, rounds=1))
    switch, transport = make(SwitchNode, S0, cfg, tmp_path)

    def send(peer: str, kind: Kind, env: Envelope, body: bytes = b"") -> None:
        if peer == C0:
            raise ProtocolError(f"{peer} refused")
        transport.sent.append((peer, kind, env, body))

    switch.transport.send = send  # type: ignore[method-assign]
    switch.on_begin(Envelope(EXP, 0, AGG), b"")
    assert sorted(p for p, *_ in transport.sent if p != AGG) == [C1, "127.0.0.1:102"]
    assert switch.status()["state"] == "failed" and f"{C0} refused" in switch.error


def test_the_precomputer_works_only_while_the_client_waits(key_dirs: dict[str, Path]) -> None:
    """It makes encryptions of zero after `resume(w)` until `pause(w)`; a resume of a wait whose
    end was already seen (the global result overtook it) does nothing; `close` ends the thread."""
    import time

    from hefl.crypto import HeParams, load_secret, make_scheme
    from hefl.node.nodes.client import Precomputer

    enc = HeParams(scheme="bfv")
    scheme = make_scheme(enc, 5 * 8192, load_secret(enc, key_dirs["bfv"]), seed=1)
    pre = Precomputer(scheme)
    try:
        pre.resume(-1)
        deadline = time.monotonic() + 60
        while len(scheme._zeros) < 5 and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.01)
        assert len(scheme._zeros) == 5  # type: ignore[attr-defined]
        wall, cpu = pre.take_spent()
        assert wall > 0 and cpu > 0 and pre.take_spent() == (0.0, 0.0)
        scheme.encrypt(np.zeros(5 * 8192))
        assert scheme.precomputed == 5
        pre.pause(0)  # wait 0 ended before it was resumed
        pre.resume(0)
        time.sleep(0.3)
        assert scheme._zeros == []  # type: ignore[attr-defined]
        pre.resume(1)
        while not scheme._zeros and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.01)
        pre.pause(1)
        time.sleep(0.2)
        made = len(scheme._zeros)  # type: ignore[attr-defined]
        time.sleep(0.3)
        assert 1 <= made == len(scheme._zeros)  # type: ignore[attr-defined]
    finally:
        pre.close()
    assert not pre._thread.is_alive()


def test_a_child_that_restarted_is_named_first_in_the_failure(
    cfg: ExperimentConfig, tmp_path: Path, serve_node: Any
) -> None:
    """A child process that restarted answers with no experiment (a 404 from a node with no
    role): over real HTTP, the switch relaying to it fails with a line that names the child and
    what happened to it, then where it was seen, not `relay: ... refused ...`."""
    from hefl.node.transport import Timeouts, Transport

    url, _ = serve_node()  # a node process that was never configured: as one just restarted
    switch, fake = make(SwitchNode, S0, cfg, tmp_path)
    real = Transport({C0: url, C1: url}, Timeouts(retries=0))
    switch.transport = real
    switch.on_begin(Envelope(EXP, 0, AGG), b"")
    real.close()
    assert switch.error.startswith(
        f"{C0} answers as an unconfigured node: it restarted and lost its experiment ({S0} "
        f"(switch), round 1: sending the begin message of round 1 down: {C0} refused POST /begin "
        "with 404"
    ), switch.error
    assert "\n" not in switch.error and "relay" not in switch.error


def test_a_client_that_cannot_send_its_update_names_the_peer_it_cannot_reach(
    cfg: ExperimentConfig, tmp_path: Path
) -> None:
    """A client whose switch is gone (nothing listens at its address) says so first, and that it
    was sending its update: not `apply_global: cannot reach ...`, the job the sending ran in."""
    from hefl.control.local import free_ports
    from hefl.node.nodes.client import ClientNode
    from hefl.node.transport import Timeouts, Transport

    (port,) = free_ports(1)  # nothing listens there
    client = object.__new__(ClientNode)  # the sending and failure paths only: no model, no data
    client.id, client.round, client.error, client.stopped, client.closed = C0, 3, "", "", True
    client.store = None
    client.cfg, client.node_cfg, client.hosts_several = cfg, cfg.nodes[C0], False
    client.runlog = RunLog(tmp_path / "c0.json", C0, "client", EXP)
    client.transport = Transport({S0: f"http://127.0.0.1:{port}"}, Timeouts(retries=0))

    def apply_global() -> None:  # the worker job that sends the next round's update
        client.send_update(3, b"update", Envelope(EXP, 3, C0, 10, 1), None)

    worker = InlineWorker("test")
    worker.start(client.job_failed)
    worker.submit(apply_global)
    assert client.error.startswith(
        f"{S0} is unreachable ({C0} (client), round 4: sending its update to {S0}: cannot reach "
        f"{S0} (http://127.0.0.1:{port}/update) after 1 attempt: connection refused"
    ), client.error
    assert "apply_global" not in client.error
