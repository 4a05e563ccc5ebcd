"""Round buffers: the one place where a node accepts or refuses each update it adds."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hefl.errors import DuplicateMessage, ProtocolError
from hefl.wire import Envelope, check_scope

log = logging.getLogger(__name__)


@dataclass
class Inbox:
    """The messages of one round at one node, keyed by sender."""

    payloads: dict[str, Any] = field(default_factory=dict)  # as the scheme loaded them
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
        """Raise ProtocolError if `env` does not belong here."""
        check_scope(env, self.experiment, self.rounds)
        if env.sender not in self.senders:
            raise ProtocolError(f"sender {env.sender!r} is not one this node adds (expected {list(self.senders)})")

    def check_new(self, env: Envelope) -> None:
        """Raise DuplicateMessage if this (round, sender) was already taken (`accept` decides for sure)."""
        with self._lock:
            if env.round in self._released or env.sender in self._inboxes.get(env.round, Inbox()).payloads:
                raise DuplicateMessage(f"round {env.round} from {env.sender!r} already received")

    def accept(self, env: Envelope, payload: Any) -> bool:
        """Store a message; True when it completes its round."""
        self.check(env)
        with self._lock:
            if env.round in self._released or env.sender in self._inboxes.get(env.round, Inbox()).payloads:
                raise DuplicateMessage(f"round {env.round} from {env.sender!r} already received")
            inbox = self._inboxes.setdefault(env.round, Inbox())
            inbox.payloads[env.sender] = payload
            inbox.envelopes[env.sender] = env
            return len(inbox.payloads) == len(self.senders)

    def release(self, round_: int) -> Inbox:
        """Hand over a complete round; later messages for it are duplicates."""
        with self._lock:
            self._released.add(round_)
            return self._inboxes.pop(round_)
