"""Aggregator: completes each round's sum, sends it down, and gathers the clients' metrics."""

from __future__ import annotations

import logging
from typing import Any

from hefl.aggregation import AcceptPoint, RoundBuffer, expected_contributors, weighted_metrics
from hefl.config import ExperimentConfig
from hefl.errors import DuplicateMessage, ProtocolError
from hefl.metrics import MetricsReport, parse_metrics
from hefl.nodes.adder import Adder
from hefl.nodes.base import Parts
from hefl.runlog import Stopwatch
from hefl.wire import Body, Envelope, Kind

log = logging.getLogger(__name__)


class AggregatorNode(Adder):
    role = "aggregator"

    def __init__(self, cfg: ExperimentConfig, node_id: str, experiment: str, parts: Parts) -> None:
        super().__init__(cfg, node_id, experiment, parts)
        self.metrics = RoundBuffer(experiment, cfg.clients(), cfg.rounds)
        self.rows: list[dict[str, Any]] = []
        self.control = AcceptPoint()  # the start of the experiment, once
        self.awaiting_metrics = Stopwatch()  # from sending a round's result down to the last report

    def begin_experiment(self) -> None:
        """Begin round 0 (once): every client trains as soon as the begin message reaches it."""
        try:
            self.control.take(Kind.START, "start")
        except DuplicateMessage:
            raise ProtocolError("the experiment has already started") from None
        self.submit(self.send_begin)

    def send_begin(self) -> None:
        self.runlog.begin(0)
        self.buffer.open(0, only=True)
        self.send_down(Kind.BEGIN, self.envelope(0), b"")
        self.first_update.start(0)

    def complete(self, round_: int) -> None:
        """Send the round's sum down; the next round starts as it goes (its wait after it went)."""
        env, payload = self.add_round(round_)
        expected = expected_contributors(self.cfg, self.id)
        if env.contributors != expected:
            raise ProtocolError(
                f"round {round_ + 1} adds {env.contributors} clients, expected {expected}"
            )
        if round_ + 1 < self.cfg.rounds:
            self.runlog.begin(round_ + 1)
        # before anyone hears of it: updates of the next round, metrics of this one
        self.buffer.open(round_ + 1, only=True)
        self.metrics.open(round_)
        self.send_down(Kind.GLOBAL, env, payload)
        self.awaiting_metrics.start(round_)
        self.first_update.start(round_ + 1)

    def on_metrics(self, env: Envelope, body: Body) -> None:
        """Accept one client's loss and accuracy for a round (parsed once, on arrival)."""
        with self.metrics.reserve(env):
            complete = self.metrics.fill(env, parse_metrics(body, env.sender))
        if complete:
            self.submit(self.close_round, env.round)

    def close_round(self, r: int) -> None:
        """Weighted metrics of the round (by test samples); the last one finishes the experiment."""
        self.runlog.add_phase(r, "wait_metrics", self.awaiting_metrics.stop(r))
        reports: list[MetricsReport] = list(self.metrics.release(r).payloads.values())
        loss, accuracy = weighted_metrics([(p.test_samples, p.loss, p.accuracy) for p in reports])
        row: dict[str, Any] = {
            "round": r,
            "accuracy": accuracy,
            "loss": loss,
            "client_byte_send": sum(p.byte_send for p in reports),
            "client_byte_received": sum(p.byte_received for p in reports),
        }
        self.runlog.set(r, **{k: v for k, v in row.items() if k != "round"})
        self.runlog.end(r, final=r == self.cfg.rounds - 1)
        row["duration_s"] = self.runlog.record(r)["duration_s"]
        self.rows.append(row)
        log.info(
            "%s round %d: accuracy %.4f loss %.4f", self.id, r + 1, row["accuracy"], row["loss"]
        )

    def on_fail(self, env: Envelope, text: str) -> None:
        """A node of this experiment reports it failed: the experiment stops with its reason."""
        if env.experiment != self.experiment or env.sender not in self.cfg.nodes:
            raise ProtocolError(
                f"failure report from {env.sender!r} of experiment {env.experiment!r} "
                "is not for this one"
            )
        if not self.error:
            self.error = text[:500]
            log.error("%s: %s", self.id, self.error)

    def status(self) -> dict[str, Any]:
        state = super().status()
        rows = list(self.rows)
        if state["state"] == "finished" and len(rows) < self.cfg.rounds:
            state["state"] = "running"  # the last round's log is written; its row is on its way
        return {**state, "rounds": rows}
