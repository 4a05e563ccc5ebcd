"""Shared fixtures: small configs, HTTP node servers on 127.0.0.1 in threads, a message recorder."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, request
from werkzeug.serving import make_server

from blueprints import NodeServer
from hefl.local import free_ports
from hefl.wire import TOKEN_HEADER

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent


# tests that take one of these fixtures start processes (node servers, local runs)
PROCESS_FIXTURES = {
    "cluster",
    "plain_run",
    "ckks_run",
    "bfv_run",
    "seal_ckks_run",
    "seal_bfv_run",
    "paillier_run",
    "ckks_exp",
    "bfv_exp",
    "live",
}
SLOW_TIERS = ("process", "deploy", "root", "network", "lint")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test on a fixture that starts processes is in the process tier, marked or not."""
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.process)


@pytest.fixture(autouse=True)
def _tiers_hold(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The inner-loop tier stays in this process: a test there that starts a Python, main.py,
    a shell script or a playbook fails, naming the marker it lacks."""
    if any(request.node.get_closest_marker(m) for m in SLOW_TIERS):
        return
    real = subprocess.Popen.__init__

    def guarded(self: Any, args: Any, *a: Any, **kw: Any) -> None:
        argv = [str(x) for x in (args if isinstance(args, list | tuple) else [args])]
        first = Path(argv[0]).name if argv else ""
        if (
            first.startswith("python")
            or argv[:1] == [sys.executable]
            or any(x.endswith((".py", ".sh")) or "ansible" in x for x in argv[:3])
        ):
            raise AssertionError(
                f"{request.node.nodeid} starts {' '.join(argv[:3])}: mark it "
                "@pytest.mark.process (or deploy, root, network, lint)"
            )
        real(self, args, *a, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)


def pytest_collection_finish(session: pytest.Session) -> None:
    """The requirements' wheel checks for other Pythons wait on the package index: start them
    now, in the background, when the session will run them (tests/test_wheels.py)."""
    if any(i.name.startswith("test_the_requirements_have_wheels_for") for i in session.items):
        import tempfile

        from tests import test_wheels

        folder = Path(tempfile.mkdtemp(prefix="hefl-wheels-"))
        test_wheels.WHEEL_DIR.append(folder)
        test_wheels.WHEEL_CHECKS.update(test_wheels.start_wheel_checks(folder))


def pytest_sessionfinish(session: pytest.Session) -> None:
    from tests import test_wheels

    for proc in test_wheels.WHEEL_CHECKS.values():
        if proc.poll() is None:
            proc.kill()
        proc.communicate()  # closes its pipe
    for folder in test_wheels.WHEEL_DIR:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


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
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
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


TOKEN = "insider-t0ken"  # the credential of `cluster` nodes


@dataclass
class Cluster:
    """Four node processes (two clients, a switch, the aggregator) and their addresses."""

    tmp: Path
    raw: dict[str, Any]
    ids: dict[str, str]  # role name (c0, c1, sw, agg) -> node id
    procs: list[subprocess.Popen[bytes]]

    def url(self, name: str) -> str:
        return f"http://{self.ids[name]}"

    def stderr(self, name: str) -> str:
        return (self.tmp / f"{name}.err").read_text(errors="replace")

    def health(self, name: str, token: str = TOKEN) -> dict[str, Any]:
        resp = requests.get(f"{self.url(name)}/health", headers={TOKEN_HEADER: token}, timeout=10)
        return resp.json()  # type: ignore[no-any-return]

    def start(self, name: str, wait: bool = True) -> subprocess.Popen[bytes]:
        """Node `name`'s process (`main.py --host 127.0.0.1 --port ...`), its stderr appended to
        <name>.err; with `wait`, returned once it answers."""
        env = {**os.environ, "HEFL_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
        with (self.tmp / f"{name}.err").open("ab") as err:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "main.py"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    self.ids[name].split(":")[1],
                    "--log-dir",
                    str(self.tmp / name),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=ROOT,
            )
        if wait:
            self.wait_for(name)
        return proc

    def wait_for(self, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.health(name)
                return
            except requests.ConnectionError:
                assert time.monotonic() < deadline, f"{name} does not answer"
                time.sleep(0.2)

    def run(self, timeout: float = 240, **kw: Any) -> subprocess.Popen[str]:
        cfg = self.tmp / "config.json"
        cfg.write_text(json.dumps(self.raw))
        return subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "main.py"),
                "agg",
                "--config",
                str(cfg),
                "--log-dir",
                str(self.tmp / "agg"),
            ],
            env={**os.environ, "HEFL_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            **kw,
        )


def addressed(ports: list[int], rounds: int = 2) -> tuple[dict[str, Any], dict[str, str]]:
    """Two clients, one switch, the aggregator, at real 127.0.0.1 ports (as on a cluster)."""
    ids = dict(zip(("c0", "c1", "sw", "agg"), (f"127.0.0.1:{p}" for p in ports), strict=True))
    c0, c1, sw, agg = ids.values()
    raw = {
        "name": "integrity",
        "aggregator": {"iteration": rounds, "ip": agg},
        "training": {"device": "cpu"},
        "network": {"startup_timeout_s": 60},
        "others": {
            c0: {"type": "client", "client_number": 2, "index": 0, "send": sw},
            c1: {"type": "client", "client_number": 2, "index": 1, "send": sw},
            sw: {"type": "switch", "receive": [c0, c1], "send": agg, "dumb": False},
        },
    }
    return raw, ids


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    raw, ids = addressed(free_ports(4), rounds=8)
    made = Cluster(tmp_path, raw, ids, [])
    procs = made.procs
    try:
        for name in ids:
            procs.append(made.start(name, wait=False))
        for name in ids:
            made.wait_for(name)
        yield made
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def node_processes(marker: str) -> list[int]:
    """Node processes (gunicorn master or worker) whose command line holds `marker`."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmd and "\0node\0" in cmd:
            found.append(int(pid))
    return found


def run_main(*args: str, timeout: float = 240, **kw: Any) -> subprocess.CompletedProcess[str]:
    """`main.py ARGS` to its end, output captured (in ROOT unless `cwd` says otherwise)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=kw.pop("cwd", ROOT),
        **kw,
    )


def run_local(work: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """`main.py local` on `work`/config.json, its keys/ and log/ in `work`."""
    return run_main(
        "local", "--config", "config.json", "--log-dir", "log", timeout=timeout, cwd=work
    )


def two_level(rounds: int = 3) -> dict[str, Any]:
    """4 clients under 2 leaf switches (the second dumb) under a spine under the aggregator; the
    models are saved."""
    raw = tree_config(clients=4, leaves=2, spine=True, dumb=(1,), rounds=rounds)
    raw["training"].update(save_models=True, epochs=2)
    return raw


@dataclass(frozen=True)
class Run:
    """A finished `main.py local` run of a session fixture: its output, config file, run folder,
    and key folder (encrypted runs: keys made beforehand, so a test can look for their bytes)."""

    proc: subprocess.CompletedProcess[str]
    config: Path
    exp: Path
    keys: Path | None = None


def only_run(log_dir: Path) -> Path:
    (found,) = [p for p in log_dir.iterdir() if (p / "config.json").exists()]
    return found


@pytest.fixture(scope="session")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The two-level tree in plaintext (`-v`: the nodes log INFO events)."""
    tmp = tmp_path_factory.mktemp("plain")
    cfg = tmp / "config.json"
    cfg.write_text(json.dumps(two_level()))
    proc = run_main("local", "--config", str(cfg), "--log-dir", str(tmp / "log"), "-v")
    return Run(proc, cfg, only_run(tmp / "log"))


def _encrypted(tmp_path_factory: pytest.TempPathFactory, scheme: str, **more: Any) -> Run:
    """`more`: other encryption settings (backend, key_bits)."""
    from hefl.crypto import HeParams, generate_keys

    tmp = tmp_path_factory.mktemp(scheme)
    raw = two_level()
    raw["encryption"] = {"scheme": scheme, "key_dir": str(tmp / "keys"), **more}
    generate_keys(HeParams(scheme=scheme, **more), tmp / "keys")
    cfg = tmp / "config.json"
    cfg.write_text(json.dumps(raw))
    proc = run_main("local", "--config", str(cfg), "--log-dir", str(tmp / "log"))
    return Run(proc, cfg, only_run(tmp / "log"), tmp / "keys")


@pytest.fixture(scope="session")
def ckks_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The two-level tree with CKKS, the same seed as `plain_run`."""
    return _encrypted(tmp_path_factory, "ckks")


@pytest.fixture(scope="session")
def bfv_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _encrypted(tmp_path_factory, "bfv")


def _optional(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install -r requirements-he.txt")


@pytest.fixture(scope="session")
def seal_ckks_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The two-level tree with SEAL-Python's CKKS."""
    _optional("seal", "zstandard")
    return _encrypted(tmp_path_factory, "ckks", backend="seal")


@pytest.fixture(scope="session")
def seal_bfv_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    _optional("seal", "zstandard")
    return _encrypted(tmp_path_factory, "bfv", backend="seal")


@pytest.fixture(scope="session")
def paillier_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Paillier with a 1024-bit key (2048 by default: a test's key may be smaller)."""
    _optional("phe", "gmpy2")
    return _encrypted(tmp_path_factory, "paillier", key_bits=1024)
