"""Round buffers that accept or reject each incoming message, and the pure sum / mean math."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from hefl.errors import DuplicateMessage, ProtocolError
from hefl.wire import Envelope

log = logging.getLogger(__name__)


def weighted_sum(updates: Iterable[tuple[np.ndarray, int]]) -> tuple[np.ndarray, int]:
    """Sum of delta_i * n_i and of n_i: what the tree computes, before the client divides."""
    total: np.ndarray | None = None
    count = 0
    for delta, n in updates:
        term = np.asarray(delta, dtype=np.float64) * n
        total = term if total is None else total + term
        count += n
    if total is None:
        raise ValueError("weighted_sum of no updates")
    return total, count


def weighted_mean(models: Sequence[np.ndarray], samples: Sequence[int]) -> np.ndarray:
    """Sample-weighted mean of flat models: FedAvg's global model."""
    total, count = weighted_sum(zip(models, samples, strict=True))
    return total / count


@dataclass
class Inbox:
    """The messages of one round at one node, keyed by sender."""

    payloads: dict[str, bytes] = field(default_factory=dict)
    envelopes: dict[str, Envelope] = field(default_factory=dict)


class RoundBuffer:
    """Collects the messages a node adds for each round; says when a round is complete.

    A message is accepted only for this experiment, an expected sender and a round not yet
    released; a second message with the same (experiment, round, sender) raises DuplicateMessage.
    """

    def __init__(self, experiment: str, senders: Sequence[str], rounds: int) -> None:
        self.experiment = experiment
        self.senders = tuple(senders)
        self.rounds = rounds
        self._inboxes: dict[int, Inbox] = {}
        self._released: set[int] = set()
        self._lock = threading.Lock()

    def check(self, env: Envelope) -> None:
        """Raise ProtocolError if `env` does not belong here (call before reading a large body)."""
        if env.experiment != self.experiment:
            raise ProtocolError(f"experiment {env.experiment!r} is not the running experiment {self.experiment!r}")
        if env.sender not in self.senders:
            raise ProtocolError(f"sender {env.sender!r} is not one this node adds (expected {list(self.senders)})")
        if not 0 <= env.round < self.rounds:
            raise ProtocolError(f"round {env.round} is outside 0..{self.rounds - 1}")

    def accept(self, env: Envelope, payload: bytes) -> bool:
        """Store a message; True when it completes its round."""
        self.check(env)
        with self._lock:
            inbox = self._inboxes.setdefault(env.round, Inbox())
            if env.round in self._released or env.sender in inbox.payloads:
                raise DuplicateMessage(f"round {env.round} from {env.sender!r} already received")
            inbox.payloads[env.sender] = payload
            inbox.envelopes[env.sender] = env
            return len(inbox.payloads) == len(self.senders)

    def release(self, round_: int) -> Inbox:
        """Hand over a complete round; later messages for it are duplicates."""
        with self._lock:
            self._released.add(round_)
            return self._inboxes.pop(round_)
