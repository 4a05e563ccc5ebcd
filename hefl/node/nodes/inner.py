"""Inner nodes of the tree (switches and the aggregator): they accept their children's updates and
add them."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from hefl.config import ExperimentConfig
from hefl.crypto.frame import Payload
from hefl.errors import PeerUnreachable, ProtocolError
from hefl.node.aggregation import RoundBuffer
from hefl.node.body import FileBody, Incoming, Outgoing
from hefl.node.nodes.base import Node, Parts
from hefl.node.runlog import Stopwatch
from hefl.node.wire import Envelope, Kind

log = logging.getLogger(__name__)


class InnerNode(Node, ABC):
    """A node receiving updates from below; every update is accepted or refused in `on_update`."""

    def __init__(self, cfg: ExperimentConfig, node_id: str, experiment: str, parts: Parts) -> None:
        super().__init__(cfg, node_id, experiment, parts)
        self.children = cfg.tree.children(node_id)
        self.adds = True  # False on a dumb switch
        self.declared = dict(parts.samples)  # each client's samples, when the controller gave them
        self.buffer = RoundBuffer(
            experiment, cfg.tree.contributors(node_id), cfg.rounds, self.combine
        )
        self.first_update = Stopwatch()  # from the first child's update to the last one's
        # one update loaded and added at a time: TenSEAL holds the GIL, so concurrent loads would
        # not be faster
        self._adding = threading.Lock()
        # children are sent to at once (up to 16 at a time): a slow child does not delay its
        # siblings; the transport's one HTTP session (connection pools per peer) is shared
        self._fan_out = ThreadPoolExecutor(
            min(16, max(1, len(self.children))), thread_name_prefix=f"{self.role}-send"
        )
        # downward messages: one queue per child, so that a child takes them in order (a paused
        # one that resumes gets round r's result before round r + 1's) while the others go on
        self._down = {
            child: ThreadPoolExecutor(1, thread_name_prefix=f"{self.role}-down")
            for child in self.children
        }

    def on_update(self, env: Envelope, payload: Payload) -> None:
        """Accept one child's update (a duplicate raises DuplicateMessage) and add it to its round's
        total at once; the work a complete round causes goes to the worker. The payload is loaded
        (for ciphertexts: deserialized and checked in this node's context) once, here, one
        ciphertext at a time, as its parts come from the socket; one refused part way is taken
        back out of the total (read again from the body's spool on disk). One update is added at a
        time: one that arrives meanwhile is spooled to disk as it comes, then added from there."""
        # reserved first: a retried update is refused before its body is read
        with self.buffer.reserve(env):
            members = self.check_members(env)
            if env.samples <= 0:
                raise ProtocolError(f"{env.sender!r} sent an update of {env.samples} samples")
            if self.declared:
                want = sum(self.declared[c] for c in self.cfg.tree.members(members))
                if env.samples != want:
                    raise ProtocolError(
                        f"{env.sender!r} says its update holds {env.samples} samples; its "
                        f"clients declared {want}"
                    )
            self.scheme.check_sum(payload, env.contributors)  # plaintext: finite, in range
            with self.adding_turn(payload):
                started, added = time.monotonic(), self.scheme.adding_s
                wire = getattr(payload, "wire_s", 0.0)
                if self.adds:  # deserialized, checked and added in one pass
                    complete = self.buffer.fill(env, payload)
                else:
                    self.scheme.verify(payload)  # checked, then forwarded as it came
                    complete = self.buffer.fill(env, None)
                    if isinstance(payload, Incoming):  # taken: its spool is the worker's now
                        payload = payload.keep()
                # the pass split into loading (and checking) and adding, one after the other;
                # the time spent waiting for the body's bytes is the sender's, not this node's
                ended, adding = time.monotonic(), self.scheme.adding_s - added
                waited = getattr(payload, "wire_s", 0.0) - wire
                self.runlog.add_phase(
                    env.round, "load", ended - started - adding - waited, end=ended - adding
                )
                self.runlog.add_phase(env.round, "aggregate", adding, end=ended)
                # started before the worker may stop it (`accepted` submits a complete round)
                self.first_update.start(env.round, first=True)
        self.accepted(env, payload, complete)

    @contextlib.contextmanager
    def adding_turn(self, payload: Payload) -> Iterator[None]:
        """This update's turn to be added: at once if no other is being added (its parts are added
        as they arrive); else its body is first read to its end into its spool (a sender is never
        left waiting on a full socket), then added from there when the turn comes."""
        if not self._adding.acquire(blocking=False):
            if isinstance(payload, Incoming):
                payload.read_all()
            self._adding.acquire()
        try:
            yield
        finally:
            self._adding.release()

    def drawn_under(self, node: str, round_: int) -> tuple[str, ...]:
        """The clients below `node` that round `round_` draws (every one without sampling)."""
        below = self.cfg.tree.clients_under(node)
        if not self.cfg.samples_clients:
            return below
        drawn = set(self.cfg.sampled(round_))
        return tuple(c for c in below if c in drawn)

    def expected(self, round_: int) -> tuple[str, ...]:
        """The senders round `round_` waits for: those with a drawn client below them."""
        return tuple(s for s in self.cfg.tree.contributors(self.id) if self.drawn_under(s, round_))

    def open_round(self, round_: int) -> None:
        """Take updates of `round_` (and of no other) from now on, from the senders it draws."""
        self.buffer.open(round_, only=True)
        if self.cfg.samples_clients:
            self.buffer.expect(round_, self.expected(round_))

    def check_members(self, env: Envelope) -> int:
        """The clients an update adds (its mask): all the clients below its sender that the round
        drew, or, with a round deadline, some of them (a partial sum a switch sent at the
        deadline)."""
        clients = self.drawn_under(env.sender, env.round)
        if not clients:
            raise ProtocolError(
                f"{env.sender!r} has no client drawn in round {env.round + 1} "
                "(aggregator.clients_per_round)"
            )
        if not env.members and env.contributors != len(clients):
            raise ProtocolError(
                f"{env.sender!r} claims {env.contributors} contributors; "
                f"it has {len(clients)} clients"
            )
        full = self.cfg.tree.mask(clients)
        members = env.members or full
        if members & ~full or members.bit_count() != env.contributors:
            raise ProtocolError(
                f"{env.sender!r} claims {env.contributors} contributors, clients "
                f"{members:x}: not a set of its {len(clients)} clients"
            )
        if members != full and not self.cfg.policy.partial_rounds:
            raise ProtocolError(
                f"{env.sender!r} sent a sum of {env.contributors} of its {len(clients)} clients; "
                "this experiment has no round deadline"
            )
        return members

    def combine(self, total: Any, payload: Any) -> Any:
        """How the buffer folds an update into its round's total (under its lock)."""
        return self.scheme.load_into(total, payload) if self.adds else None

    def accepted(self, env: Envelope, payload: Any, complete: bool) -> None:
        if complete:
            self.submit(self.complete, env.round)

    @abstractmethod
    def complete(self, round_: int) -> None:
        """Add (or close) a round whose updates have all arrived; runs on the worker."""

    def add_round(self, round_: int) -> tuple[Envelope, Outgoing] | None:
        """Release a round (complete, or at its deadline with what came: an update still arriving
        is cut short and taken back out) and add its payloads into one message of this node's;
        its log names who contributed and who is missing. None: nothing came (at a deadline)."""
        self.round = round_
        self.runlog.add_phase(round_, "wait", self.first_update.stop(round_))
        inbox = self.buffer.release(round_)
        if not inbox.envelopes:
            self.record_members(round_, 0)
            return None
        with self.runlog.phase(round_, "serialize"):
            payload = self.dump(inbox.total)
        inbox.total = None
        trim_memory()
        envs = inbox.envelopes.values()
        members = self.members_of(envs)
        env = self.envelope(
            round_, sum(e.samples for e in envs), sum(e.contributors for e in envs), members
        )
        self.record_members(round_, members)
        return env, payload

    def members_of(self, envs: Iterable[Envelope]) -> int:
        """The clients (mask) that the updates of `envs` add together."""
        members = 0
        for e in envs:
            members |= e.members or self.cfg.tree.mask(self.cfg.tree.clients_under(e.sender))
        return members

    def record_members(self, round_: int, members: int) -> None:
        present = set(self.cfg.tree.members(members))
        below = self.drawn_under(self.id, round_)
        self.runlog.set(
            round_,
            contributors=tuple(c for c in below if c in present),
            missing=tuple(c for c in below if c not in present),
        )

    def flush_children(self, round_: int) -> None:
        """At a round's deadline: ask every child switch, at once, to send up what it has (each
        flushes its own child switches first); returns when all answered or failed (logged)."""
        switches = [c for c in self.children if self.cfg.nodes[c].type == "switch"]
        sends = [
            self._fan_out.submit(self.transport.send, child, Kind.FLUSH, self.envelope(round_), b"")
            for child in switches
        ]
        for child, f in zip(switches, sends, strict=True):
            exc = f.exception()
            if exc is not None:
                log.warning(
                    "%s: flush of round %d at %s failed: %s", self.id, round_ + 1, child, exc
                )

    def send_down(self, kind: Kind, env: Envelope, payload: Outgoing) -> None:
        """Send a begin or global message to every child at once, timed as the round's `send`
        phase (until the last child answered; wall time only: the sending threads' CPU is not the
        worker's). Every child that failed is logged; the first one's error is raised. With a
        round deadline the worker waits for the children one deadline at most: a child that does
        not answer (a paused straggler) must not hold up the next round's flush, which waits for
        this worker; its send goes on in its queue (later ones after it, in order) and a failure
        is logged, a dropout."""
        if self.closed:
            return
        started = time.monotonic()
        sends = {
            child: self._down[child].submit(self.deliver, child, kind, env, payload)
            for child in self.children
        }
        if isinstance(payload, FileBody):
            remove_when_done(payload, list(sends.values()))
        if self.cfg.policy.tolerate_dropouts:
            wait(sends.values(), timeout=self.cfg.policy.deadline_s)
            self.runlog.add_phase(env.round, "send", time.monotonic() - started)
            for child, sent in sends.items():
                sent.add_done_callback(functools.partial(self._skipped, kind, env.round, child))
            return
        errors = {child: f.exception() for child, f in sends.items()}
        self.runlog.add_phase(env.round, "send", time.monotonic() - started)
        failed = [(child, exc) for child, exc in errors.items() if exc is not None]
        for child, exc in failed[1:]:
            log.error(
                "%s: %s of round %d to %s failed too: %s",
                self.id,
                kind.value,
                env.round + 1,
                child,
                exc,
            )
        if failed:
            with self.step(f"sending the {kind.value} message of round {env.round + 1} down"):
                raise failed[0][1]

    def deliver(self, child: str, kind: Kind, env: Envelope, payload: Outgoing) -> Any:
        """Send a downward message to one child (in its own queue). A child that cannot be reached
        (refused, reset: its process restarting) is tried again every second for
        network.startup_timeout_s: a client that restarted rejoins from its disk and takes the
        message then; one that answers as unconfigured, or never, fails as before."""
        give_up = time.monotonic() + self.cfg.network.startup_timeout_s
        while True:
            try:
                return self.transport.send(child, kind, env, payload)
            except PeerUnreachable as exc:
                if exc.silent or self.closed or time.monotonic() > give_up:
                    raise
                log.info(
                    "%s: %s of round %d to %s: %s; trying again",
                    self.id,
                    kind.value,
                    env.round + 1,
                    child,
                    exc,
                )
                time.sleep(1.0)

    def _skipped(self, kind: Kind, round_: int, child: str, sent: Future[Any]) -> None:
        """A downward message a child did not take, with a round deadline: a dropout, logged."""
        exc = None if sent.cancelled() else sent.exception()
        if exc is not None:
            log.warning(
                "%s: %s of round %d not delivered to %s (skipped): %s",
                self.id,
                kind.value,
                round_ + 1,
                child,
                exc,
            )

    def close(self) -> None:
        super().close()
        for pool in (self._fan_out, *self._down.values()):
            pool.shutdown(wait=False, cancel_futures=True)


def trim_memory() -> bool:
    """Hand the free memory of every malloc arena back to the system (glibc's malloc_trim): a
    round's total is made by a request thread (in its arena) and freed here; without this, the
    next round's total, made by another thread, takes a second total's worth (a ResNet-18
    switch peaked at 595 MiB, with it 418). False where the C library has none."""
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):
        return False


def remove_when_done(body: FileBody, sends: list[Future[Any]]) -> None:
    """Remove a file body once every send of it ended (sent, failed or cancelled)."""
    left = [len(sends)]
    lock = threading.Lock()

    def one_done(_: Future[Any]) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            body.remove()

    if not sends:
        body.remove()
    for f in sends:
        f.add_done_callback(one_done)
