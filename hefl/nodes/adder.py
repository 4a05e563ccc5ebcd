"""What switches and the aggregator share: accepting children's updates and adding them."""

from __future__ import annotations

from abc import ABC, abstractmethod

from hefl.aggregation import RoundBuffer, expected_contributors
from hefl.config import ExperimentConfig
from hefl.errors import ProtocolError
from hefl.nodes.base import Node, Parts
from hefl.runlog import Stopwatch
from hefl.wire import Envelope, Kind


class Adder(Node, ABC):
    """A node receiving updates from below; every update is accepted or refused in `on_update`."""

    def __init__(self, cfg: ExperimentConfig, node_id: str, experiment: str, parts: Parts) -> None:
        super().__init__(cfg, node_id, experiment, parts)
        self.children = cfg.children(node_id)
        self.buffer = RoundBuffer(experiment, cfg.contributors(node_id), cfg.rounds)
        self.first_update = Stopwatch()  # from the first child's update to the last one's

    def on_update(self, env: Envelope, payload: bytes) -> None:
        """Accept one child's update (a duplicate raises DuplicateMessage); work goes to the worker.
        The payload is loaded (for ciphertexts: deserialized in this node's context) once, here."""
        # reserved first: a retried update is refused before it costs a deserialization
        with self.buffer.reserve(env):
            expected = expected_contributors(self.cfg, env.sender)
            if env.contributors != expected:
                raise ProtocolError(
                    f"{env.sender!r} claims {env.contributors} contributors; "
                    f"it has {expected} clients"
                )
            if env.samples <= 0:
                raise ProtocolError(f"{env.sender!r} sent an update of {env.samples} samples")
            with self.runlog.phase(env.round, "load"):
                loaded = self.scheme.load(payload)
            self.first_update.start(env.round, first=True)  # before the fill that may complete it
            complete = self.buffer.fill(env, loaded)
        self.accepted(env, payload, complete)

    def accepted(self, env: Envelope, payload: bytes, complete: bool) -> None:
        if complete:
            self.submit(self.complete, env.round)

    @abstractmethod
    def complete(self, round_: int) -> None:
        """Add (or close) a round whose updates have all arrived; runs on the worker."""

    def add_round(self, round_: int) -> tuple[Envelope, bytes]:
        """Release a complete round and add its payloads into one message of this node's."""
        self.round = round_
        self.runlog.add_phase(round_, "wait", self.first_update.stop(round_))
        inbox = self.buffer.release(round_)
        with self.runlog.phase(round_, "aggregate"):
            payload = self.scheme.add(list(inbox.payloads.values()))
        envs = inbox.envelopes.values()
        env = self.envelope(round_, sum(e.samples for e in envs), sum(e.contributors for e in envs))
        return env, payload

    def send_down(self, kind: Kind, env: Envelope, payload: bytes) -> None:
        """Send a begin or global message to every child, timed as the round's `send` phase."""
        with self.runlog.phase(env.round, "send"):
            for child in self.children:
                self.transport.send(child, kind, env, payload)
