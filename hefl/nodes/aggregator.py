"""Aggregator: completes each round's sum, sends it down, gathers metrics, and collects every log."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from hefl.aggregation import RoundBuffer
from hefl.errors import HeflError, ProtocolError
from hefl.nodes.adder import Adder
from hefl.nodes.base import NodeContext
from hefl.runlog import log_name, write_json_atomic
from hefl.wire import Envelope

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Report:
    """One client's evaluation of a round's global model, as posted to /metrics."""

    loss: float
    accuracy: float
    test_samples: int
    byte_send: int
    byte_received: int

    @classmethod
    def parse(cls, body: bytes, sender: str) -> Report:
        """Validate a metrics body; anything off is a ProtocolError naming the sender."""
        try:
            raw = json.loads(body)
            report = cls(float(raw["loss"]), float(raw["accuracy"]), int(raw["test_samples"]),
                         int(raw["byte_send"]), int(raw["byte_received"]))
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise ProtocolError(f"metrics from {sender!r}: not a metrics report ({type(exc).__name__}: {exc})") from None
        if not (math.isfinite(report.loss) and 0 <= report.accuracy <= 1 and report.test_samples > 0
                and report.byte_send >= 0 and report.byte_received >= 0):
            raise ProtocolError(f"metrics from {sender!r}: values out of range: {report}")
        return report


class AggregatorNode(Adder):
    role = "aggregator"

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.metrics = RoundBuffer(ctx.experiment, self.cfg.clients(), self.cfg.rounds)
        self.rows: list[dict[str, Any]] = []
        self.collected = False
        self._started = False
        self._lock = threading.Lock()

    def begin_experiment(self) -> None:
        """Begin round 0 (once): every client trains as soon as the begin message reaches it."""
        with self._lock:
            if self._started:
                raise ProtocolError("the experiment has already started")
            self._started = True
        self.submit(self.send_begin)

    def send_begin(self) -> None:
        self.runlog.begin(0)
        self.send_down("/begin", self.envelope(0), b"")
        self.mark("first", 0)

    def complete(self, round_: int) -> None:
        """Send the round's sum down; the next round starts as it goes (its wait after it went)."""
        env, payload = self.add_round(round_)
        if env.contributors != len(self.clients):
            raise ProtocolError(f"round {round_} adds {env.contributors} clients, expected {len(self.clients)}")
        if round_ + 1 < self.cfg.rounds:
            self.runlog.begin(round_ + 1)
        self.send_down("/global", env, payload)
        self.mark("metrics", round_)
        self.mark("first", round_ + 1)

    def on_metrics(self, env: Envelope, body: bytes) -> None:
        """Accept one client's loss and accuracy for a round."""
        if self.metrics.accept(env, Report.parse(body, env.sender)):
            self.submit(self.close_round, env.round)

    def close_round(self, r: int) -> None:
        """Weighted metrics of the round (by test samples); the last round also collects the logs."""
        self.runlog.add_phase(r, "wait_metrics", self.since("metrics", r))
        reports: list[Report] = list(self.metrics.release(r).payloads.values())  # parsed on arrival
        n = sum(p.test_samples for p in reports)
        row: dict[str, Any] = {
            "round": r,
            "accuracy": sum(p.accuracy * p.test_samples for p in reports) / n,
            "loss": sum(p.loss * p.test_samples for p in reports) / n,
            "client_byte_send": sum(p.byte_send for p in reports),
            "client_byte_received": sum(p.byte_received for p in reports),
        }
        self.runlog.set(r, **{k: v for k, v in row.items() if k != "round"})
        last = r == self.cfg.rounds - 1
        self.runlog.end(r, final=last)
        row["duration_s"] = self.runlog.record(r)["duration_s"]
        self.rows.append(row)
        log.info("%s round %d: accuracy %.4f loss %.4f", self.id, r, row["accuracy"], row["loss"])
        if last:
            self.collect_logs()

    def collect_logs(self) -> None:
        """Bring every other node's finished log into this node's experiment folder (a node that
        shares the folder, as in local mode, has already written it there)."""
        deadline = time.monotonic() + self.cfg.network.read_timeout_s
        missing = [n for n in self.cfg.nodes if n != self.id and not self._have_log(n)]
        while missing and time.monotonic() < deadline:
            missing = [n for n in missing if not self._fetch_log(n)]
            if missing:
                time.sleep(0.2)
        if missing:
            raise ProtocolError(f"logs not finished in time on {missing}")
        self.collected = True

    def _have_log(self, node: str) -> bool:
        try:
            return bool(json.loads((self.ctx.exp_dir / log_name(node)).read_text()).get("finished"))
        except (OSError, ValueError):
            return False

    def _fetch_log(self, node: str) -> bool:
        try:
            data = self.transport.get(node, f"/log/{self.ctx.experiment}").json()
        except (HeflError, ValueError) as exc:
            log.warning("%s: log of %s not fetched: %s", self.id, node, exc)
            return False
        write_json_atomic(self.ctx.exp_dir / log_name(node), data)
        return bool(data.get("finished"))

    def on_fail(self, env: Envelope, text: str) -> None:
        """A node of this experiment reports that it failed: the experiment stops with its reason."""
        if env.experiment != self.ctx.experiment or env.sender not in self.cfg.nodes:
            raise ProtocolError(f"failure report from {env.sender!r} of experiment {env.experiment!r} is not for this one")
        if not self.error:
            self.error = text[:500]
            log.error("%s: %s", self.id, self.error)

    def status(self) -> dict[str, Any]:
        state = super().status()
        if state["state"] == "finished" and not self.collected:
            state["state"] = "running"
        return {**state, "rounds": list(self.rows)}
