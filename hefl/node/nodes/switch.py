"""Switch: adds the children's updates (or forwards them unchanged if dumb), relays results down."""

from __future__ import annotations

import threading
from typing import Any

from hefl.config import ExperimentConfig
from hefl.crypto.frame import Payload
from hefl.errors import OutOfWindow, ProtocolError
from hefl.node.aggregation import AcceptPoint
from hefl.node.body import FileBody, Incoming, Outgoing
from hefl.node.nodes.base import Parts
from hefl.node.nodes.inner import InnerNode
from hefl.node.runlog import Stopwatch
from hefl.node.wire import Envelope, Kind


class SwitchNode(InnerNode):
    role = "switch"

    def __init__(self, cfg: ExperimentConfig, node_id: str, experiment: str, parts: Parts) -> None:
        super().__init__(cfg, node_id, experiment, parts)
        self.forwards = self.node_cfg.dumb  # the config's `dumb`: it forwards, never adds
        # a forwarding switch passes each update on as it came (loaded, to check it)
        self.adds = not self.forwards
        self.downward = AcceptPoint()  # begin and global messages, once each
        self.awaiting_global = Stopwatch()  # from forwarding up to the global result's arrival
        self.sent_round = -1  # the round whose update this switch sent up last: its global is due

    def accepted(self, env: Envelope, payload: Any, complete: bool) -> None:
        if self.forwards:
            if complete:  # the children's wait ends with the last arrival, not after forwarding it
                self.runlog.add_phase(env.round, "wait", self.first_update.stop(env.round))
            self.submit(self.forward, env, payload, complete)
        elif complete:
            self.submit(self.complete, env.round)

    def forward(self, env: Envelope, payload: Outgoing, last: bool) -> None:
        """Dumb switch: pass one child's message upstream unchanged (the original's base case)."""
        self.round = env.round
        if last:  # before it goes: the result can come back before the answer does
            self.sent_round = env.round
        try:
            with self.step(f"forwarding an update to {self.node_cfg.send}"):
                with self.runlog.phase(env.round, "send"):
                    self.transport.send(self.node_cfg.send, Kind.UPDATE, env, payload)
        finally:
            if isinstance(payload, FileBody):
                payload.remove()
        if last:
            self.buffer.release(env.round)
            self.awaiting_global.start(env.round)

    def complete(self, round_: int) -> None:
        if not self.buffer.is_open(round_):  # sent already (complete and flushed at once)
            return
        made = self.add_round(round_)
        self.sent_round = round_  # before it goes: the result can come back before the answer
        if made is None:  # at the deadline, with nothing in: nothing goes up
            self.awaiting_global.start(round_)
            return
        env, payload = made
        try:
            with self.step(f"sending its sum up to {self.node_cfg.send}"):
                with self.runlog.phase(round_, "send"):
                    self.transport.send(self.node_cfg.send, Kind.UPDATE, env, payload)
        finally:
            if isinstance(payload, FileBody):
                payload.remove()
        self.awaiting_global.start(round_)

    def on_flush(self, env: Envelope, payload: Payload) -> None:
        """The parent's round deadline passed: child switches flush first (so that their partial
        sums are here), then this switch sends up what it has, at once: a partial sum with its
        true contributor and sample counts, or nothing. Late updates of the round then get 422.
        Answered when done (bounded by network.read_timeout_s)."""
        self.check_downward(env, payload, allow_empty=True)
        self.flush_children(env.round)
        done = threading.Event()
        self.submit(self.flush_round, env.round, done)
        if not done.wait(self.cfg.network.read_timeout_s):
            raise ProtocolError(f"flush of round {env.round + 1} did not finish in time")

    def flush_round(self, round_: int, done: threading.Event) -> None:
        try:
            if not self.buffer.is_open(round_):
                return  # sent already, or not begun here
            if self.forwards:
                # a dumb switch forwarded each update as it came
                arrived = self.buffer.arrived(round_)
                members = self.members_of(arrived)
                self.runlog.add_phase(round_, "wait", self.first_update.stop(round_))
                self.buffer.release(round_)
                self.record_members(round_, members)
                self.sent_round = round_
                self.awaiting_global.start(round_)
                return
            self.complete(round_)
        finally:
            done.set()

    def on_begin(self, env: Envelope, payload: Payload) -> None:
        self._on_down(Kind.BEGIN, env, payload)

    def on_global(self, env: Envelope, payload: Payload) -> None:
        self._on_down(Kind.GLOBAL, env, payload)

    def _on_down(self, kind: Kind, env: Envelope, payload: Payload) -> None:
        """Accept a begin or global message from the parent, once; the worker relays it. Its
        window: begin is round 1's; a global result only that of the round this switch sent up
        last (a retry of one taken is a duplicate, 409)."""
        self.check_downward(env, payload, allow_empty=kind is Kind.BEGIN)
        if not self.downward.taken((kind, env.round)):
            if kind is Kind.BEGIN and env.round != 0:
                raise ProtocolError(f"begin is for round 1, got round {env.round + 1}")
            if kind is Kind.GLOBAL and env.round != self.sent_round:
                last = f"round {self.sent_round + 1}" if self.sent_round >= 0 else "none yet"
                raise OutOfWindow(
                    f"global result of round {env.round + 1} is not open here (the last update "
                    f"this switch sent up: {last})"
                )
        # a result read as it arrived is relayed from its spool, which the relay removes; kept
        # before the message is taken: one that cannot be kept is not taken, and a retry is
        relayed = payload.keep() if isinstance(payload, Incoming) else payload
        try:
            self.downward.take((kind, env.round), f"{kind.value} of round {env.round + 1}")
        except BaseException:
            if isinstance(relayed, FileBody):
                relayed.remove()
            raise
        # begin opens round 0, global r round r + 1: before the children hear of it
        opened = env.round + (kind is Kind.GLOBAL)
        self.open_round(opened)
        if opened < self.cfg.rounds and not self.expected(opened):
            self.nothing_drawn(opened)
        self.submit(self.relay, kind, env, relayed)

    def nothing_drawn(self, round_: int) -> None:
        """Round `round_` draws no client below this switch (aggregator.clients_per_round): it
        sends nothing up (its parent does not wait for it) and takes the round's result when it
        comes, to relay it down. Done at once, before the round's result can come."""
        self.buffer.release(round_)
        self.record_members(round_, 0)
        self.sent_round = round_
        self.awaiting_global.start(round_)

    def relay(self, kind: Kind, env: Envelope, payload: Outgoing) -> None:
        """Send a begin or global message on to every child (a file body is removed once every
        child has it, or failed: see InnerNode.send_down)."""
        r = env.round
        if kind is Kind.GLOBAL:
            self.runlog.add_phase(r, "wait", self.awaiting_global.stop(r))
        self.send_down(kind, self.envelope(r, env.samples, env.contributors), payload)
        if kind is Kind.GLOBAL:
            self.runlog.end(r, final=r == self.cfg.rounds - 1)
