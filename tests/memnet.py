"""An experiment's nodes in this process, joined by an in-memory network: protocol scenarios in
milliseconds, with no socket and no torch.

Each node is the real class with its real parts (run log, traffic meter, worker thread, the plain
scheme or, given a key folder, the experiment's HE scheme with its keys by role, the real
`Transport` with its retries and its reading of 409, 422 and other refusals), but for two: the
transport's HTTP session is a `MemorySession`, whose `request` hands the message to the peer node
as the HTTP layer would (envelope parsed from the headers, body counted by the peer's meter, then
`on_<kind>`, an error answered with its status and one JSON line), the way httpx's MockTransport
replaces only the network; and a client trains with `FakeTraining`, which makes seeded updates
with numpy. The network can take a node off it (its connections are refused), hold one kind of
message of a sender until released (a slow link, a straggler), and send every message
twice (a retry whose answer was lost)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import requests

from hefl.address import log_name
from hefl.config import ExperimentConfig
from hefl.crypto import KeyRing, load_keyless, load_secret, make_scheme, read_keyless
from hefl.errors import HeflError
from hefl.modelspec import param_count
from hefl.node.aggregation import client_weight
from hefl.node.body import spool_dir
from hefl.node.nodes import Node, Parts, Worker, role_class
from hefl.node.nodes.client import Slot
from hefl.node.runlog import RunLog
from hefl.node.transport import Timeouts, TrafficMeter, Transport
from hefl.node.wire import Envelope, Kind, kind_at

EXPERIMENT = "mem-1"
SCHEME = "mem://"


class FakeTraining:
    """A client node's training part without torch: client `index` of `client_number` has
    10 x (index + 1) training samples and 5 test samples; its update in round r is seeded by
    (index, r), within the clip; its loss and accuracy are a function of the model it holds."""

    def __init__(self, cfg: ExperimentConfig, node_id: str) -> None:
        me = cfg.nodes[node_id]
        n = me.client_number
        self.all_samples = sum(10 * (i + 1) for i in range(n))
        self.size = param_count(cfg.model, cfg.dataset)
        self.slots = []
        for c in cfg.tree.hosted(node_id):
            index = cfg.tree.logical[c].index
            samples = 10 * (index + 1)
            weight = client_weight(samples, n, self.all_samples)
            self.slots.append(Slot(c, index, samples, 5, weight))
        self.model = self.initial()

    def initial(self) -> np.ndarray:
        return np.zeros(self.size, dtype=np.float32)

    def train(self, slot: Slot, base: np.ndarray, round_: int) -> tuple[np.ndarray, float]:
        step = np.random.default_rng([slot.index, round_]).uniform(-0.5, 0.5, self.size)
        return (base + step.astype(np.float32)).astype(np.float32), 1.0 / (round_ + 1)

    def load(self, flat: np.ndarray) -> np.ndarray:
        self.model = flat.astype(np.float32)
        return self.model

    def evaluate(self, slot: Slot) -> tuple[float, float]:
        figure = float(np.abs(self.model).mean())
        return figure, 1.0 / (1.0 + figure)


class Answer:
    """What `requests` would give the transport: a status, a body, its JSON."""

    def __init__(self, status: int, body: dict[str, Any] | None = None) -> None:
        self.status_code = status
        self.content = json.dumps(body).encode() if body is not None else b""
        self.text = self.content.decode()

    def json(self) -> Any:
        return json.loads(self.content)


class MemorySession:
    """The part of `requests.Session` a `Transport` uses, over the in-memory network."""

    def __init__(self, net: MemoryNetwork, sender: str) -> None:
        self.net, self.sender = net, sender
        self.headers: dict[str, str] = {}

    def request(
        self, method: str, url: str, data: Any = None, headers: Any = None, timeout: Any = None
    ) -> Answer:
        peer, _, path = url.removeprefix(SCHEME).partition("/")
        body = b"".join(bytes(block) for block in data) if data is not None else b""
        return self.net.exchange(self.sender, peer, "/" + path, body, dict(headers or {}))

    def close(self) -> None:
        pass


def key_ring(cfg: ExperimentConfig, role: str, key_dir: Path | None) -> KeyRing | None:
    """A node's key ring by role, from the experiment's key folder (None: the plain scheme)."""
    if key_dir is None:
        return None
    enc = cfg.he_params()
    if role == "client":
        return load_secret(enc, key_dir)
    return load_keyless(enc, read_keyless(enc, key_dir))


class MemoryNetwork:
    """Every node of `cfg` built and started, reachable at `mem://<node id>`."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        folder: Path,
        training: Callable[[ExperimentConfig, str], Any] = FakeTraining,
        retries: int = 1,
        key_dir: Path | None = None,
        keep: frozenset[Kind] = frozenset(),
    ) -> None:
        """`key_dir`: an encrypted experiment's key folder (clients load its secret key, the
        others its keyless context); `keep`: kinds of message whose bodies `bodies` keeps."""
        self.cfg = cfg
        self.keep = keep
        self.bodies: list[tuple[str, Kind, int, bytes]] = []  # sender, kind, round, body
        self.down: set[str] = set()  # nodes whose connections are refused
        self.twice: set[Kind] = set()  # kinds of message delivered twice
        self.messages: list[
            tuple[str, str, Kind, int, int]
        ] = []  # sender, peer, kind, round, status
        self._held: dict[tuple[str, Kind, int], threading.Event] = {}
        self._refused: set[tuple[str, Kind, int]] = set()
        self._lock = threading.Lock()
        self.nodes: dict[str, Node] = {}
        endpoints = {n: f"{SCHEME}{n}" for n in cfg.nodes}
        parts = {n: training(cfg, n) for n in cfg.tree.client_nodes()}
        samples = {s.id: s.samples for t in parts.values() for s in t.slots}  # as declared
        size = param_count(cfg.model, cfg.dataset)
        for node, conf in cfg.nodes.items():
            runlog = RunLog(folder / log_name(node), node, conf.type, EXPERIMENT)
            hops = cfg.tree.first_hops(node)
            meter = TrafficMeter(runlog, EXPERIMENT, cfg.rounds, cfg.nodes, hops)
            transport = Transport(endpoints, Timeouts(1.0, 5.0, retries, backoff=0.0), "", meter)
            transport.session = MemorySession(self, node)  # type: ignore[assignment]
            scheme = make_scheme(cfg.he_params(), size, key_ring(cfg, conf.type, key_dir))
            meter.form_of = scheme.form
            made = role_class(conf.type)(
                cfg,
                node,
                EXPERIMENT,
                Parts(
                    transport,
                    scheme,
                    runlog,
                    meter,
                    Worker(f"{node}-worker"),
                    samples={} if conf.type == "client" else samples,
                    training=parts.get(node),
                    spool=spool_dir(folder, f"n{len(self.nodes)}"),
                ),
            )
            made.start()
            self.nodes[node] = made

    @property
    def aggregator(self) -> Any:
        return self.nodes[self.cfg.tree.root]

    def hold(self, sender: str, kind: Kind, round_: int) -> threading.Event:
        """Hold `sender`'s `kind` message of `round_` (its sending thread waits, as on a stalled
        link) until the returned event is set."""
        event = threading.Event()
        self._held[(sender, kind, round_)] = event
        return event

    def hold_to(self, peer: str, kind: Kind, round_: int) -> threading.Event:
        """Hold every `kind` message of `round_` to `peer` (its sender's thread waits, as on a
        peer that is paused and does not answer) until the returned event is set."""
        event = threading.Event()
        self._held[(f"to {peer}", kind, round_)] = event
        return event

    def refuse_once(self, sender: str, kind: Kind, round_: int) -> None:
        """The first attempt of `sender`'s `kind` message of `round_` finds its connection
        refused (the transport tries again)."""
        self._refused.add((sender, kind, round_))

    def exchange(
        self, sender: str, peer: str, path: str, body: bytes, headers: dict[str, str]
    ) -> Answer:
        """One request from `sender` to `peer`, answered as the peer's HTTP layer would."""
        if peer in self.down or sender in self.down:
            raise requests.ConnectionError("Connection refused")
        kind = kind_at(path)
        node = self.nodes.get(peer)
        if kind is None or node is None:
            return Answer(404, {"error": f"POST {path}: not an endpoint of this node"})
        try:
            env = Envelope.from_headers(headers)
        except HeflError as exc:
            return Answer(exc.status_code, {"error": str(exc)})
        key = (sender, kind, env.round)
        with self._lock:
            refused = key in self._refused
            self._refused.discard(key)
        if refused:
            raise requests.ConnectionError("Connection refused")
        for held in (self._held.get(key), self._held.get((f"to {peer}", kind, env.round))):
            if held is not None:
                held.wait(30)
        if kind in self.keep:
            with self._lock:
                self.bodies.append((sender, kind, env.round, bytes(body)))
        answers = [self._deliver(node, kind, env, body)]
        if kind in self.twice and answers[0].status_code < 300:
            # the retry of a message whose first answer was lost
            answers.append(self._deliver(node, kind, env, body))
        with self._lock:
            self.messages += [(sender, peer, kind, env.round, a.status_code) for a in answers]
        return answers[0]

    def _deliver(self, node: Node, kind: Kind, env: Envelope, body: bytes) -> Answer:
        node.meter.inbound(kind, env, len(body), body=body)
        handler = getattr(node, f"on_{kind.value}", None)
        if handler is None:
            return Answer(404, {"error": f"{kind.value}: not an endpoint of a {node.role}"})
        try:
            if kind is Kind.FAIL:
                handler(env, body.decode("utf-8", errors="replace"))
            else:
                handler(env, bytearray(body))
        except HeflError as exc:
            return Answer(exc.status_code, {"error": str(exc)})
        return Answer(202)

    def statuses(self, kind: Kind, sender: str | None = None) -> list[tuple[int, int]]:
        """(round, status) of every `kind` message so far, of `sender` when given."""
        with self._lock:
            return [
                (r, status)
                for s, _, k, r, status in self.messages
                if k is kind and (sender is None or s == sender)
            ]

    def run(self, timeout: float = 30.0) -> dict[str, Any]:
        """Start the experiment and wait until the aggregator finished or failed: its status."""
        self.aggregator.begin_experiment()
        return self.wait(timeout)

    def wait(self, timeout: float = 30.0, states: Iterable[str] = ("finished", "failed")) -> Any:
        deadline = time.monotonic() + timeout
        while (status := self.aggregator.status())["state"] not in states:
            assert time.monotonic() < deadline, f"still {status['state']}: {status['rounds']}"
            time.sleep(0.005)
        return status

    def close(self) -> None:
        for node in self.nodes.values():
            node.close()
