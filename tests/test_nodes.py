"""Round state driven directly: a switch and an aggregator with a fake transport, inline worker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hefl.config import ExperimentConfig, parse_config
from hefl.crypto.plain import PlainScheme
from hefl.errors import DuplicateMessage, ProtocolError
from hefl.modelspec import param_count
from hefl.nodes import Parts, Worker
from hefl.nodes.aggregator import AggregatorNode
from hefl.nodes.switch import SwitchNode
from hefl.runlog import RunLog
from hefl.transport import TrafficMeter
from hefl.wire import Envelope, Kind
from tests.conftest import tree_config

EXP = "exp-1"
C0, C1, S0, AGG = "127.0.0.1:100", "127.0.0.1:101", "127.0.0.1:10", "127.0.0.1:1"


class FakeTransport:
    """Records what a node sends, by peer and kind; nothing crosses a wire."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Kind, Envelope, bytes]] = []
        self.closed = False

    def send(self, peer: str, kind: Kind, env: Envelope, body: bytes = b"") -> None:
        self.sent.append((peer, kind, env, body))

    def close(self) -> None:
        self.closed = True


class InlineWorker(Worker):
    """Runs each job at once, in the caller's thread; a failure goes where the node says."""

    def start(self, on_error: Callable[[str, Exception], None]) -> None:
        self.on_error = on_error

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:
            self.on_error(str(exc), exc)


def make(
    cls: Any, node_id: str, cfg: ExperimentConfig, tmp_path: Path
) -> tuple[Any, FakeTransport]:
    runlog = RunLog(tmp_path / f"{node_id.replace(':', '_')}.json", node_id, cls.role, EXP)
    transport = FakeTransport()
    parts = Parts(
        transport,
        PlainScheme(param_count(cfg.model, cfg.dataset)),
        runlog,
        TrafficMeter(runlog, EXP, cfg.rounds, cfg.nodes),
        InlineWorker("test"),
    )
    node = cls(cfg, node_id, EXP, parts)
    node.start()
    return node, transport


@pytest.fixture
def cfg() -> ExperimentConfig:
    return parse_config(tree_config(clients=2, leaves=1, spine=False, rounds=2))


def test_switch_adds_its_children_and_relays_the_global_result(
    cfg: ExperimentConfig, tmp_path: Path
) -> None:
    switch, transport = make(SwitchNode, S0, cfg, tmp_path)
    scheme = switch.scheme
    a, b = np.full(scheme.size, 0.25), np.linspace(-1, 1, scheme.size)
    switch.on_update(Envelope(EXP, 0, C0, 100, 1), scheme.encrypt(a))
    assert transport.sent == []  # waits for its other child
    with pytest.raises(DuplicateMessage):
        switch.on_update(Envelope(EXP, 0, C0, 100, 1), scheme.encrypt(a))
    with pytest.raises(ProtocolError, match="claims 2 contributors"):
        switch.on_update(Envelope(EXP, 0, C1, 90, 2), scheme.encrypt(b))
    # the refusal above did not take it
    switch.on_update(Envelope(EXP, 0, C1, 90, 1), scheme.encrypt(b))
    ((peer, kind, env, body),) = transport.sent
    assert (peer, kind, env) == (AGG, Kind.UPDATE, Envelope(EXP, 0, S0, 190, 2))
    np.testing.assert_allclose(scheme.decrypt(scheme.load(body), 2), a + b, atol=1e-6)
    with pytest.raises(ProtocolError, match="not this node's parent"):
        switch.on_global(Envelope(EXP, 0, C0, 190, 2), body)
    switch.on_global(Envelope(EXP, 0, AGG, 190, 2), body)
    down = transport.sent[1:]
    assert sorted((p, k, e.sender, b2 == body) for p, k, e, b2 in down) == [
        (C0, Kind.GLOBAL, S0, True),
        (C1, Kind.GLOBAL, S0, True),
    ]
    rec = switch.runlog.record(0)
    assert rec["end_time"] is not None and {"load", "aggregate", "send", "wait"} <= set(
        rec["phases"]
    )
    assert not switch.runlog.finished  # two rounds; the first ended
    with pytest.raises(DuplicateMessage):
        switch.on_global(Envelope(EXP, 0, AGG, 190, 2), body)


def test_dumb_switch_forwards_each_child_unchanged(tmp_path: Path) -> None:
    cfg = parse_config(tree_config(clients=2, leaves=1, spine=False, dumb=(0,), rounds=1))
    switch, transport = make(SwitchNode, S0, cfg, tmp_path)
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
    agg.on_update(Envelope(EXP, 0, S0, 190, 2), total)
    assert transport.sent[-1][:2] == (S0, Kind.GLOBAL) and transport.sent[-1][2].contributors == 2
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
        body.decode().startswith(f"{S0} (switch), round 0: ")
        and switch.status()["state"] == "failed"
    )
