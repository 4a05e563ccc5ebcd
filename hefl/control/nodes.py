"""`main.py nodes up|down --config FILE`: start and stop, on this machine, the standalone nodes of
a config whose addresses are this machine's (a config of `main.py topology --local`), as a cluster
runs them: one `main.py node` per node, each in a session of its own, its output in
<log-dir>/nodes/<node>.out; then `main.py agg` drives them, and a fault experiment can kill,
pause or restart any one of them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

from hefl.address import base_url, file_stem, parse_address
from hefl.config import ExperimentConfig
from hefl.errors import HeflError
from hefl.files import write_json_atomic
from hefl.node.wire import Kind
from hefl.results.report import process_start

ROOT = Path(__file__).resolve().parents[2]
STOP_S = 20.0  # how long a node may take to stop on SIGTERM before it is killed


def _state(log_dir: Path, node: str) -> Path:
    return log_dir / "nodes" / f"{file_stem(node)}.pid.json"


def _listens_here(host: str, port: int) -> str:
    """'' when this machine can listen on host:port now, else why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return ""


def alive(log_dir: Path, node: str) -> int | None:
    """The pid of `node`'s process that `nodes up` started, if it still runs (the same process:
    its start time is what was recorded)."""
    try:
        said = json.loads(_state(log_dir, node).read_text())
        pid, started = int(said["pid"]), float(said["began"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    now = process_start(pid)
    return pid if now is not None and abs(now - started) < 2 else None


def up(
    cfg: ExperimentConfig,
    log_dir: Path,
    token_file: Path,
    out: Callable[[str], None] = print,
) -> list[str]:
    """Start every node of the config that is not running already; returns the nodes started,
    once each answers /health. A node this machine cannot serve (another machine's address, a
    port in use by something else) is named before anything starts."""
    plan: list[tuple[str, str, int]] = []
    problems = []
    for node in cfg.nodes:
        if alive(log_dir, node):
            continue
        addr = parse_address(node, f"others.{node}")
        port = addr.port or cfg.network.port
        why = _listens_here(addr.host, port)
        if why:
            problems.append(f"{node} ({addr.host}:{port}): {why}")
        plan.append((node, addr.host, port))
    if problems:
        raise HeflError(
            f"cannot start {len(problems)} node(s) here: {'; '.join(problems)} (`nodes up` "
            "starts the nodes of a config on this machine's addresses: main.py topology --local "
            "writes one)"
        )
    (log_dir / "nodes").mkdir(parents=True, exist_ok=True)
    started = []
    for node, host, port in plan:
        output = log_dir / "nodes" / f"{file_stem(node)}.out"
        argv = [sys.executable, str(ROOT / "main.py"), "node", "--host", host, "--port", str(port)]
        argv += ["--log-dir", str(log_dir), "--token-file", str(token_file), "--label", node]
        with open(output, "ab") as fh, open(os.devnull, "rb") as devnull:
            proc = subprocess.Popen(
                argv, stdin=devnull, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )
        began = process_start(proc.pid) or time.time()
        write_json_atomic(_state(log_dir, node), {"pid": proc.pid, "began": began})
        started.append((node, proc, base_url(node, cfg.network.port)))
    deadline = time.monotonic() + cfg.network.startup_timeout_s
    for node, proc, url in started:
        while True:
            if proc.poll() is not None:
                said = (log_dir / "nodes" / f"{file_stem(node)}.out").read_text(errors="replace")
                last = said.strip().splitlines()[-1] if said.strip() else "no output"
                raise HeflError(f"{node} exited ({proc.returncode}) as it started: {last}")
            try:
                requests.get(url + Kind.HEALTH.route.url_path(), timeout=2)
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise HeflError(
                        f"{node} does not answer /health after {cfg.network.startup_timeout_s:g}s "
                        "(network.startup_timeout_s)"
                    ) from None
                time.sleep(0.2)
        out(f"{node} up (pid {proc.pid}; output in {log_dir}/nodes/{file_stem(node)}.out)")
    return [node for node, _, _ in started]


def down(cfg: ExperimentConfig, log_dir: Path, out: Callable[[str], None] = print) -> list[str]:
    """Stop every node of the config that `nodes up` started (SIGTERM to its process group, then
    SIGKILL after STOP_S); returns the nodes stopped."""
    running = {node: pid for node in cfg.nodes if (pid := alive(log_dir, node))}
    for pid in running.values():
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_S
    while any(_group_alive(pid) for pid in running.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for node, pid in running.items():
        if _group_alive(pid):
            out(f"{node} did not stop within {STOP_S:g}s of SIGTERM: killed")
            _signal_group(pid, signal.SIGKILL)
    for node in cfg.nodes:
        _state(log_dir, node).unlink(missing_ok=True)
    for node, pid in running.items():
        out(f"{node} down (pid {pid})")
    return list(running)


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)  # its own session: the group is the node's master and worker
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp
            return True
    try:  # reap it if it is our child (nodes up and down in one process: tests)
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass
    return False
