"""Shared fixtures: small configs, HTTP node servers on 127.0.0.1 in threads, a message recorder."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request
from werkzeug.serving import make_server

from blueprints import NodeServer

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent


def tree_config(
    clients: int = 4,
    leaves: int = 2,
    spine: bool = True,
    dumb: tuple[int, ...] = (),
    rounds: int = 2,
    **sections: Any,
) -> dict[str, Any]:
    """A raw config: clients under `leaves` leaf switches, under one spine (or the aggregator).

    Node ids are c0.., s0.., spine, agg with made-up ports; `dumb` lists leaf numbers that forward.
    """
    agg = "127.0.0.1:1"
    upper = "127.0.0.1:2" if spine else agg
    others: dict[str, Any] = {}
    leaf_ids = [f"127.0.0.1:{10 + j}" for j in range(leaves)]
    for i in range(clients):
        others[f"127.0.0.1:{100 + i}"] = {
            "type": "client",
            "client_number": clients,
            "index": i,
            "send": leaf_ids[i * leaves // clients],
        }
    for j, leaf in enumerate(leaf_ids):
        kids = [c for c, v in others.items() if v.get("send") == leaf]
        others[leaf] = {"type": "switch", "receive": kids, "send": upper, "dumb": j in dumb}
    if spine:
        others[upper] = {"type": "switch", "receive": leaf_ids, "send": agg, "dumb": False}
    raw: dict[str, Any] = {
        "name": "t",
        "aggregator": {"iteration": rounds, "ip": agg},
        "others": others,
    }
    raw["training"] = {"epochs": 1, "batch_size": 32, "lr": 0.05, "seed": 0, "device": "cpu"}
    raw.update(copy.deepcopy(sections))
    return raw


@pytest.fixture
def raw_config() -> dict[str, Any]:
    return tree_config()


class Served:
    """A WSGI app served over real HTTP on 127.0.0.1 from a thread."""

    def __init__(self, app: Any) -> None:
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Recorder:
    """A stand-in peer that records every POST (path, headers, body) and answers 202."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, str], bytes]] = []
        self.event = threading.Condition()
        app = Flask("recorder")

        @app.post("/<path:path>")
        def record(path: str) -> Any:
            with self.event:
                self.messages.append(("/" + path, dict(request.headers), request.get_data()))
                self.event.notify_all()
            return "", 202  # as a node answers an accepted message: no body

        @app.get("/log/<experiment>")
        def node_log(experiment: str) -> Any:  # what a finished peer answers to log collection
            return {"node": "recorded", "experiment": experiment, "finished": True, "iteration": []}

        self.served = Served(app)
        self.url = self.served.url

    def wait_for(
        self, count: int, timeout: float = 30.0
    ) -> list[tuple[str, dict[str, str], bytes]]:
        with self.event:
            ok = self.event.wait_for(lambda: len(self.messages) >= count, timeout)
        assert ok, (
            f"expected {count} messages, got {len(self.messages)}: {[m[0] for m in self.messages]}"
        )
        return list(self.messages)


@pytest.fixture
def serve_node(tmp_path: Path) -> Iterator[Any]:
    """Factory: a NodeServer over real HTTP, closed after the test."""
    made: list[tuple[Served, NodeServer]] = []

    def make(token: str = "") -> tuple[str, NodeServer]:
        node = NodeServer(tmp_path / "log", token)
        served = Served(node)
        made.append((served, node))
        return served.url, node

    yield make
    for served, node in made:
        served.close()
        if node.node is not None:
            node.node.close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    yield rec
    rec.served.close()


@pytest.fixture(scope="session")
def key_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One key folder per encrypted scheme, made once (default parameters: already small)."""
    from hefl.crypto import HeParams, generate_keys

    dirs = {}
    for name in ("ckks", "bfv"):
        path = tmp_path_factory.mktemp(name)
        generate_keys(HeParams(scheme=name), path)
        dirs[name] = path
    return dirs
