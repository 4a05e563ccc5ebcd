"""Local mode: every node of a config as its own process on a free 127.0.0.1 port."""

from __future__ import annotations

import contextlib
import importlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hefl.address import file_stem
from hefl.config import ExperimentConfig, parse_config
from hefl.control.fork import Forked, NodeMain, can_fork, fork_node
from hefl.crypto import generate_keys, keys_match, preload
from hefl.errors import ExperimentFailed
from hefl.node.host import PARENT_ENV

MAIN = Path(__file__).resolve().parents[2] / "main.py"


def free_ports(count: int) -> list[int]:
    """Ports the OS reports free on 127.0.0.1 (held open together so that they differ)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class LocalNodes:
    """The node processes of a local run: where they listen, their credential, their output."""

    endpoints: dict[str, str]
    token: str
    out_dir: Path
    procs: dict[str, subprocess.Popen[bytes] | Forked] = field(default_factory=dict)
    may_drop: frozenset[str] = frozenset()  # clients that may exit (a round deadline is set)

    def check(self) -> None:
        """Raise if a node process has exited (the controller calls this while it waits); a
        client that may drop out is left to the controller's health checks."""
        for node, proc in self.procs.items():
            code = proc.poll()
            if code is not None and node not in self.may_drop:
                out = self.out_dir / f"{file_stem(node)}.out"
                raise ExperimentFailed(
                    f"local node {node} exited with code {code}: {_last_line(out)} (see {out})"
                )


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no output"
    return lines[-1][:300] if lines else "no output"


_FORKED: list[int] = []  # the process that forked a local run's nodes, once it has


