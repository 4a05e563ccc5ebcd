"""Client: trains on its slice, sends its weighted update up, applies and evaluates the result."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from hefl.address import file_stem
from hefl.config import ExperimentConfig
from hefl.crypto import Scheme
from hefl.crypto.frame import Payload
from hefl.errors import ConfigError, ExperimentFailed, OutOfWindow, PeerRefused, ProtocolError
from hefl.node.aggregation import AcceptPoint, apply_sum
from hefl.node.body import Outgoing, PartStream
from hefl.node.metrics import ClientMetrics, MetricsReport
from hefl.node.nodes.base import Node, Parts
from hefl.node.rejoin import RejoinStore, Saved
from hefl.node.runlog import Stopwatch
from hefl.node.wire import Envelope, Kind
from hefl.records import HostedClient
from hefl.seeds import quantize_seed

log = logging.getLogger(__name__)


class Precomputer:
    """Runs `scheme.precompute` on a background thread while the client waits, so that encrypting
    the next update costs only encoding and adding. The waits are numbered by the round whose
    downward message ends them: wait -1 before round 0 (ended by begin), wait r from sending the
    update of round r to the global result of round r. `resume(r)` starts wait r unless its end was
    already seen (a global result can overtake the sender's own return); `pause(r)` ends it: the GIL
    is then the round's. (At the lowest priority the thread would only run on idle cores: on a
    2-core laptop running 7 nodes it then made a third of the ciphertexts, and the round was
    slower.)"""

    def __init__(self, scheme: Scheme) -> None:
        self.scheme = scheme
        self._cond = threading.Condition()
        self._running = False  # a wait is on: make encryptions of zero
        self._ended = -2  # the last wait whose end was seen
        self._generation = 0  # counts resumes: a finished batch clears only its own resume
        self._closed = False
        self._spent = (0.0, 0.0)  # wall and CPU seconds since the last `take_spent`
        self._thread = threading.Thread(target=self._run, name="precompute", daemon=True)
        self._thread.start()

    def resume(self, wait: int) -> None:
        with self._cond:
            if wait > self._ended:
                self._running = True
                self._generation += 1
                self._cond.notify()

    def pause(self, wait: int) -> None:
        with self._cond:
            self._ended = max(self._ended, wait)
            self._running = False

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=5)  # it stops within one ciphertext

    def take_spent(self) -> tuple[float, float]:
        """Wall and CPU seconds the thread worked since the last call (what the update just
        encrypted used, give or take one ciphertext)."""
        with self._cond:
            spent, self._spent = self._spent, (0.0, 0.0)
        return spent

    def _stop(self) -> bool:
        return self._closed or not self._running

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._running or self._closed)
                if self._closed:
                    return
                generation = self._generation
            t0, cpu0 = time.monotonic(), time.thread_time()
            try:
                self.scheme.precompute(self._stop)
            except Exception as exc:  # the update is then encrypted at once, as without this
                log.warning("precomputing encryptions failed: %s", exc)
            with self._cond:
                wall, cpu = self._spent
                self._spent = (wall + time.monotonic() - t0, cpu + time.thread_time() - cpu0)
                if self._generation == generation:  # done (or failed): wait for the next resume
                    self._running = False


@dataclass
class Slot:
    """One logical client this node hosts: its slice's sizes and FedAvg weight (its data stays in
    the training part; its stochastic rounding is keyed by round: ClientNode.rounding). Between
    rounds a client's model is the global model, the same for every client of the node (the
    optimizer starts afresh each round), so the node keeps that one flat array for all."""

    id: str  # the sender id of its updates: the node's address, or `<address>#<j>`
    index: int  # its slice index: the key of its shuffles and rounding
    samples: int  # training samples
    tests: int  # test samples
    weight: float


class Training(Protocol):
    """What a client node trains with (hefl/node/nodes/local_training.py: torch), in its Parts."""

    slots: list[Slot]
    all_samples: int  # the training samples of every client of the experiment's slicing

    def initial(self) -> np.ndarray: ...

    def train(self, slot: Slot, base: np.ndarray, round_: int) -> tuple[np.ndarray, float]: ...

    def load(self, flat: np.ndarray) -> np.ndarray: ...

    def evaluate(self, slot: Slot) -> tuple[float, float]: ...


class ClientNode(Node):
    """A client node: one logical client, or several (`clients: k`) trained in turn in this one
    torch process, each sending its own update (or, with `local_sum`, their sum as one)."""

    role = "client"

    def __init__(self, cfg: ExperimentConfig, node_id: str, experiment: str, parts: Parts) -> None:
        super().__init__(cfg, node_id, experiment, parts)
        if parts.training is None:
            raise ValueError(f"{node_id}: a client node needs its training part")
        self.training: Training = parts.training
        ids = cfg.tree.hosted(node_id)
        self.hosts_several = (
            len(ids) > 1
        )  # one client: the node's log and messages are as they always were
        self.local_sum = (
            self.node_cfg.local_sum and self.hosts_several
        )  # add its clients' updates before sending
        self.slots = self.training.slots
        self.all_samples = self.training.all_samples
        self.base = self.training.initial()  # the global model this round started from
        self.samples = sum(s.samples for s in self.slots)
        self.test_samples = sum(s.tests for s in self.slots)
        self.mask = cfg.tree.mask(ids)
        # what `main.py report` needs to redo each client's FedAvg arithmetic (the HE error)
        if self.hosts_several:
            self.runlog.describe(
                client_number=self.node_cfg.client_number,
                all_samples=self.all_samples,
                local_sum=self.node_cfg.local_sum,
                clients=tuple(HostedClient(s.id, s.index, s.samples, s.weight) for s in self.slots),
            )
        else:
            self.runlog.describe(
                client_number=self.node_cfg.client_number,
                index=self.slots[0].index,
                train_samples=self.samples,
                all_samples=self.all_samples,
                weight=self.slots[0].weight,
            )
        self.save("init", self.base)  # round 1 starts here (the HE error check needs it)
        self.downward = AcceptPoint()  # begin and global messages, once each
        self.awaiting_global = Stopwatch()  # from sending the update to the global result's arrival
        self.sent_round = -1  # the round whose update this client sent last: its global is due
        self.precomputer: Precomputer | None = None
        enc = cfg.encryption
        if enc.precompute and enc.encrypted and enc.processes == 1:
            self.precomputer = Precomputer(self.scheme)
            self.precomputer.resume(-1)  # until the begin message comes

    def on_begin(self, env: Envelope, payload: Payload) -> None:
        """The aggregator's begin message (round 0), once: start training."""
        self.check_downward(env, payload, allow_empty=True)
        if env.round != 0:
            raise ProtocolError(f"begin is for round 1, got round {env.round + 1}")
        self.downward.take((Kind.BEGIN, 0), "begin of round 0")
        self.pause_precompute(-1)
        self.submit(self.train_round, 0)

    def on_global(self, env: Envelope, payload: Payload) -> None:
        """A round's global result, once; loaded (and so checked) here, applied on the worker."""
        self.check_downward(env, payload, shape=False)
        sent = self.sent_round
        window = {sent}
        if self.cfg.policy.partial_rounds and self.downward.taken((Kind.BEGIN, 0)):
            # a straggler: the round it is still training closed at its deadline without it
            window.add(self.round)
            if self.downward.taken((Kind.GLOBAL, env.round - 1)):
                # or later rounds did, while it was stopped or applying results late: its parent
                # sends them in order, and each is open once the one before it was taken (refused,
                # it would never come again and the client would wait forever); a round with a
                # gap before it stays closed
                window.add(env.round)
        before = (Kind.GLOBAL, env.round - 1) if env.round else (Kind.BEGIN, 0)
        if not self.drawn(env.round) and self.downward.taken(before):
            # a round that drew none of this node's clients: its result can come while the node
            # still applies the one before (its parent sends them in order)
            window.add(env.round)
        if env.round not in window and not self.downward.taken((Kind.GLOBAL, env.round)):
            last = f"the last update it sent is round {sent + 1}" if sent >= 0 else "no update sent"
            raise OutOfWindow(f"global result of round {env.round + 1} is not open here ({last})")
        everyone = len(self.cfg.sampled(env.round))
        low = self.cfg.policy.min_clients
        if not low <= env.contributors <= everyone or env.samples <= 0:
            want = f"{everyone}" if low == everyone else f"{low} to {everyone}"
            raise ProtocolError(
                f"global result of round {env.round + 1} adds {env.contributors} clients, "
                f"{env.samples} samples; expected {want} clients"
            )
        self.pause_precompute(env.round)  # checked above: the parent's, for this experiment
        started = time.monotonic()
        with self.downward.reserve((Kind.GLOBAL, env.round), f"global of round {env.round + 1}"):
            loaded = self.scheme.load(payload)  # a refused one is not taken: a corrected retry is
        # kept before the 202: a restart from here on applies it from the disk
        self.keep(lambda store: store.keep_global(env.round, env.headers(), payload))
        self.runlog.add_phase(env.round, "load", time.monotonic() - started)
        self.submit(self.apply_global, env, loaded)

    def keep(self, write: Callable[[RejoinStore], None]) -> None:
        """Write what a restart rejoins from (hefl/node/rejoin.py); a disk that refuses it ends
        the node's chance to rejoin (its files are removed: a restart comes up unconfigured, and
        is named as such), not the run."""
        store = self.store
        if store is None:
            return
        try:
            write(store)
        except OSError as exc:
            log.warning("%s: cannot keep what a restart would rejoin from: %s", self.id, exc)
            self.store = None
            store.clear()

    def rejoin(self, saved: Saved) -> int:
        """After its process restarted: take up the experiment from what this node kept on its
        own disk: the global model it last applied, and a global result it had taken but not
        applied (applied now). It then trains the next round, sending again an update its parent
        may hold already (refused as a duplicate: delivered) or closed without it (late: a
        dropout); the result of that round comes down as usual. Returns the round it rejoins at."""
        applied = saved.applied
        if saved.model is not None:
            if saved.model.shape != self.base.shape or saved.model.dtype != self.base.dtype:
                raise ConfigError(
                    f"{self.id}: the kept model is {saved.model.dtype}{list(saved.model.shape)}, "
                    f"not this experiment's {self.base.dtype}{list(self.base.shape)}"
                )
            self.base = self.training.load(saved.model)
        at = applied + 1
        if not 0 <= at < self.cfg.rounds:
            raise ConfigError(f"{self.id}: nothing to rejoin at round {at + 1}")
        self.downward.take((Kind.BEGIN, 0), "begin of round 0")
        for r in range(at):
            self.downward.take((Kind.GLOBAL, r), f"global of round {r + 1}")
        self.round = self.sent_round = at  # its global result is open, whether it sent or not
        self.pause_precompute(at - 1)
        self.runlog.rejoined_at(at)
        # the results taken before the restart, in order from `at`: applied now (each one's
        # apply trains the next round, whose update is refused as a duplicate or as late)
        expect = at
        for headers, body in saved.pending:
            env = Envelope.from_headers(headers)
            if (env.experiment, env.round) != (self.experiment, expect):
                raise ConfigError(
                    f"{self.id}: the kept global result of round {expect + 1} says experiment "
                    f"{env.experiment!r}, round {env.round + 1}"
                )
            self.downward.take((Kind.GLOBAL, expect), f"global of round {expect + 1}")
            self.pause_precompute(expect)
            self.sent_round = expect
            self.submit(self.apply_kept, env, body)
            expect += 1
        if expect == at:
            self.submit(self.train_round, at)
        return at

    def apply_kept(self, env: Envelope, body: bytes) -> None:
        """A global result kept on disk before a restart, loaded when its turn comes (one in
        memory at a time, however many were kept)."""
        self.apply_global(env, self.scheme.load(body))

    def train_round(self, r: int) -> None:
        """Each client in turn: train from the round's global model, then send its weighted,
        clipped delta, encoded by the scheme, up (with `local_sum`, their sum once, at the end)."""
        self.round = r
        self.runlog.begin(r)
        total: Any = None
        precomputed, losses, skipped = 0, [], False
        mine = self.drawn(r)
        if not mine:  # aggregator.clients_per_round drew none of them: they wait for the result
            self.sent_round = r
            self.runlog.set(r, idle=True)
        for slot in self.slots:
            if slot not in mine:
                if self.hosts_several:
                    self.runlog.set_client(r, slot.id, idle=True)
                continue
            if self.downward.taken((Kind.GLOBAL, r)):
                skipped = True
                # the round closed at its deadline without this node's last clients: they skip it
                # (their updates would only be refused) and the node applies its result
                log.warning("%s: round %d closed before its turn", slot.id, r + 1)
                self.set_figures(r, slot, late=True, skipped=True)
                continue
            streams = self.streams and not self.local_sum
            parts, loss = self.train_one(r, slot, encrypt=not streams)
            losses.append((loss * slot.samples, slot.samples))
            if streams:  # encrypted and serialized a ciphertext at a time as it is sent
                precomputed += self.send_stream(r, parts, slot)
                continue
            precomputed += self.scheme.precomputed
            if self.local_sum:
                with self.runlog.phase(r, "aggregate"):
                    total = self.add_own(total, parts)
                continue
            with self.runlog.phase(r, "serialize", self.client_key(slot)):
                payload = self.scheme.serialize(parts)
            del parts
            self.send_update(r, payload, self.envelope_of(r, [slot]), slot)
        if self.local_sum and skipped:  # closed: the sum of those that trained would be refused
            self.runlog.set(r, late=True)
        elif self.local_sum and mine:
            with self.runlog.phase(r, "serialize"):
                payload = self.scheme.serialize(total)
            del total
            self.send_update(r, payload, self.envelope_of(r, mine), None)
        if (
            self.hosts_several and losses
        ):  # the node's clients together (each one's are under `clients`)
            trained = sum(n for _, n in losses)
            self.runlog.set(
                r, train_loss=sum(w for w, _ in losses) / trained, train_samples=trained
            )
        if self.precomputer is not None:
            # done in the background before this round's update (not one of its phases)
            wall, cpu = self.precomputer.take_spent()
            self.runlog.set(
                r,
                precomputed=precomputed,
                precompute_s=round(wall, 6),
                precompute_cpu_s=round(cpu, 6),
            )
        self.awaiting_global.start(r)
        if self.precomputer is not None and r + 1 < self.cfg.rounds:
            self.precomputer.resume(r)  # the next update's, while this round's result is on its way

    def send_stream(self, r: int, update: np.ndarray, slot: Slot) -> int:
        """Send one client's clipped update, encrypted and serialized a ciphertext at a time as
        it goes out (never the whole encrypted update in memory); an attempt that fails part way
        is encrypted again (fresh randomness and seeds; the same rounding). The encrypt and
        serialize phases are the seconds spent on them inside the send, the send phase the rest.
        Returns how many ciphertexts used a precomputed encryption of zero."""
        key = self.client_key(slot)
        first = [True]

        def pieces() -> Iterator[bytes]:
            if not first[0]:
                log.info("%s: sending the update of round %d again, encrypted anew", slot.id, r + 1)
            first[0] = False
            made: Iterator[bytes] = self.scheme.stream(  # type: ignore[attr-defined]
                update, self.rounding(slot, r)
            )
            return made

        streamed = self.scheme.streamed_s  # type: ignore[attr-defined]
        enc0, ser0 = streamed
        started = time.monotonic()
        body = PartStream(pieces)
        with self.step("encrypting and sending its update"):
            self.send_update(r, body, self.envelope_of(r, [slot]), slot, phase=False)
        ended = time.monotonic()
        encrypting, serializing = streamed[0] - enc0, streamed[1] - ser0
        sending = max(0.0, ended - started - encrypting - serializing)
        # interleaved part by part; the spans lay them out one after the other
        self.runlog.add_phase(r, "encrypt", encrypting, end=started + encrypting, client=key)
        self.runlog.add_phase(r, "serialize", serializing, end=ended - sending, client=key)
        self.runlog.add_phase(r, "send", sending, end=ended, client=key)
        return int(self.scheme.precomputed)

    @property
    def streams(self) -> bool:
        """Whether updates are encrypted as they are sent: ciphertexts made in this process (not
        in worker processes) by a node that spools (a real node, not a unit test's fake)."""
        return (
            self.spool is not None
            and hasattr(self.scheme, "stream")
            and self.cfg.encryption.processes == 1
        )

    def drawn(self, r: int) -> list[Slot]:
        """This node's clients that round `r` draws (aggregator.clients_per_round; all of them
        without sampling)."""
        if not self.cfg.samples_clients:
            return list(self.slots)
        drawn = set(self.cfg.sampled(r))
        return [s for s in self.slots if s.id in drawn]

    def train_one(self, r: int, slot: Slot, encrypt: bool = True) -> tuple[Any, float]:
        """One client's training of round `r` from the global model: its update encrypted (or,
        without `encrypt`, clipped only: `send_stream` encrypts it), and its mean training
        loss."""
        key = self.client_key(slot)
        with self.step("training"), self.runlog.phase(r, "train", key):
            # every client of the node starts from the global model
            local, loss = self.training.train(slot, self.base, r)
        self.save(f"r{r}.local", local, slot)
        update = (local - self.base) * slot.weight
        if not np.all(np.isfinite(update)):
            raise ExperimentFailed(
                f"training produced {np.count_nonzero(~np.isfinite(update))} non-finite "
                f"weights{f' (client {slot.id})' if self.hosts_several else ''} "
                "(diverged? lower training.lr)"
            )
        clip = self.cfg.encryption.clip
        clipped = int(np.count_nonzero(np.abs(update) > clip))
        self.set_figures(r, slot, train_loss=loss, train_samples=slot.samples, clipped=clipped)
        if not encrypt:
            return np.clip(update, -clip, clip), loss
        with self.step("encrypting its update"), self.runlog.phase(r, "encrypt", key):
            parts = self.scheme.encrypt_parts(np.clip(update, -clip, clip), self.rounding(slot, r))
        return parts, loss

    def rounding(self, slot: Slot, r: int) -> np.random.Generator:
        """`slot`'s stochastic rounding (bfv, paillier) in round `r`: a stream of its own per
        round, so that a client that rejoined after a restart draws what it would have drawn."""
        return np.random.default_rng(quantize_seed(self.cfg.training.seed, slot.index, r))

    def add_own(self, total: Any, parts: Any) -> Any:
        """`local_sum`: add one of this node's updates into their running total, as a switch
        would (parts that worker processes made come serialized: loaded first)."""
        if isinstance(parts, list) and parts and isinstance(parts[0], bytes | bytearray):
            return self.scheme.load_into(total, self.scheme.serialize(parts))
        return self.scheme.add_into(total, parts)

    def envelope_of(self, r: int, slots: list[Slot]) -> Envelope:
        """The envelope of an update holding `slots`' deltas: one client's under its own id, or
        the node's sum under the node's."""
        sender = slots[0].id if len(slots) == 1 else self.id
        mask = 0
        for s in slots:
            mask |= 1 << s.index
        return Envelope(self.experiment, r, sender, sum(s.samples for s in slots), len(slots), mask)

    def send_update(
        self, r: int, payload: Outgoing, env: Envelope, slot: Slot | None, phase: bool = True
    ) -> None:
        """Send one update up; one that came late (the round closed at its deadline) is logged:
        the round's result comes down all the same. `phase`: time it as the send phase (a
        stream's caller splits the time itself)."""
        self.sent_round = r  # before it goes: the result can come back before the answer does
        with (
            self.step(f"sending its update to {self.node_cfg.send}"),
            self.runlog.phase(r, "send", self.client_key(slot)) if phase else nullcontext(),
        ):
            try:
                self.transport.send(self.node_cfg.send, Kind.UPDATE, env, payload)
            except PeerRefused as exc:
                if not self.came_late(exc):
                    raise
                log.warning("%s: update of round %d came late: %s", env.sender, r + 1, exc)
                if slot is not None and self.hosts_several:
                    self.runlog.set_client(r, slot.id, late=True)
                else:
                    self.runlog.set(r, late=True)
        if slot is not None and self.hosts_several:
            self.runlog.set_client(r, slot.id, update_bytes=len(payload))

    def came_late(self, exc: PeerRefused) -> bool:
        """Whether a refusal only says the round closed without this message: a 422 where rounds
        may complete without some clients (logged, not a failure)."""
        return exc.status == 422 and self.cfg.policy.tolerate_dropouts

    def client_key(self, slot: Slot | None) -> str | None:
        """Where a client's own figures go in the log: its entry under `clients` when the node
        hosts several, else the node's record itself (None)."""
        return slot.id if slot is not None and self.hosts_several else None

    def set_figures(self, r: int, slot: Slot, **values: Any) -> None:
        if self.hosts_several:
            self.runlog.set_client(r, slot.id, **values)
        else:
            self.runlog.set(r, **values)

    def status(self) -> dict[str, Any]:
        """With its training samples (a node hosting several clients: each one's too): the
        controller hands every client's count to the adders."""
        out = {**super().status(), "samples": self.samples}
        if self.hosts_several:
            out["clients"] = {s.id: s.samples for s in self.slots}
        return out

    def pause_precompute(self, wait: int) -> None:
        if self.precomputer is not None:
            self.precomputer.pause(wait)

    def close(self) -> None:
        if self.precomputer is not None:
            self.precomputer.close()
        super().close()

    def apply_global(self, env: Envelope, loaded: Any) -> None:
        """New model = round start + sum n_i x delta_i / sum n_i (FedAvg), once for the node (every
        client it hosts started the round from the same model); each client evaluates it on its
        own test slice; one report goes up."""
        r = env.round
        self.runlog.add_phase(r, "wait", self.awaiting_global.stop(r))
        with self.step("decrypting the global result"), self.runlog.phase(r, "decrypt"):
            total = self.scheme.decrypt(loaded, env.contributors)
        with self.step("applying the global result"), self.runlog.phase(r, "apply"):
            self.check_sum(r, total, env.contributors)
            new = apply_sum(
                self.base, total, self.node_cfg.client_number, self.all_samples, env.samples
            )
            self.base = self.training.load(new)
        self.save(f"r{r}.global", self.base)
        if not self.drawn(r):  # the round's figures are its contributors': nothing to report
            self.runlog.end(r, final=r == self.cfg.rounds - 1)
            self.next_round(r)
            return
        figures = []
        for slot in self.slots:
            with self.runlog.phase(r, "evaluate", self.client_key(slot)):
                loss, acc = self.training.evaluate(slot)
            figures.append(ClientMetrics(slot.id, loss, acc, slot.tests))
            if self.hosts_several:
                self.runlog.set_client(r, slot.id, loss=loss, accuracy=acc, test_samples=slot.tests)
        tests = self.test_samples
        loss, acc = figures[0].loss, figures[0].accuracy
        if self.hosts_several:  # the node's clients together, weighted by test samples
            loss = sum(f.loss * f.test_samples for f in figures) / tests
            acc = sum(f.accuracy * f.test_samples for f in figures) / tests
        self.runlog.set(r, loss=loss, accuracy=acc, test_samples=tests, total_samples=env.samples)
        self.report(r, loss, acc, figures if self.hosts_several else [])
        self.runlog.end(r, final=r == self.cfg.rounds - 1)
        self.next_round(r)

    def next_round(self, r: int) -> None:
        """Round `r` is done here: keep the model (a restart rejoins from it) and train the next
        round, or, after the last, clear what a restart would rejoin from."""
        if r + 1 < self.cfg.rounds:
            self.keep(lambda store: store.keep_model(r, self.base))  # the round is done
            self.train_round(r + 1)
        elif self.store is not None:  # finished: nothing to rejoin
            self.store.clear()

    def check_sum(self, r: int, total: np.ndarray, contributors: int) -> None:
        """A decrypted sum of `contributors` clipped updates lies within contributors x clip, plus
        the scheme's error (1% of that bound at most: CKKS noise, BFV rounding); anything else
        (another key pair, a corrupted ciphertext) stops the run here, named, instead of
        training on garbage."""
        bound = contributors * self.cfg.encryption.clip
        bad = int(np.count_nonzero(~np.isfinite(total)))
        top = float(np.max(np.abs(total))) if total.size and not bad else 0.0
        if bad or top > bound * 1.01 + 1e-3:
            found = f"{bad} non-finite values" if bad else f"a value of magnitude {top:.6g}"
            raise ProtocolError(
                f"global result of round {r + 1} decrypts to {found}, beyond {contributors} "
                f"client(s) x clip {self.cfg.encryption.clip:g}"
            )

    def report(self, r: int, loss: float, acc: float, figures: list[ClientMetrics]) -> None:
        rec = self.runlog.record(r)
        body = MetricsReport(
            loss, acc, self.test_samples, rec.byte_send, rec.byte_received, tuple(figures)
        ).encode()
        env = self.envelope(r, self.test_samples, len(self.slots), self.mask)
        try:
            with self.step(f"reporting its metrics to the aggregator {self.cfg.tree.root}"):
                self.transport.send(self.cfg.tree.root, Kind.METRICS, env, body)
        except PeerRefused as exc:
            if not self.came_late(exc):
                raise
            log.warning("%s: metrics of round %d came late: %s", self.id, r + 1, exc)

    def save(self, tag: str, flat: np.ndarray, slot: Slot | None = None) -> None:
        """With training.save_models: a model beside the logs; a client's own (its local model)
        under its id when the node hosts several, the node's (global) under the node's."""
        if self.cfg.training.save_models:
            self.runlog.path.parent.mkdir(parents=True, exist_ok=True)
            owner = slot.id if slot is not None and self.hosts_several else self.id
            np.save(self.runlog.path.parent / f"{file_stem(owner)}.{tag}.npy", flat)
