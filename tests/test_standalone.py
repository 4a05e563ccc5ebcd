"""`main.py agg` with standalone nodes (`main.py --port`, as on a cluster) over HTTP on 127.0.0.1:
start order, the nodes it cannot reach, test.py's push, and the same results as local mode. The
tests that share the `standalone` run take one xdist worker (tests/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hefl.control.local import free_ports
from tests.helpers import ROOT, addressed, experiment_dir, node_logs, run_main

pytestmark = pytest.mark.process

PY = sys.executable


def _start_nodes(
    ports: list[int], log_dir: Path, env: dict[str, str]
) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [
                PY,
                str(ROOT / "main.py"),
                "--port",
                str(p),
                "--host",
                "127.0.0.1",
                "--log-dir",
                str(log_dir),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        for p in ports
    ]


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=20)


@dataclass
class Standalone:
    """`main.py agg` with four standalone nodes (`main.py --port`), started after it: the nodes,
    still up, their config, credential and environment, and the run's output."""

    tmp: Path
    cfg: Path
    ports: list[int]
    env: dict[str, str]
    agg: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    """The aggregator command starts first (start order must not matter); the nodes are started
    without OMP_NUM_THREADS (they take training.threads, as local ones do); 3 rounds."""
    tmp = tmp_path_factory.mktemp("standalone")
    ports = free_ports(4)
    cfg = tmp / "config.json"
    cfg.write_text(json.dumps(addressed(ports, rounds=3)[0]))
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | {"HEFL_TOKEN": "t0ken"}
    agg = subprocess.Popen(
        [PY, str(ROOT / "main.py"), "agg", "--config", str(cfg), "--log-dir", str(tmp / "agg")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    time.sleep(1.0)  # the aggregator command starts first
    nodes = _start_nodes(ports, tmp / "nodes", env)
    try:
        out, err = agg.communicate(timeout=180)
        yield Standalone(
            tmp, cfg, ports, env, subprocess.CompletedProcess(agg.args, agg.returncode, out, err)
        )
    finally:
        agg.kill()
        agg.wait()  # reaped: a failed test leaves no running process to warn about later
        _stop(nodes)


def test_agg_waits_for_late_nodes_pushes_and_runs(standalone: Standalone) -> None:
    agg, env, cfg = standalone.agg, standalone.env, standalone.cfg
    assert agg.returncode == 0, agg.stderr[-2000:]
    assert sum(line.startswith("round ") for line in agg.stdout.splitlines()) == 3
    exp = experiment_dir(standalone.tmp / "agg")
    assert len(node_logs(exp)) == 4  # every node's log gathered by the aggregator
    switch = f"127.0.0.1:{standalone.ports[2]}"
    push = subprocess.run(
        [PY, str(ROOT / "test.py"), switch, "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert (
        push.returncode == 0
        and push.stdout.startswith("200 ")
        and '"role": "switch"' in push.stdout
    )
    bad = subprocess.run(
        [PY, str(ROOT / "test.py"), switch, "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "HEFL_TOKEN": "wrong"},
        cwd=ROOT,
    )
    assert bad.returncode == 1 and "401" in bad.stderr


def _wait_answering(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout:g}s")


def test_agg_names_every_unreachable_node(tmp_path: Path) -> None:
    ports = free_ports(4)
    raw = addressed(ports)[0]
    raw["network"]["startup_timeout_s"] = 2
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(raw))
    nodes = _start_nodes(ports[:2], tmp_path / "nodes", {**os.environ, "HEFL_TOKEN": "x"})
    try:
        for port in ports[:2]:  # started and answering: only the other two are unreachable
            _wait_answering(f"http://127.0.0.1:{port}/health")
        proc = run_main(
            "agg",
            "--config",
            str(cfg),
            "--log-dir",
            str(tmp_path / "agg"),
            timeout=120,
            env={**os.environ, "HEFL_TOKEN": "x"},
        )
    finally:
        _stop(nodes)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert f"2 node(s) not answering /health after 2s: 127.0.0.1:{ports[2]}" in line
    assert f"127.0.0.1:{ports[3]}" in line and "connection refused" in line


def test_local_and_agg_runs_of_one_config_give_identical_accuracies(
    standalone: Standalone, tmp_path: Path
) -> None:
    """Standalone nodes started without OMP_NUM_THREADS use training.threads like local ones."""
    assert standalone.agg.returncode == 0, standalone.agg.stderr[-2000:]
    local = run_main("local", "--config", str(standalone.cfg), "--log-dir", str(tmp_path))
    assert local.returncode == 0, local.stderr[-2000:]
    first, second = (
        json.loads((experiment_dir(d) / "rounds.json").read_text())
        for d in (tmp_path, standalone.tmp / "agg")
    )
    assert [(r["accuracy"], r["loss"]) for r in first] == [
        (r["accuracy"], r["loss"]) for r in second
    ]