@contextmanager
def local_nodes(
    cfg: ExperimentConfig,
    log_dir: Path,
    out_dir: Path,
    verbose: bool = False,
    node_main: NodeMain | None = None,
) -> Iterator[LocalNodes]:
    """Start one node process per config node on a free port; always stop them all. With
    `node_main` (main.py's own entry) each node is forked from this process: switches and the
    aggregator first, then, once torch and the data code are loaded here, the clients (a switch
    never holds torch); without it, or with another thread running here, each is `python main.py
    node ...` afresh."""
    token = secrets.token_hex(16)
    env = {
        **os.environ,
        "HEFL_TOKEN": token,
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        PARENT_ENV: str(os.getpid()),  # each node exits when this process is gone
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    ports = dict(zip(cfg.nodes, free_ports(len(cfg.nodes)), strict=True))
    nodes = LocalNodes(
        {n: f"http://127.0.0.1:{p}" for n, p in ports.items()},
        token,
        out_dir,
        may_drop=frozenset(cfg.tree.client_nodes() if cfg.policy.tolerate_dropouts else ()),
    )
    clients = cfg.tree.client_nodes()
    # once per process: a sweep's later runs would fork switches from a process that holds
    # torch and what is left in its memory of earlier runs' keys
    forking = node_main is not None and can_fork() and not _FORKED
    if forking:
        _FORKED.append(os.getpid())
        _preload(lambda: preload(cfg.he_params()))  # what every node of an encrypted run loads
    try:
        # switches and the aggregator first: forked before torch is loaded here
        others = [n for n in ports if n not in clients]
        for i, node in enumerate([*others, *(n for n in ports if n in clients)]):
            if forking and i == len(others):  # the first client
                os.environ["OMP_NUM_THREADS"] = "1"  # as the nodes' own: read once, as OpenMP loads
                _preload(lambda: importlib.import_module("hefl.node.nodes.local_training"))
            command = node_command(
                "127.0.0.1", ports[node], log_dir, "--label", node, *(["-v"] if verbose else [])
            )
            out = out_dir / f"{file_stem(node)}.out"
            if forking and node_main is not None:
                nodes.procs[node] = fork_node(node_main, command, out, env)
                continue
            with open(out, "wb") as sink:
                nodes.procs[node] = subprocess.Popen(
                    command,
                    env=env,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    # its own process group (its gunicorn worker and any encrypting processes
                    # too): a terminal's Ctrl-C or hang-up reaches this process only, which stops
                    # each group as a whole
                    process_group=0,
                )
        yield nodes
    finally:
        stop_all(list(nodes.procs.values()))


def _preload(load: Callable[[], object]) -> None:
    """Load modules here before forking the nodes that import them; an import that fails is left
    to each node, which names it in its output and its exit."""
    with contextlib.suppress(Exception):
        load()


def node_command(host: str, port: int, log_dir: Path, *more: str) -> list[str]:
    """The command line of one node process on this machine (`python main.py node ...`), as local
    mode, the benches and the tests start it; its log folder absolute (`ps` says where it
    writes, whatever folder it was started from)."""
    return [
        sys.executable,
        str(MAIN),
        "node",
        "--host",
        host,
        "--port",
        str(port),
        "--log-dir",
        str(log_dir.resolve()),
        *more,
    ]


def stop_all(procs: list[subprocess.Popen[bytes] | Forked], grace: float = 10.0) -> None:
    """SIGTERM each node's process group, then SIGKILL every group still there after `grace`
    seconds (a node leads its group: its gunicorn worker and any children go with it)."""
    for p in procs:
        _signal_group(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for p in procs:  # a worker that outlived its master
        _signal_group(p.pid, signal.SIGKILL)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


@contextmanager
def local_keys(
    raw: dict[str, Any],
    cfg: ExperimentConfig,
    experiment: str,
) -> Iterator[tuple[dict[str, Any], ExperimentConfig]]:
    """Key material for one local run: the config's key folder when seal.sh made keys for these
    parameters there, else fresh keys in keys/local-<experiment>/, removed when the run ends."""
    enc = cfg.encryption
    if not enc.encrypted or keys_match(enc.he_params(), Path(enc.key_dir)):
        yield raw, cfg
        return
    key_dir = (Path("keys") / f"local-{experiment}").resolve()
    remove_stale_keys(key_dir.parent)
    raw = {
        **raw,
        "encryption": {**raw.get("encryption", {}), "scheme": enc.scheme, "key_dir": str(key_dir)},
    }
    cfg = parse_config(raw)
    try:
        key_dir.mkdir(parents=True)
        (key_dir / OWNER).write_text(_owner(os.getpid()))  # first: a SIGKILL leaves it stale
        generate_keys(cfg.encryption.he_params(), key_dir)
        yield raw, cfg
    finally:
        shutil.rmtree(key_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            # keys/ itself, when this run created it and nothing else is there
            key_dir.parent.rmdir()


OWNER = "owner"  # in a local run's key folder: the pid and start time of the run that made it


def _owner(pid: int) -> str:
    """`pid start-time`: a pid alone may be reused by another process after a reboot or wrap."""
    try:
        # field 22 of /proc/<pid>/stat, counted after the command name's closing parenthesis
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        start = "?"
    return f"{pid} {start}"


def remove_stale_keys(keys: Path) -> list[Path]:
    """Remove the key folders of local runs that are no longer alive (a SIGKILL leaves one);
    the folders removed."""
    removed = []
    for folder in keys.glob("local-*"):
        try:
            owner = (folder / OWNER).read_text().split()
        except OSError:
            continue  # being made, or not ours: left alone
        if len(owner) == 2 and owner[0].isdigit() and _owner(int(owner[0])) == " ".join(owner):
            continue  # its run is alive
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def run_local(
    raw: dict[str, Any],
    cfg: ExperimentConfig,
    config_name: str,
    log_dir: Path,
    verbose: bool = False,
    experiment: str = "",
    node_main: NodeMain | None = None,
) -> Path:
    """The whole experiment on this machine, one process per node (forked from this one with
    `node_main`, see `local_nodes`); returns its run folder."""
    from hefl.control.experiment import Controller, new_experiment_id

    experiment = experiment or new_experiment_id(cfg.name)
    print(f"starting {len(cfg.nodes)} local node processes for {config_name}")
    with (
        # the nodes first: forked from this process before it holds any key material
        local_nodes(cfg, log_dir, log_dir / experiment / "stdout", verbose, node_main) as nodes,
        local_keys(raw, cfg, experiment) as (raw, cfg),
    ):
        Controller(
            raw,
            cfg,
            nodes.endpoints,
            experiment,
            log_dir,
            nodes.token,
            watch=nodes.check,
            progress=sys.stdout.isatty(),
        ).run()
    return log_dir / experiment
