"""What switches and the aggregator share: accepting children's updates and adding them."""

from __future__ import annotations

import time
from typing import Any

from hefl.aggregation import RoundBuffer
from hefl.errors import ProtocolError
from hefl.nodes.base import Node, NodeContext
from hefl.wire import Envelope


class Adder(Node):
    """A node that receives updates from below; every message is accepted or refused here."""

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.children = self.cfg.children(self.id)
        self.buffer = RoundBuffer(ctx.experiment, self.cfg.contributors(self.id), self.cfg.rounds)
        self.clients = self.cfg.clients_under(self.id)

    def check_upward(self, env: Envelope, payload: bytes) -> Any:
        """Refuse a message from a stranger, for another experiment or round, or with a bad payload;
        return the payload loaded (for ciphertexts: deserialized in this node's context, once)."""
        self.buffer.check(env)
        self.buffer.check_new(env)  # a retried update is refused before it costs a deserialization
        expected = len(self.cfg.clients_under(env.sender))
        if env.contributors != expected:
            raise ProtocolError(f"{env.sender!r} claims {env.contributors} contributors; it has {expected} clients")
        if env.samples <= 0:
            raise ProtocolError(f"{env.sender!r} sent an update of {env.samples} samples")
        started = time.monotonic()
        loaded = self.scheme.load(payload)
        self.runlog.add_phase(env.round, "load", time.monotonic() - started)
        return loaded

    def on_update(self, env: Envelope, payload: bytes) -> None:
        """Accept one child's update (a duplicate raises DuplicateMessage); work goes to the worker."""
        loaded = self.check_upward(env, payload)
        complete = self.buffer.accept(env, loaded)
        self.runlog.begin(env.round)
        self._marks.setdefault(("first", env.round), time.monotonic())
        self.accepted(env, payload, complete)

    def accepted(self, env: Envelope, payload: bytes, complete: bool) -> None:
        if complete:
            self.submit(self.complete, env.round)

    def complete(self, round_: int) -> None:
        raise NotImplementedError

    def add_round(self, round_: int) -> tuple[Envelope, bytes]:
        """Release a complete round and add its payloads into one message of this node's."""
        self.round = round_
        self.runlog.add_phase(round_, "wait", self.since("first", round_))
        inbox = self.buffer.release(round_)
        with self.runlog.phase(round_, "aggregate"):
            payload = self.scheme.add(list(inbox.payloads.values()))
        envs = inbox.envelopes.values()
        env = self.envelope(round_, sum(e.samples for e in envs), sum(e.contributors for e in envs))
        return env, payload

    def send_down(self, path: str, env: Envelope, payload: bytes) -> None:
        """Send a begin or global message to every child, timed as the round's `send` phase."""
        with self.runlog.phase(env.round, "send"):
            for child in self.children:
                self.transport.post(child, path, payload, env.headers(), round_=env.round)
