"""Local mode: every node of a config as its own process on a free 127.0.0.1 port."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hefl.address import file_stem
from hefl.config import ExperimentConfig, parse_config
from hefl.crypto import generate_keys, keys_match

MAIN = Path(__file__).resolve().parent.parent / "main.py"


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


@contextmanager
def local_nodes(
    cfg: ExperimentConfig, log_dir: Path, out_dir: Path
) -> Iterator[tuple[dict[str, str], str]]:
    """Start one node process per config node; yield (endpoints, token); always stop them all."""
    token = secrets.token_hex(16)
    env = {**os.environ, "HEFL_TOKEN": token, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    out_dir.mkdir(parents=True, exist_ok=True)
    ports = free_ports(len(cfg.nodes))
    endpoints = {
        node: f"http://127.0.0.1:{port}" for node, port in zip(cfg.nodes, ports, strict=True)
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for node, port in zip(cfg.nodes, ports, strict=True):
            with open(out_dir / f"{file_stem(node)}.out", "wb") as sink:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            str(MAIN),
                            "node",
                            "--host",
                            "127.0.0.1",
                            "--port",
                            str(port),
                            "--log-dir",
                            str(log_dir),
                            "--label",
                            node,
                        ],
                        env=env,
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                    )
                )
        yield endpoints, token
    finally:
        stop_all(procs)


def stop_all(procs: list[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    """SIGTERM every process, then SIGKILL what is still alive after `grace` seconds."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@contextmanager
def local_keys(
    raw: dict[str, Any],
    cfg: ExperimentConfig,
    experiment: str,
) -> Iterator[tuple[dict[str, Any], ExperimentConfig]]:
    """Key material for one local run: the config's key folder when seal.sh made keys for these
    parameters there, else fresh keys in keys/local-<experiment>/, removed when the run ends."""
    enc = cfg.encryption
    if enc.scheme == "none" or keys_match(enc.he_params(), Path(enc.key_dir)):
        yield raw, cfg
        return
    key_dir = (Path("keys") / f"local-{experiment}").resolve()
    raw = {
        **raw,
        "encryption": {**raw.get("encryption", {}), "scheme": enc.scheme, "key_dir": str(key_dir)},
    }
    cfg = parse_config(raw)
    try:
        generate_keys(cfg.encryption.he_params(), key_dir)
        yield raw, cfg
    finally:
        shutil.rmtree(key_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            # keys/ itself, when this run created it and nothing else is there
            key_dir.parent.rmdir()
