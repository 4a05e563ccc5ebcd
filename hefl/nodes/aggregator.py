"""Aggregator: completes each round's sum, sends it down, gathers metrics, and collects every log."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from hefl.aggregation import RoundBuffer
from hefl.errors import HeflError, ProtocolError
from hefl.nodes.adder import Adder
from hefl.nodes.base import NodeContext
from hefl.runlog import log_name, write_json_atomic
from hefl.wire import Envelope

log = logging.getLogger(__name__)


class AggregatorNode(Adder):
    role = "aggregator"

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.metrics = RoundBuffer(ctx.experiment, self.cfg.clients(), self.cfg.rounds)
        self.rows: list[dict[str, Any]] = []
        self.collected = False
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Begin round 0 (once): every client trains as soon as the begin message reaches it."""
        with self._lock:
            if self._started:
                raise ProtocolError("the experiment has already started")
            self._started = True
        self.submit(self.begin_round, 0)

    def begin_round(self, r: int) -> None:
        self.runlog.begin(r)
        self.mark("first", r)
        if r == 0:
            self.send_down("/begin", self.envelope(0), b"")

    def complete(self, round_: int) -> None:
        env, payload = self.add_round(round_)
        if env.contributors != len(self.clients):
            raise ProtocolError(f"round {round_} adds {env.contributors} clients, expected {len(self.clients)}")
        if round_ + 1 < self.cfg.rounds:
            self.begin_round(round_ + 1)  # the next round starts as this result goes down
        self.mark("metrics", round_)
        self.send_down("/global", env, payload)

    def on_metrics(self, env: Envelope, body: bytes) -> None:
        """Accept one client's loss and accuracy for a round."""
        try:
            report = json.loads(body)
            float(report["loss"]), float(report["accuracy"]), int(report["test_samples"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError(f"metrics from {env.sender!r}: not a metrics report ({exc})") from None
        if self.metrics.accept(env, body):
            self.submit(self.close_round, env.round)

    def close_round(self, r: int) -> None:
        """Weighted metrics of the round (by test samples); the last round also collects the logs."""
        self.runlog.add_phase(r, "wait_metrics", self.since("metrics", r))
        reports = [json.loads(p) for p in self.metrics.release(r).payloads.values()]
        n = sum(int(p["test_samples"]) for p in reports)
        row = {"round": r,
               "accuracy": sum(p["accuracy"] * p["test_samples"] for p in reports) / n,
               "loss": sum(p["loss"] * p["test_samples"] for p in reports) / n,
               "client_byte_send": sum(int(p["byte_send"]) for p in reports),
               "client_byte_received": sum(int(p["byte_received"]) for p in reports)}
        self.runlog.set(r, **{k: v for k, v in row.items() if k != "round"})
        last = r == self.cfg.rounds - 1
        self.runlog.end(r, final=last)
        row["duration_s"] = self.runlog.snapshot()["iteration"][r]["duration_s"]
        self.rows.append(row)
        log.info("%s round %d: accuracy %.4f loss %.4f", self.id, r, row["accuracy"], row["loss"])
        if last:
            self.collect_logs()

    def collect_logs(self) -> None:
        """Fetch every other node's log into this node's experiment folder."""
        deadline = time.monotonic() + self.cfg.network.read_timeout_s
        missing = [n for n in self.cfg.nodes if n != self.id]
        while missing and time.monotonic() < deadline:
            missing = [n for n in missing if not self._fetch_log(n)]
            if missing:
                time.sleep(0.2)
        if missing:
            raise ProtocolError(f"logs not finished in time on {missing}")
        self.collected = True

    def _fetch_log(self, node: str) -> bool:
        try:
            data = self.transport.get(node, f"/log/{self.ctx.experiment}").json()
        except (HeflError, ValueError) as exc:
            log.warning("%s: log of %s not fetched: %s", self.id, node, exc)
            return False
        write_json_atomic(self.ctx.exp_dir / log_name(node), data)
        return bool(data.get("finished"))

    def on_fail(self, sender: str, text: str) -> None:
        """Another node reports that it failed: the experiment stops with its reason."""
        if sender in self.cfg.nodes and not self.error:
            self.error = text[:500]
            log.error("%s: %s", self.id, self.error)

    def status(self) -> dict[str, Any]:
        state = super().status()
        if state["state"] == "finished" and not self.collected:
            state["state"] = "running"
        return {**state, "rounds": list(self.rows)}
