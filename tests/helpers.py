"""What the tests share besides fixtures: small configs and node ids, HTTP servers on 127.0.0.1 in
threads, a message recorder, node processes (`Cluster`), `main.py` runs, and the in-memory parts
of a node (a fake transport, an inline worker). Test modules import from here, never from each
other; tests/conftest.py holds the fixtures and the tiers."""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, request
from werkzeug.serving import make_server

from hefl.address import log_name
from hefl.config import ExperimentConfig, parse_config
from hefl.control.local import free_ports, node_command
from hefl.crypto.plain import PlainScheme
from hefl.modelspec import param_count
from hefl.node.nodes import Parts, Worker
from hefl.node.push import make_push
from hefl.node.runlog import RunLog
from hefl.node.transport import TrafficMeter
from hefl.node.wire import BINARY, TOKEN_HEADER, Envelope, Kind

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


TOKEN = "insider-t0ken"  # the credential of `cluster` nodes


NODE_PRELOAD = ["blueprints.serve", "hefl.node.nodes.local_training", "main", "tests.helpers"]


def _serve_node(argv: list[str], err: str, env: dict[str, str]) -> None:
    """A test node's process: `main.py ARGV`, its stderr appended to `err` (run by NodeProcess)."""
    os.chdir(ROOT)
    os.environ.update(env)
    sink = os.open(err, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null = os.open(os.devnull, os.O_RDWR)
    for fd, to in ((null, 0), (null, 1), (sink, 2)):
        os.dup2(fd, to)
    import main

    sys.exit(main.main(argv))


class NodeProcess:
    """A node process for tests that drive standalone nodes, with the part of Popen they use.
    Forked by multiprocessing's forkserver: one clean process per test worker that loaded the
    node runtime and torch once (an interpreter per node cost 1.3 s of CPU, 3 s more for a
    client's torch); the node itself runs exactly `main.py node ...`."""

    def __init__(self, process: Any) -> None:
        self.process = process

    @classmethod
    def start(cls, argv: list[str], err: Path, env: dict[str, str]) -> NodeProcess:
        forks = multiprocessing.get_context("forkserver")
        forks.set_forkserver_preload(NODE_PRELOAD)
        process = forks.Process(
            target=_serve_node, args=(argv, str(err), {**env, "OMP_NUM_THREADS": "1"})
        )
        process.start()
        return cls(process)

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def poll(self) -> int | None:
        code = self.process.exitcode
        return None if code is None else int(code)

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if (code := self.poll()) is None:
            raise subprocess.TimeoutExpired(["main.py", "node"], timeout or 0.0)
        return code

    def terminate(self) -> None:
        self.process.terminate()

    def kill(self) -> None:
        self.process.kill()


@dataclass
class Cluster:
    """Four node processes (two clients, a switch, the aggregator) and their addresses."""

    tmp: Path
    raw: dict[str, Any]
    ids: dict[str, str]  # role name (c0, c1, sw, agg) -> node id
    procs: list[NodeProcess]

    def url(self, name: str) -> str:
        return f"http://{self.ids[name]}"

    def stderr(self, name: str) -> str:
        return (self.tmp / f"{name}.err").read_text(errors="replace")

    def health(self, name: str, token: str = TOKEN) -> dict[str, Any]:
        resp = requests.get(f"{self.url(name)}/health", headers={TOKEN_HEADER: token}, timeout=10)
        return resp.json()  # type: ignore[no-any-return]

    def start(self, name: str, wait: bool = True) -> NodeProcess:
        """Node `name`'s process (`main.py node --host 127.0.0.1 --port ...`, forked as local
        mode forks its nodes), its stderr appended to <name>.err; with `wait`, returned once it
        answers."""
        argv = node_command("127.0.0.1", int(self.ids[name].split(":")[1]), self.tmp / name)
        proc = NodeProcess.start(argv[2:], self.tmp / f"{name}.err", {"HEFL_TOKEN": TOKEN})
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


@contextmanager
def running_cluster(tmp: Path) -> Iterator[Cluster]:
    """A `Cluster` on free ports, 8 rounds, its four nodes started in `tmp` and answering;
    stopped afterwards."""
    raw, ids = addressed(free_ports(4), rounds=8)
    made = Cluster(tmp, raw, ids, [])
    try:
        for name in ids:
            made.procs.append(made.start(name, wait=False))
        for name in ids:
            made.wait_for(name)
        yield made
    finally:
        for p in made.procs:
            p.terminate()
        for p in made.procs:
            p.wait(timeout=30)


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


def command_line(pid: int) -> str:
    """What `ps` shows for `pid` (arguments joined by spaces; a gunicorn node's title as it set
    it), or "" for a process that is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.decode(errors="replace").replace("\0", " ").strip()


def is_node(command: str, label: str = "") -> bool:
    """A node's process (`main.py node ...` or its gunicorn master or worker), with `--label
    LABEL` if given."""
    if "main.py node " not in command:
        return False
    return not label or re.search(rf"--label {re.escape(label)}(\]|\s|$)", command) is not None


def node_processes(marker: str, label: str = "") -> list[int]:
    """Node processes (gunicorn master or worker) whose command line holds `marker` (and the
    label `label`, if given)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and marker in (cmd := command_line(int(pid))) and is_node(cmd, label):
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

    def to_json(self) -> dict[str, Any]:
        """What another worker of the session needs to read this run (conftest's shared runs)."""
        p = self.proc
        keys = str(self.keys) if self.keys else None
        out = {"config": str(self.config), "exp": str(self.exp), "keys": keys}
        return out | {"args": p.args, "code": p.returncode, "out": p.stdout, "err": p.stderr}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Run:
        proc = subprocess.CompletedProcess(data["args"], data["code"], data["out"], data["err"])
        keys = Path(data["keys"]) if data["keys"] else None
        return cls(proc, Path(data["config"]), Path(data["exp"]), keys)


def only_run(log_dir: Path) -> Path:
    (found,) = [p for p in log_dir.iterdir() if (p / "config.json").exists()]
    return found


EXP = "exp-1"  # the experiment id of nodes driven directly
C0, C1, S0, AGG = "127.0.0.1:100", "127.0.0.1:101", "127.0.0.1:10", "127.0.0.1:1"


def push(
    url: str, raw: dict[str, Any], node: str, endpoints: dict[str, str], token: str = ""
) -> requests.Response:
    body = make_push(raw, node, EXP, endpoints)
    return requests.post(f"{url}/config", json=body, headers={"X-Hefl-Token": token}, timeout=30)


def post(
    url: str, path: str, env: Envelope, body: bytes, content_type: str = BINARY
) -> requests.Response:
    return requests.post(
        url + path, data=body, headers={**env.headers(), "Content-Type": content_type}, timeout=10
    )


def begin(url: str, recorder: Recorder | None = None, children: int = 2) -> None:
    """The aggregator's begin message to a switch: it opens round 1 for the children's updates.
    With the recorder playing the children, wait for the switch's relays and forget them."""
    assert post(url, "/begin", Envelope(EXP, 0, AGG), b"").status_code == 202
    if recorder is not None:
        recorder.wait_for(children)
        with recorder.event:
            recorder.messages.clear()


def small(**kw: Any) -> dict[str, Any]:
    """Two clients under one switch under the aggregator."""
    return tree_config(clients=2, leaves=1, spine=False, **kw)


def size_of(raw: dict[str, Any]) -> int:
    cfg = parse_config(raw)
    return param_count(cfg.model, cfg.dataset)


def wait_health(url: str, state: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        health = requests.get(f"{url}/health", timeout=5).json()
        if health["state"] == state or time.monotonic() > deadline:
            return health  # type: ignore[no-any-return]
        time.sleep(0.05)


def wait_gone(marker: str, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := node_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


def local_until_round(work: Path, raw: dict[str, Any], round_: int) -> subprocess.Popen[str]:
    """`main.py local` started in `work` (its keys/ and log/ go there), returned once it printed
    round `round_`."""
    (work / "config.json").write_text(json.dumps(raw))
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "main.py"),
            "local",
            "--config",
            "config.json",
            "--log-dir",
            "log",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=work,
        # a suite started in the background inherits SIGINT ignored; the run must see signals
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(f"round {round_:>3}/"):
            return proc
    raise AssertionError(f"the run ended before round {round_}: {proc.communicate()[1][-2000:]}")


def results_agree(exp: Path) -> int:
    """A run's files and `main.py runs` agree on the rounds completed (the aggregator's closed
    rounds) and the final accuracy; what the logs hold of a later round is apart. Returns the
    rounds completed."""
    record = json.loads((exp / "run.json").read_text())
    rows = json.loads((exp / "rounds.json").read_text())
    summary = json.loads((exp / "summary.json").read_text())
    n = record["rounds_completed"]
    assert n >= 1 and len(rows) == n == summary["rounds_completed"] == summary["totals"]["rounds"]
    assert [row["round"] for row in summary["rounds"]] == list(range(n))
    cfg = parse_config(json.loads((exp / "config.json").read_text()))
    agg = json.loads((exp / log_name(cfg.tree.root)).read_text())
    closed = [rec["round"] for rec in agg["iteration"] if rec["end_time"]]
    assert closed == list(range(n))  # what the aggregator closed, no more, no less
    final = summary["totals"]["final_accuracy"]
    assert final == pytest.approx(rows[-1]["accuracy"], abs=1e-6)
    csv_rows = (exp / "summary.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in csv_rows[1:]] == [*map(str, range(n)), "total"]
    assert float(csv_rows[-1].split(",")[1]) == final
    later = summary["rounds_not_completed"]
    assert later and later[0]["round"] == n and not later[0]["closed_by_aggregator"]
    runs = run_main("runs", "--log-dir", str(exp.parent))
    (line,) = [x for x in runs.stdout.splitlines() if x.startswith(exp.name)]
    assert f"{n}/{cfg.rounds}" in line.split() and f"{final:.4f}" in line.split(), line
    return int(n)


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return found


def experiment_dir(log_dir: Path) -> Path:
    (found,) = [p for p in log_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return found


def node_logs(exp: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for p in exp.glob("*.json"):
        data = json.loads(p.read_text())
        if "node" in data:
            out[data["node"]] = data
    return out


class FakeTransport:
    """Records what a node sends, by peer and kind; nothing crosses a wire."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Kind, Envelope, bytes]] = []
        self.closed = False

    def send(self, peer: str, kind: Kind, env: Envelope, body: bytes = b"") -> None:
        self.sent.append((peer, kind, env, body))

    def close(self) -> None:
        self.closed = True


class InlineWorker(Worker):
    """Runs each job at once, in the caller's thread; a failure goes where the node says."""

    def start(self, on_error: Callable[[str, Exception], None]) -> None:
        self.on_error = on_error

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:
            self.on_error(fn.__name__, exc)


def make(
    cls: Any, node_id: str, cfg: ExperimentConfig, tmp_path: Path, training: Any = None
) -> tuple[Any, FakeTransport]:
    """A node of `cls` on the plain scheme, a fake transport and an inline worker; a client
    trains with `training`, or with its real torch part when none is given."""
    runlog = RunLog(tmp_path / f"{node_id.replace(':', '_')}.json", node_id, cls.role, EXP)
    transport = FakeTransport()
    if cls.role == "client" and training is None:
        from hefl.node.nodes.local_training import LocalTraining

        training = LocalTraining(cfg, node_id)
    parts = Parts(
        transport,
        PlainScheme(param_count(cfg.model, cfg.dataset)),
        runlog,
        TrafficMeter(runlog, EXP, cfg.rounds, cfg.nodes),
        InlineWorker("test"),
        training=training,
    )
    node = cls(cfg, node_id, EXP, parts)
    node.start()
    return node, transport


def shared_dir(factory: pytest.TempPathFactory) -> Path:
    """A folder that every worker of this session sees: the session's base temp (under xdist,
    each worker's base temp is a folder of it)."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


# the requirements' wheels for other Pythons (tests/test_wheels.py; conftest starts the checks)
WHEEL_VERSIONS = ("3.12", "3.13")


def wheel_folder(base: Path) -> Path:
    """Where the session's wheel checks write, in the session's base temp folder (conftest's
    shared_dir: the same for every xdist worker)."""
    return base / "wheels"


def start_wheel_checks(folder: Path) -> dict[str, subprocess.Popen[str]]:
    """pip's dry-run resolution of requirements.txt as binary wheels for each of WHEEL_VERSIONS,
    in the background: conftest starts them when the session's tests are collected (they wait on
    the package index, not on this machine), and the test reads their answers from files, so
    that either worker can: <folder>/<version>/ gets pip's report.json, its stderr, and `rc`,
    its exit status, once it has ended."""
    procs = {}
    for version in WHEEL_VERSIONS:
        out = folder / version
        out.mkdir(parents=True, exist_ok=True)
        with (out / "stderr").open("w") as err:
            procs[version] = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "pip"),
                    "install",
                    "--dry-run",
                    "--ignore-installed",
                    "--only-binary=:all:",
                    "--python-version",
                    version,
                    "--target",
                    str(out / "t"),
                    "--report",
                    str(out / "report.json"),
                    "-r",
                    str(ROOT / "requirements.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
                text=True,
            )
        threading.Thread(target=_write_rc, args=(procs[version], out), daemon=True).start()
    return procs


def _write_rc(proc: subprocess.Popen[str], out: Path) -> None:
    code = proc.wait()
    (out / "rc.part").write_text(str(code))
    (out / "rc.part").rename(out / "rc")  # whole, or not there


def wheel_check(folder: Path, version: str, timeout: float = 600) -> tuple[int, str]:
    """The exit status and stderr of the wheel check in `folder`, once it has ended."""
    rc = folder / version / "rc"
    deadline = time.monotonic() + timeout
    while not rc.exists():
        assert time.monotonic() < deadline, f"pip's check for {version} still runs"
        time.sleep(0.2)
    return int(rc.read_text()), (folder / version / "stderr").read_text()


WHEEL_CHECKS: dict[str, subprocess.Popen[str]] = {}  # started by this process
