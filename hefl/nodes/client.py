"""Client: trains on its slice, sends its weighted update up, applies and evaluates the result."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
import torch

from hefl.address import file_stem
from hefl.aggregation import AcceptPoint, apply_sum, client_weight, expected_contributors
from hefl.config import ExperimentConfig
from hefl.crypto import Scheme
from hefl.data import client_data
from hefl.errors import ExperimentFailed, ProtocolError
from hefl.metrics import MetricsReport
from hefl.model import build_model, get_flat, set_flat
from hefl.nodes.base import Node, Parts
from hefl.runlog import Stopwatch
from hefl.seeds import shuffle_seed
from hefl.training import evaluate, pick_device, train_epochs, warm_up
from hefl.wire import Envelope, Kind

log = logging.getLogger(__name__)


class Precomputer:
    """Runs `scheme.precompute` on a background thread while the client waits (before round 0 and
    between sending its update and the global result's arrival), so that encrypting the next update
    costs only encoding and adding. Paused while the client works: the GIL is then the round's.
    (At the lowest priority it would only run on idle cores: on a 2-core laptop running 7 nodes it
    then made a third of the ciphertexts and the round was slower.)"""

    def __init__(self, scheme: Scheme) -> None:
        self.scheme = scheme
        self._go = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        self._spent = (0.0, 0.0)  # wall and CPU seconds since the last `take_spent`
        self._thread = threading.Thread(target=self._run, name="precompute", daemon=True)
        self._thread.start()

    def resume(self) -> None:
        self._go.set()

    def pause(self) -> None:
        self._go.clear()

    def close(self) -> None:
        self._closed = True
        self._go.set()

    def take_spent(self) -> tuple[float, float]:
        """Wall and CPU seconds the thread worked since the last call (what the update just
        encrypted used, give or take one ciphertext)."""
        with self._lock:
            spent, self._spent = self._spent, (0.0, 0.0)
        return spent

    def _stop(self) -> bool:
        return self._closed or not self._go.is_set()

    def _run(self) -> None:
        while True:
            self._go.wait()
            if self._closed:
                return
            t0, cpu0 = time.monotonic(), time.thread_time()
            try:
                made = self.scheme.precompute(self._stop)
            except Exception as exc:  # the update is then encrypted at once, as without this
                log.warning("precomputing encryptions failed: %s", exc)
                made = 0
            with self._lock:
                wall, cpu = self._spent
                self._spent = (wall + time.monotonic() - t0, cpu + time.thread_time() - cpu0)
            if made == 0:  # all made (or nothing to make): wait for the next resume
                self._go.clear()


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
        warm_up(self.model, self.train, t, self.device)
        self.downward = AcceptPoint()  # begin and global messages, once each
        self.awaiting_global = Stopwatch()  # from sending the update to the global result's arrival
        self.precomputer: Precomputer | None = None
        if cfg.encryption.precompute and cfg.encryption.scheme != "none":
            self.precomputer = Precomputer(self.scheme)
            self.precomputer.resume()  # until the begin message comes

    def on_begin(self, env: Envelope, payload: bytes) -> None:
        """The aggregator's begin message (round 0), once: start training."""
        self.check_downward(env, payload, allow_empty=True)
        if env.round != 0:
            raise ProtocolError(f"begin is for round 0, got round {env.round}")
        self.downward.take((Kind.BEGIN, 0), "begin of round 0")
        self.pause_precompute()
        self.submit(self.train_round, 0)

    def on_global(self, env: Envelope, payload: bytes) -> None:
        """A round's global result, once; loaded (and so checked) here, applied on the worker."""
        self.check_downward(env, payload)
        expected = expected_contributors(self.cfg, self.cfg.root)
        if env.contributors != expected or env.samples <= 0:
            raise ProtocolError(
                f"global result of round {env.round} adds {env.contributors} clients, "
                f"{env.samples} samples; expected {expected} clients"
            )
        self.pause_precompute()
        started = time.monotonic()
        with self.downward.reserve((Kind.GLOBAL, env.round), f"global of round {env.round}"):
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
        with self.runlog.phase(r, "serialize"):
            payload = self.scheme.encrypt(np.clip(update, -clip, clip))
        if self.precomputer is not None:
            wall, cpu = self.precomputer.take_spent()
            self.runlog.add_phase(r, "precompute", wall, cpu)
            self.runlog.set(r, precomputed=self.scheme.precomputed)
        self.runlog.set(r, train_loss=loss, train_samples=self.samples, clipped=clipped)
        with self.runlog.phase(r, "send"):
            self.transport.send(
                self.me.send, Kind.UPDATE, self.envelope(r, self.samples, 1), payload
            )
        self.awaiting_global.start(r)
        if self.precomputer is not None and r + 1 < self.cfg.rounds:
            self.precomputer.resume()  # the next update's, while this round's result is on its way

    def pause_precompute(self) -> None:
        if self.precomputer is not None:
            self.precomputer.pause()

    def close(self) -> None:
        if self.precomputer is not None:
            self.precomputer.close()
        super().close()

    def apply_global(self, env: Envelope, loaded: Any) -> None:
        """New model = round start + sum n_i x delta_i / sum n_i (FedAvg); evaluate; report."""
        r = env.round
        self.runlog.add_phase(r, "wait", self.awaiting_global.stop(r))
        with self.runlog.phase(r, "apply"):
            total = self.scheme.decrypt(loaded, env.contributors)
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

    def report(self, r: int, loss: float, acc: float) -> None:
        rec = self.runlog.record(r)
        body = MetricsReport(
            loss, acc, len(self.test), rec["byte_send"], rec["byte_received"]
        ).encode()
        self.transport.send(self.cfg.root, Kind.METRICS, self.envelope(r, len(self.test), 1), body)

    def save(self, tag: str, flat: np.ndarray) -> None:
        if self.cfg.training.save_models:
            np.save(self.runlog.path.parent / f"{file_stem(self.id)}.{tag}.npy", flat)
