"""Every node's accept point (reserve, fill or cancel) and FedAvg's arithmetic as pure functions."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hefl.errors import DuplicateMessage, OutOfWindow, ProtocolError
from hefl.node.wire import Envelope, check_scope

if TYPE_CHECKING:
    from hefl.config import ExperimentConfig


# ---------------------------------------------------------------- accepting messages


class AcceptPoint:
    """Each key is taken once. `reserve` claims it under the lock (a second claim is a duplicate);
    if the work inside the `with` fails, the claim is cancelled, so a corrected retry is taken."""

    def __init__(self) -> None:
        self._taken: set[Hashable] = set()
        self._lock = threading.Lock()

    @contextmanager
    def reserve(self, key: Hashable, what: str) -> Iterator[None]:
        with self._lock:
            if key in self._taken:
                raise DuplicateMessage(f"{what} already received")
            self._taken.add(key)
        try:
            yield
        except BaseException:
            with self._lock:
                self._taken.discard(key)
            raise

    def take(self, key: Hashable, what: str) -> None:
        """Claim `key` for good (nothing to load first); a second claim is a duplicate."""
        with self.reserve(key, what):
            pass

    def taken(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._taken


@dataclass
class Inbox:
    """The messages of one round at one node, keyed by sender; with a `combine` function, their
    payloads are folded into `total` as they arrive instead."""

    payloads: dict[str, Any] = field(default_factory=dict)  # as the scheme loaded them
    envelopes: dict[str, Envelope] = field(default_factory=dict)
    total: Any = None
    filling: int = 0  # payloads being combined into `total` now
    # how to stop each payload being combined (a body still arriving: hefl.node.body.Incoming)
    cancels: dict[str, Callable[[], None]] = field(default_factory=dict)


class RoundBuffer:
    """Collects the messages a node adds for each round; says when a round is complete.

    A message is accepted only for this experiment, an expected sender and a round in range (else
    ProtocolError, 400); a second message with the same (round, sender) is a DuplicateMessage (409),
    also once the round is out; a first one for a round that is not open is OutOfWindow (422). The
    node opens rounds as its protocol moves on (`open`); `release` closes one. With
    `combine(total or None, payload) -> total`, a payload is folded into its round's total as it is
    filled (an adder adds on arrival) and not kept.
    """

    def __init__(
        self,
        experiment: str,
        senders: Sequence[str],
        rounds: int,
        combine: Callable[[Any, Any], Any] | None = None,
    ) -> None:
        self.experiment = experiment
        self.senders = tuple(senders)
        self.rounds = rounds
        self.combine = combine
        self.accept_point = AcceptPoint()
        self._inboxes: dict[int, Inbox] = {}
        self._open: set[int] = set()
        self._closed: set[int] = set()
        self._expected: dict[int, tuple[str, ...]] = {}
        self._lock = threading.Lock()
        self._filled = threading.Condition(self._lock)  # a payload was combined (or failed to)

    def open(self, round_: int, only: bool = False) -> None:
        """Take messages for `round_` from now on; with `only`, for no other round."""
        with self._lock:
            if only:
                self._closed |= self._open - {round_}
                self._open.clear()
            self._open.add(round_)

    def is_open(self, round_: int) -> bool:
        with self._lock:
            return round_ in self._open

    def is_closed(self, round_: int) -> bool:
        """Whether `round_` was open here and is no longer (released)."""
        with self._lock:
            return round_ in self._closed

    def check(self, env: Envelope) -> None:
        """Raise ProtocolError if `env` does not belong here."""
        check_scope(env, self.experiment, self.rounds)
        if env.sender not in self.senders:
            raise ProtocolError(
                f"sender {env.sender!r} is not one this node adds (expected {list(self.senders)})"
            )

    @contextmanager
    def reserve(self, env: Envelope) -> Iterator[None]:
        """Check `env` and claim its (round, sender) while the payload loads inside the `with`."""
        self.check(env)
        key = (env.round, env.sender)
        what = f"round {env.round + 1} from {env.sender!r}"
        if not self.accept_point.taken(key) and not self.is_open(env.round):
            if self.is_closed(env.round):  # a straggler's, after the round's deadline
                raise OutOfWindow(f"{what}: round closed")
            raise OutOfWindow(f"{what} is not open here ({self.window()})")
        with self.accept_point.reserve(key, what):
            yield

    def window(self) -> str:
        """The open rounds, counted from 1 as the round lines do (for error lines)."""
        with self._lock:
            rounds = sorted(r + 1 for r in self._open)
        if not rounds:
            return "no round is open"
        return "open: round " + ", ".join(map(str, rounds))

    def fill(self, env: Envelope, payload: Any) -> bool:
        """Store (or combine) a reserved message's payload; True when it completes its round (every
        expected sender is in). A round closed meanwhile (its deadline passed) refuses it. Combining
        happens outside the buffer's lock (a body may still be arriving: a node's other requests
        go on meanwhile) and one at a time (the caller's turn); `release` waits for it to end."""
        with self._lock:
            if env.round not in self._open:
                raise OutOfWindow(f"round {env.round + 1} from {env.sender!r}: round closed")
            inbox = self._inboxes.setdefault(env.round, Inbox())
            inbox.filling += 1
            cancel = getattr(payload, "cancel", None)
            if cancel is not None:
                inbox.cancels[env.sender] = cancel
        try:
            if self.combine is None:
                inbox.payloads[env.sender] = payload
            else:
                inbox.total = self.combine(inbox.total, payload)
        except BaseException:
            with self._lock:
                inbox.filling -= 1
                inbox.cancels.pop(env.sender, None)
                self._filled.notify_all()
                closed = env.round not in self._open
            if closed:  # cut short by the round's close (its deadline): taken back out, late
                raise OutOfWindow(
                    f"round {env.round + 1} from {env.sender!r}: round closed while its update "
                    "arrived"
                ) from None
            raise
        with self._lock:  # in the total and among the envelopes at once, for `release`
            inbox.envelopes[env.sender] = env
            inbox.filling -= 1
            inbox.cancels.pop(env.sender, None)
            self._filled.notify_all()
            return set(self._expected.get(env.round, self.senders)) <= inbox.envelopes.keys()

    def expect(self, round_: int, senders: Sequence[str]) -> None:
        """The senders that complete `round_` (by default every sender): a round's metrics come
        from the clients that contributed to it."""
        with self._lock:
            self._expected[round_] = tuple(senders)

    def arrived(self, round_: int) -> list[Envelope]:
        """The envelopes of what `round_` holds so far."""
        with self._lock:
            inbox = self._inboxes.get(round_)
            return list(inbox.envelopes.values()) if inbox else []

    def accept(self, env: Envelope, payload: Any) -> bool:
        """Reserve and fill in one step (for payloads that need no loading)."""
        with self.reserve(env):
            return self.fill(env, payload)

    def release(self, round_: int) -> Inbox:
        """Hand over a complete round and close it; its (round, sender) keys stay taken. A payload
        still being combined into it (a body still arriving, at a deadline) is cut short: what it
        added is taken back out, its sender told the round closed; this waits for that (CPU
        work, not the sender's bytes)."""
        with self._lock:
            inbox = self._inboxes.get(round_)
            if inbox is not None and inbox.filling:
                self._closed.add(round_)
                self._open.discard(round_)
                for cancel in list(inbox.cancels.values()):
                    cancel()
                self._filled.wait_for(lambda: inbox.filling == 0)
            if round_ in self._open:
                self._closed.add(round_)
            self._open.discard(round_)
            self._expected.pop(round_, None)
            return self._inboxes.pop(round_, Inbox())


# ---------------------------------------------------------------- FedAvg


def expected_contributors(cfg: ExperimentConfig, node_id: str) -> int:
    """How many clients' updates a message from `node_id` must add: the clients under it (for the
    aggregator, every client). The one place the rule lives."""
    return len(cfg.tree.clients_under(node_id))


def client_weight(samples: int, clients: int, total_samples: int) -> float:
    """What a client multiplies its delta by: n_i x m / N (m clients, N samples in all), so that the
    sum over all clients is m x the sample-weighted mean delta, within [-m clip, m clip]."""
    return samples * clients / total_samples


def apply_sum(
    base: np.ndarray, total: np.ndarray, clients: int, total_samples: int, summed_samples: int
) -> np.ndarray:
    """FedAvg's new model from the decrypted sum of weighted deltas: base + sum x N / (m x n_sum),
    where n_sum is the samples of the clients that contributed (N when every client did)."""
    out: np.ndarray = base + total * (total_samples / (clients * summed_samples))
    return out


def weighted_metrics(reports: Sequence[tuple[int, float, float]]) -> tuple[float, float]:
    """(loss, accuracy) over (test samples, loss, accuracy) reports, weighted by test samples."""
    n = sum(samples for samples, _, _ in reports)
    loss = sum(samples * loss for samples, loss, _ in reports) / n
    accuracy = sum(samples * acc for samples, _, acc in reports) / n
    return loss, accuracy
