"""Aggregator: completes each round's sum, sends it down, and gathers the clients' metrics."""

from __future__ import annotations

import logging
import threading
from typing import Any

from hefl.config import ExperimentConfig
from hefl.errors import DuplicateMessage, ProtocolError
from hefl.node.aggregation import AcceptPoint, RoundBuffer, weighted_metrics
from hefl.node.metrics import MetricsReport, parse_metrics
from hefl.node.nodes.base import Parts
from hefl.node.nodes.inner import InnerNode
from hefl.node.runlog import Stopwatch
from hefl.node.wire import Body, Envelope, Kind
from hefl.records import MISSING_SHOWN, RoundRow

log = logging.getLogger(__name__)


class AggregatorNode(InnerNode):
    role = "aggregator"

    def __init__(self, cfg: ExperimentConfig, node_id: str, experiment: str, parts: Parts) -> None:
        super().__init__(cfg, node_id, experiment, parts)
        # one report per client node, covering every client it hosts
        self.metrics = RoundBuffer(experiment, cfg.tree.client_nodes(), cfg.rounds)
        self.rows: list[RoundRow] = []
        self.control = AcceptPoint()  # the start of the experiment, once
        self.awaiting_metrics = Stopwatch()  # from sending a round's result down to the last report
        self.round_members: dict[int, tuple[str, ...]] = {}  # who contributed to each round
        self._timers: list[threading.Timer] = []
        # the tree below, for the live page (addresses and roles only)
        self.topology = [
            {"node": n, "role": c.type, "parent": c.send, "dumb": c.dumb}
            for n, c in cfg.nodes.items()
            if n != node_id
        ]

    def begin_experiment(self) -> None:
        """Begin round 0 (once): every client trains as soon as the begin message reaches it."""
        try:
            self.control.take(Kind.START, "start")
        except DuplicateMessage:
            raise ProtocolError("the experiment has already started") from None
        self.submit(self.send_begin)

    def send_begin(self) -> None:
        self.runlog.begin(0)
        self.open_round(0)
        self.arm(0)
        self.send_down(Kind.BEGIN, self.envelope(0), b"")
        self.first_update.start(0)

    def arm(self, round_: int) -> None:
        """With network.round_deadline_s: round `round_` opens now; at its deadline, flush it
        (and close the metrics of the round before, if some contributor never reported)."""
        deadline = self.cfg.policy.deadline_s
        if not deadline:
            return
        timer = threading.Timer(deadline, self.submit, args=(self.deadline_passed, round_))
        timer.daemon = True
        timer.start()
        self._timers.append(timer)

    def deadline_passed(self, round_: int) -> None:
        """Round `round_`'s deadline: every switch sends up what it has, and the round completes
        with the clients that contributed if they are at least min_clients; else the run stops,
        naming the missing."""
        if round_ > 0 and self.metrics.is_open(round_ - 1):
            self.close_round(round_ - 1)
        if round_ >= self.cfg.rounds or not self.buffer.is_open(round_):
            return
        self.flush_children(round_)
        if not self.buffer.is_open(round_):  # the flushed sums completed it meanwhile
            return
        members = self.members_of(self.buffer.arrived(round_))
        present = members.bit_count()
        if present < self.cfg.policy.min_clients:
            came = set(self.cfg.tree.members(members))
            drawn = self.cfg.sampled(round_)
            missing = [c for c in drawn if c not in came]
            named = ", ".join(missing[:MISSING_SHOWN])
            if len(missing) > MISSING_SHOWN:
                named += f", ... ({len(missing)} in all)"
            raise ProtocolError(
                f"round {round_ + 1}: {present} of {len(drawn)} clients "
                f"contributed within network.round_deadline_s "
                f"({self.cfg.policy.deadline_s:g}s), min_clients {self.cfg.policy.min_clients}; "
                f"missing: {named}"
            )
        self.complete(round_)

    def complete(self, round_: int) -> None:
        """Send the round's sum down; the next round starts as it goes (its wait after it went)."""
        if not self.buffer.is_open(round_):  # done already (at its deadline)
            return
        made = self.add_round(round_)
        if made is None:
            raise ProtocolError(f"round {round_ + 1}: no update came")
        env, payload = made
        everyone = len(self.cfg.sampled(round_))
        if not self.cfg.policy.min_clients <= env.contributors <= everyone:
            raise ProtocolError(
                f"round {round_ + 1} adds {env.contributors} clients, expected "
                + (
                    f"{everyone}"
                    if self.cfg.policy.min_clients == everyone
                    else f"{self.cfg.policy.min_clients} to {everyone}"
                )
            )
        present = self.cfg.tree.members(env.members)
        self.round_members[round_] = present
        if round_ + 1 < self.cfg.rounds:
            self.runlog.begin(round_ + 1)
        # before anyone hears of it: updates of the next round, metrics of this one (from the
        # clients that contributed)
        self.open_round(round_ + 1)
        self.metrics.expect(round_, list(dict.fromkeys(self.cfg.tree.node_of(c) for c in present)))
        self.metrics.open(round_)
        self.arm(round_ + 1)
        self.send_down(Kind.GLOBAL, env, payload)
        self.awaiting_metrics.start(round_)
        self.first_update.start(round_ + 1)

    def on_metrics(self, env: Envelope, body: Body) -> None:
        """Accept one client's loss and accuracy for a round (parsed once, on arrival)."""
        with self.metrics.reserve(env):
            report = parse_metrics(body, env.sender)
            self.check_figures(env.sender, report)
            complete = self.metrics.fill(env, report)
        if complete:
            self.submit(self.close_round, env.round)

    def check_figures(self, sender: str, report: MetricsReport) -> None:
        """A node hosting several clients reports each one's figures, in slice order, and its
        test samples are theirs together; a node of one client reports none apart."""
        hosted = self.cfg.tree.hosted(sender)
        named = tuple(c.client for c in report.clients)
        if len(hosted) == 1 and named:
            raise ProtocolError(f"metrics from {sender!r}: it hosts one client; no 'clients'")
        if len(hosted) > 1 and named != hosted:
            raise ProtocolError(
                f"metrics from {sender!r}: 'clients' must be {hosted[0]} .. {hosted[-1]} in "
                f"order ({len(hosted)}), got {len(named)} entries"
            )
        if named and sum(c.test_samples for c in report.clients) != report.test_samples:
            raise ProtocolError(
                f"metrics from {sender!r}: test_samples {report.test_samples} is not the sum of "
                "its clients'"
            )

    def close_round(self, r: int) -> None:
        """Weighted metrics of the round (by test samples) over the reports that came (every
        contributor's, or, at the next deadline, those in by then); the last one finishes the
        experiment."""
        if not self.metrics.is_open(r):
            return
        self.runlog.add_phase(r, "wait_metrics", self.awaiting_metrics.stop(r))
        payloads: dict[str, MetricsReport] = self.metrics.release(r).payloads
        reports = list(payloads.values())
        loss: float | None = None  # no contributor reported in time: no figure, not a made-up one
        accuracy: float | None = None
        present = self.round_members.get(r, self.cfg.sampled(r))
        counted = set(present)
        # the round's contributors' figures only: a node's clients that missed the round (a
        # deadline) evaluated its result too, and so did a straggler that reported in time
        figures = [
            f for sender, p in payloads.items() for f in p.figures(sender) if f[0] in counted
        ]
        if figures:
            loss, accuracy = weighted_metrics([(n, lo, acc) for _, n, lo, acc in figures])
        byte_send = sum(p.byte_send for p in reports)
        byte_received = sum(p.byte_received for p in reports)
        reported = sum(n for _, n, _, _ in figures)  # the test samples behind accuracy and loss
        # (who contributed is in the log already, as lists: see InnerNode.record_members)
        self.runlog.set(
            r,
            accuracy=accuracy,
            loss=loss,
            client_byte_send=byte_send,
            client_byte_received=byte_received,
            reports=len(figures),
            test_samples=reported,
        )
        self.runlog.end(r, final=r == self.cfg.rounds - 1)
        rec = self.runlog.record(r)
        row = RoundRow(
            round=r,
            accuracy=accuracy,
            loss=loss,
            client_byte_send=byte_send,
            client_byte_received=byte_received,
            contributors=len(present),
            missing=tuple(c for c in self.cfg.sampled(r) if c not in counted),
            reports=len(figures),
            test_samples=reported,
            duration_s=rec.duration_s,
            aggregator_received=rec.byte_received_up,  # what reached it: the updates
            sampled=self.cfg.sampled(r) if self.cfg.samples_clients else None,
        )
        self.rows.append(row)
        log.info("%s round %d: accuracy %s loss %s", self.id, r + 1, row.accuracy, row.loss)

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
        return {
            **state,
            "rounds": [row.to_json() for row in rows],
            "rounds_planned": self.cfg.rounds,
            "topology": self.topology,
            "nodes": self.views(rows),
        }

    def views(self, rows: list[RoundRow]) -> dict[str, dict[str, Any]]:
        """Each client as the aggregator sees it, for the live page: whether the last closed round
        had its update."""
        if not rows:
            return {}
        last = rows[-1]
        missing = set(last.missing)
        drawn = set(self.cfg.sampled(last.round))
        out = {}
        for node in self.cfg.tree.client_nodes():
            hosted = self.cfg.tree.hosted(node)
            gone = sum(c in missing for c in hosted)
            text = f"{'missing from' if gone else 'in'} round {last.round + 1}"
            if not drawn & set(hosted):
                text = f"not drawn in round {last.round + 1}"
            if gone and len(hosted) > 1:
                text = f"{gone} of its {len(hosted)} clients {text}"
            out[node] = {"missing": gone > 0, "text": text}
        return out
