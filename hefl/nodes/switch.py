"""Switch: adds its children's updates (or forwards them unchanged when dumb) and relays results down."""

from __future__ import annotations

import threading

from hefl.errors import DuplicateMessage
from hefl.nodes.adder import Adder
from hefl.nodes.base import NodeContext
from hefl.wire import Envelope


class SwitchNode(Adder):
    role = "switch"

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.dumb = self.me.dumb
        self._down: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def accepted(self, env: Envelope, payload: bytes, complete: bool) -> None:
        if self.dumb:
            if complete:  # the children's wait ends with the last arrival, not after forwarding it
                self.runlog.add_phase(env.round, "wait", self.since("first", env.round))
            self.submit(self.forward, env, payload, complete)
        elif complete:
            self.submit(self.complete, env.round)

    def forward(self, env: Envelope, payload: bytes, last: bool) -> None:
        """Dumb switch: pass one child's message upstream unchanged (the original's base case)."""
        self.round = env.round
        with self.runlog.phase(env.round, "send"):
            self.transport.post(self.me.send, "/update", payload, env.headers(), round_=env.round)
        if last:
            self.buffer.release(env.round)
            self.mark("global", env.round)

    def complete(self, round_: int) -> None:
        env, payload = self.add_round(round_)
        with self.runlog.phase(round_, "send"):
            self.transport.post(self.me.send, "/update", payload, env.headers(), round_=round_)
        self.mark("global", round_)

    def on_down(self, path: str, env: Envelope, payload: bytes) -> None:
        """Accept a begin or global message from the parent, once; relaying happens on the worker."""
        self.check_downward(env, payload, allow_empty=path == "/begin")
        with self._lock:
            if (path, env.round) in self._down:
                raise DuplicateMessage(f"{path} of round {env.round} already received")
            self._down.add((path, env.round))
        self.submit(self.relay, path, env, payload)

    def relay(self, path: str, env: Envelope, payload: bytes) -> None:
        r = env.round
        if path == "/global":
            self.runlog.add_phase(r, "wait", self.since("global", r))
        self.send_down(path, self.envelope(r, env.samples, env.contributors), payload)
        if path == "/global":
            self.runlog.end(r, final=r == self.cfg.rounds - 1)
