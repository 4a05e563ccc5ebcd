"""Client: trains on its slice, sends its weighted update up, applies and evaluates the result."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
import torch

from hefl.address import file_stem
from hefl.aggregation import AcceptPoint, apply_sum, client_weight
from hefl.config import ExperimentConfig
from hefl.crypto import Scheme
from hefl.data import client_data
from hefl.errors import ExperimentFailed, OutOfWindow, PeerRefused, ProtocolError
from hefl.metrics import MetricsReport
from hefl.model import build_model, get_flat, set_flat
from hefl.nodes.base import Node, Parts
from hefl.runlog import Stopwatch
from hefl.seeds import shuffle_seed
from hefl.training import evaluate, pick_device, train_epochs, warm_up
from hefl.wire import Body, Envelope, Kind

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


class ClientNode(Node):
    role = "client"

    def __init__(self, cfg: ExperimentConfig, node_id: str, experiment: str, parts: Parts) -> None:
        super().__init__(cfg, node_id, experiment, parts)
        t = cfg.training
        # the same on every node, whatever the process was started with
        torch.set_num_threads(t.threads)
        self.device = pick_device(t.device)
        self.train, self.test, self.all_samples = client_data(
            cfg.dataset, t.seed, self.me.client_number, self.me.index
        )
        self.model = build_model(cfg.model, cfg.dataset, t.seed).to(self.device)
        self.base = get_flat(self.model)  # the global model this round started from
        self.samples = len(self.train)
        self.weight = client_weight(self.samples, self.me.client_number, self.all_samples)
        # what `main.py report` needs to redo this client's FedAvg arithmetic (the HE error)
        self.runlog.header.update(
            client_number=self.me.client_number,
            index=self.me.index,
            train_samples=self.samples,
            all_samples=self.all_samples,
            weight=self.weight,
        )
        warm_up(self.model, self.train, t, self.device)
        self.save("init", self.base)  # round 1 starts here (the HE error check needs it)
        self.downward = AcceptPoint()  # begin and global messages, once each
        self.awaiting_global = Stopwatch()  # from sending the update to the global result's arrival
        self.sent_round = -1  # the round whose update this client sent last: its global is due
        self.precomputer: Precomputer | None = None
        enc = cfg.encryption
        if enc.precompute and enc.scheme != "none" and enc.processes == 1:
            self.precomputer = Precomputer(self.scheme)
            self.precomputer.resume(-1)  # until the begin message comes

    def on_begin(self, env: Envelope, payload: Body) -> None:
        """The aggregator's begin message (round 0), once: start training."""
        self.check_downward(env, payload, allow_empty=True)
        if env.round != 0:
            raise ProtocolError(f"begin is for round 1, got round {env.round + 1}")
        self.downward.take((Kind.BEGIN, 0), "begin of round 0")
        self.pause_precompute(-1)
        self.submit(self.train_round, 0)

    def on_global(self, env: Envelope, payload: Body) -> None:
        """A round's global result, once; loaded (and so checked) here, applied on the worker."""
        self.check_downward(env, payload)
        sent = self.sent_round
        window = {sent}
        if self.cfg.network.round_deadline_s and self.downward.taken((Kind.BEGIN, 0)):
            # a straggler: the round it is still training closed at its deadline without it
            window.add(self.round)
        if env.round not in window and not self.downward.taken((Kind.GLOBAL, env.round)):
            last = f"the last update it sent is round {sent + 1}" if sent >= 0 else "no update sent"
            raise OutOfWindow(f"global result of round {env.round + 1} is not open here ({last})")
        everyone = len(self.cfg.clients())
        low = self.cfg.min_clients
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
        self.runlog.add_phase(env.round, "load", time.monotonic() - started)
        self.submit(self.apply_global, env, loaded)

    def train_round(self, r: int) -> None:
        """Train locally, then send the weighted, clipped delta, encoded by the scheme, up."""
        self.round = r
        self.runlog.begin(r)
        t = self.cfg.training
        with self.runlog.phase(r, "train"):
            seed = shuffle_seed(t.seed, self.me.index, r)
            loss = train_epochs(self.model, self.train, t, self.device, seed=seed)
            local = get_flat(self.model)
        self.save(f"r{r}.local", local)
        update = (local - self.base) * self.weight
        if not np.all(np.isfinite(update)):
            raise ExperimentFailed(
                f"training produced {np.count_nonzero(~np.isfinite(update))} non-finite "
                "weights (diverged? lower training.lr)"
            )
        clip = self.cfg.encryption.clip
        clipped = int(np.count_nonzero(np.abs(update) > clip))
        with self.runlog.phase(r, "encrypt"):
            parts = self.scheme.encrypt_parts(np.clip(update, -clip, clip))
        with self.runlog.phase(r, "serialize"):
            payload = self.scheme.serialize(parts)
        del parts
        if self.precomputer is not None:
            # done in the background before this round's update (not one of its phases)
            wall, cpu = self.precomputer.take_spent()
            self.runlog.set(
                r,
                precomputed=self.scheme.precomputed,
                precompute_s=round(wall, 6),
                precompute_cpu_s=round(cpu, 6),
            )
        self.runlog.set(r, train_loss=loss, train_samples=self.samples, clipped=clipped)
        self.sent_round = r  # before it goes: the result can come back before the answer does
        with self.runlog.phase(r, "send"):
            try:
                self.transport.send(
                    self.me.send,
                    Kind.UPDATE,
                    self.envelope(r, self.samples, 1, 1 << self.me.index),
                    payload,
                )
            except PeerRefused as exc:
                if exc.status != 422 or not self.cfg.network.round_deadline_s:
                    raise
                # late: the round closed at its deadline; its result comes down all the same
                log.warning("%s: update of round %d came late: %s", self.id, r + 1, exc)
                self.runlog.set(r, late=True)
        self.awaiting_global.start(r)
        if self.precomputer is not None and r + 1 < self.cfg.rounds:
            self.precomputer.resume(r)  # the next update's, while this round's result is on its way

    def status(self) -> dict[str, Any]:
        """With its training samples: the controller hands every client's count to the adders."""
        return {**super().status(), "samples": self.samples}

    def pause_precompute(self, wait: int) -> None:
        if self.precomputer is not None:
            self.precomputer.pause(wait)

    def close(self) -> None:
        if self.precomputer is not None:
            self.precomputer.close()
        super().close()

    def apply_global(self, env: Envelope, loaded: Any) -> None:
        """New model = round start + sum n_i x delta_i / sum n_i (FedAvg); evaluate; report."""
        r = env.round
        self.runlog.add_phase(r, "wait", self.awaiting_global.stop(r))
        with self.runlog.phase(r, "decrypt"):
            total = self.scheme.decrypt(loaded, env.contributors)
        with self.runlog.phase(r, "apply"):
            self.check_sum(r, total, env.contributors)
            new = apply_sum(self.base, total, self.me.client_number, self.all_samples, env.samples)
            set_flat(self.model, new)
            self.base = get_flat(self.model)
        self.save(f"r{r}.global", self.base)
        with self.runlog.phase(r, "evaluate"):
            loss, acc = evaluate(self.model, self.test, self.device)
        self.runlog.set(
            r, loss=loss, accuracy=acc, test_samples=len(self.test), total_samples=env.samples
        )
        self.report(r, loss, acc)
        self.runlog.end(r, final=r == self.cfg.rounds - 1)
        if r + 1 < self.cfg.rounds:
            self.train_round(r + 1)

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

    def report(self, r: int, loss: float, acc: float) -> None:
        rec = self.runlog.record(r)
        body = MetricsReport(
            loss, acc, len(self.test), rec["byte_send"], rec["byte_received"]
        ).encode()
        env = self.envelope(r, len(self.test), 1, 1 << self.me.index)
        try:
            self.transport.send(self.cfg.root, Kind.METRICS, env, body)
        except PeerRefused as exc:
            if exc.status != 422 or not self.cfg.network.round_deadline_s:
                raise
            log.warning("%s: metrics of round %d came late: %s", self.id, r + 1, exc)

    def save(self, tag: str, flat: np.ndarray) -> None:
        if self.cfg.training.save_models:
            self.runlog.path.parent.mkdir(parents=True, exist_ok=True)
            np.save(self.runlog.path.parent / f"{file_stem(self.id)}.{tag}.npy", flat)
