"""Client: trains on its slice, sends its weighted update up, applies and evaluates the global result."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import numpy as np

from hefl.data import client_data
from hefl.errors import DuplicateMessage, ExperimentFailed, ProtocolError
from hefl.model import build_model, get_flat, set_flat
from hefl.nodes.base import Node, NodeContext
from hefl.runlog import log_name
from hefl.training import evaluate, pick_device, train_epochs, warm_up
from hefl.wire import Envelope


class ClientNode(Node):
    role = "client"

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        t = self.cfg.training
        self.device = pick_device(t.device)
        self.train, self.test, self.all_samples = client_data(self.cfg.dataset, t.seed, self.me.client_number,
                                                              self.me.index)
        self.model = build_model(self.cfg.model, self.cfg.dataset, t.seed).to(self.device)
        self.base = get_flat(self.model)  # the global model this round started from
        self.samples = len(self.train)
        # what this client sends: its delta x n_i x m / N (m clients, N samples in all), so that the
        # sum over clients is m x the weighted mean delta and stays within [-m clip, m clip]
        self.weight = self.samples * self.me.client_number / self.all_samples
        warm_up(self.model, self.train, t, self.device)
        self._seen: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def scheme_seed(self) -> int:
        return self.cfg.training.seed * 1_000_003 + self.me.index * 7919 + 17

    def on_down(self, path: str, env: Envelope, payload: bytes) -> None:
        """Accept the begin message (round 0) or a round's global result, once each."""
        self.check_downward(env, payload, allow_empty=path == "/begin")
        if path == "/begin" and env.round != 0:
            raise ProtocolError(f"begin is for round 0, got round {env.round}")
        if path == "/global" and (env.contributors != len(self.cfg.clients()) or env.samples <= 0):
            raise ProtocolError(f"global result of round {env.round} adds {env.contributors} clients, "
                                f"{env.samples} samples; expected {len(self.cfg.clients())} clients")
        if (path, env.round) in self._seen:  # early answer for a plain repeat; the lock below decides
            raise DuplicateMessage(f"{path} of round {env.round} already received")
        started = time.monotonic()
        loaded = self.scheme.load(payload) if path == "/global" else None
        with self._lock:  # marked seen only once it loaded: a corrected retry of a refused one is taken
            if (path, env.round) in self._seen:
                raise DuplicateMessage(f"{path} of round {env.round} already received")
            self._seen.add((path, env.round))
        if path == "/begin":
            self.submit(self.train_round, 0)
            return
        self.runlog.add_phase(env.round, "load", time.monotonic() - started)
        self.submit(self.apply_global, env, loaded)

    def train_round(self, r: int) -> None:
        """Train locally, then send the weighted, clipped delta, encoded by the scheme, to the parent."""
        self.round = r
        self.runlog.begin(r)
        t = self.cfg.training
        with self.runlog.phase(r, "train"):
            loss = train_epochs(self.model, self.train, t, self.device, seed=t.seed * 1_000_003 + self.me.index * 7919 + r)
            local = get_flat(self.model)
        self.save(f"r{r}.local", local)
        update = (local - self.base) * self.weight
        if not np.all(np.isfinite(update)):
            raise ExperimentFailed(f"training produced {np.count_nonzero(~np.isfinite(update))} non-finite weights "
                                f"(diverged? lower training.lr)")
        clip = self.cfg.encryption.clip
        clipped = int(np.count_nonzero(np.abs(update) > clip))
        with self.runlog.phase(r, "serialize"):
            payload = self.scheme.encrypt(np.clip(update, -clip, clip))
        self.runlog.set(r, train_loss=loss, train_samples=self.samples, clipped=clipped)
        with self.runlog.phase(r, "send"):
            self.transport.post(self.me.send, "/update", payload, self.envelope(r, self.samples, 1).headers(), round_=r)
        self.mark("global", r)

    def apply_global(self, env: Envelope, loaded: Any) -> None:
        """New model = start of round + sum of n_i x delta_i / sum of n_i (FedAvg); evaluate; report."""
        r = env.round
        self.runlog.add_phase(r, "wait", self.since("global", r))
        with self.runlog.phase(r, "apply"):
            total = self.scheme.decrypt(loaded, env.contributors)
            scale = self.all_samples / (self.me.client_number * env.samples)  # 1/m when every client added
            set_flat(self.model, self.base + total * scale)
            self.base = get_flat(self.model)
        self.save(f"r{r}.global", self.base)
        with self.runlog.phase(r, "evaluate"):
            loss, acc = evaluate(self.model, self.test, self.device)
        self.runlog.set(r, loss=loss, accuracy=acc, test_samples=len(self.test), total_samples=env.samples)
        self.report(r, loss, acc)
        self.runlog.end(r, final=r == self.cfg.rounds - 1)
        if r + 1 < self.cfg.rounds:
            self.train_round(r + 1)

    def report(self, r: int, loss: float, acc: float) -> None:
        rec = self.runlog.record(r)
        body = json.dumps({"loss": loss, "accuracy": acc, "test_samples": len(self.test),
                           "byte_send": rec["byte_send"], "byte_received": rec["byte_received"]}).encode()
        self.transport.post(self.cfg.root, "/metrics", body, self.envelope(r, len(self.test), 1).headers(),
                            round_=r, content_type="application/json")

    def save(self, tag: str, flat: np.ndarray) -> None:
        if self.cfg.training.save_models:
            np.save(self.ctx.exp_dir / log_name(self.id).replace(".json", f".{tag}.npy"), flat)
