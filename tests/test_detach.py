"""A controller that outlives its terminal and its own death, with real processes on 127.0.0.1:
`main.py topology --local`, `nodes up` and `nodes down`; `agg --detach`, `follow`; a controller
killed with SIGKILL, seen gone by `runs`, gathered by `report`, taken over by `follow`."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from hefl.address import log_name
from tests.helpers import ROOT, command_line, node_processes, run_main

pytestmark = pytest.mark.process


def free_run(count: int) -> int:
    """A first port of `count` consecutive ports that are free on 127.0.0.1 now."""
    for _ in range(200):
        first = random.randrange(20000, 60000 - count)
        socks = []
        try:
            for port in range(first, first + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no run of free ports")


def make_config(tmp: Path, rounds: int) -> Path:
    """Two clients under one switch on 127.0.0.1 (5 nodes with the aggregator: 3 levels)."""
    cfg = tmp / "cfg.json"
    base = json.loads((ROOT / "config.json").read_text())
    base["aggregator"]["iteration"] = rounds
    base["encryption"] = {"scheme": "none"}
    base["training"] = {**base.get("training", {}), "device": "cpu"}
    (tmp / "base.json").write_text(json.dumps(base))
    made = run_main(
        "topology",
        "--clients", "2", "--fanout", "2", "--local",
        "--first-port", str(free_run(3)),
        "--config", str(tmp / "base.json"),
        "--out", str(cfg),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return cfg


def nodes(action: str, cfg: Path, log_dir: Path) -> subprocess.CompletedProcess[str]:
    done = run_main("nodes", action, "--config", str(cfg), "--log-dir", str(log_dir))
    assert done.returncode == 0, done.stderr
    return done


def test_nodes_up_then_agg_then_nodes_down_leaves_no_process(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, rounds=3)
    node_dir = tmp_path / "nodes-log"
    marker = f"--log-dir {node_dir}"
    try:
        up = nodes("up", cfg, node_dir)
        assert "3 node(s) started" in up.stdout, up.stdout
        assert len(node_processes(marker)) == 6  # a gunicorn master and worker each
        again = nodes("up", cfg, node_dir)  # idempotent: what runs is left as it is
        assert "0 node(s) started, 3 running already" in again.stdout, again.stdout
        agg = run_main("agg", "--config", str(cfg), "--log-dir", str(tmp_path / "ctl"))
        assert agg.returncode == 0, agg.stderr[-2000:]
        assert "round   3/3" in agg.stdout
    finally:
        down = run_main("nodes", "down", "--config", str(cfg), "--log-dir", str(node_dir))
    assert down.returncode == 0 and "3 node(s) stopped" in down.stdout, down.stdout + down.stderr
    assert node_processes(marker) == []
    port = int(json.loads(cfg.read_text())["aggregator"]["ip"].split(":")[1])
    with socket.socket() as blocker:  # a port taken by something else: named, nothing starts
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        refused = run_main("nodes", "up", "--config", str(cfg), "--log-dir", str(node_dir))
    assert refused.returncode == 1
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot start 1 node(s) here: 127.0.0.1:{port} "), line
    assert node_processes(marker) == []


def state_of(node: str) -> tuple[str, str]:
    health = requests.get(f"http://{node}/health", timeout=5).json()
    return health.get("experiment"), health.get("state")


def controller_pid(run: Path) -> int:
    return int(json.loads((run / "run.json").read_text())["controller_pid"])


def detached(cfg: Path, log_dir: Path) -> tuple[subprocess.Popen[str], Path]:
    """`agg --detach` following its controller; returned once round 2 completed."""
    follower = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "agg", "--config", str(cfg), "--log-dir",
         str(log_dir), "--detach"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    assert follower.stdout is not None
    first = follower.stdout.readline()
    assert "its controller runs detached (pid " in first, first + follower.stderr.read()
    experiment = first.split()[1].rstrip(":")
    for line in follower.stdout:  # the nodes run it: its rounds have begun
        if line.startswith("round   2/"):
            break
    return follower, log_dir / experiment


def test_a_detached_controller_outlives_its_follower_and_a_killed_one_is_gathered(
    tmp_path: Path,
) -> None:
    """SIGHUP to `agg --detach` (an ssh drop) stops the following only; `follow` shows the run to
    its end. Then a controller killed with SIGKILL mid-run: `runs` says it is gone, `report`
    gathers the nodes' logs once they finished the run (the rounds run on the nodes), and
    `follow` takes over a run whose nodes still run it."""
    cfg = make_config(tmp_path, rounds=12)
    node_dir, ctl_dir = tmp_path / "nodes-log", tmp_path / "ctl"
    nodes("up", cfg, node_dir)
    try:
        follower, run = detached(cfg, ctl_dir)
        follower.send_signal(signal.SIGHUP)
        out, err = follower.communicate(timeout=60)
        assert follower.returncode == 0, err
        assert "stopped following; the run goes on" in out, out
        followed = run_main("follow", str(run), "--log-dir", str(ctl_dir))
        assert followed.returncode == 0, followed.stderr
        assert "round  12/12" in followed.stdout and f"{run.name}: finished" in followed.stdout

        follower, run = detached(cfg, ctl_dir)  # killed: the nodes finish the run alone
        os.kill(controller_pid(run), signal.SIGKILL)
        follower.kill()
        follower.communicate()
        aggregator = json.loads(cfg.read_text())["aggregator"]["ip"]
        deadline = time.monotonic() + 120
        while state_of(aggregator) != (run.name, "finished"):
            assert time.monotonic() < deadline
            time.sleep(0.3)
        runs = run_main("runs", "--log-dir", str(ctl_dir))
        (line,) = [x for x in runs.stdout.splitlines() if x.startswith(run.name)]
        assert " gone " in f" {line} ", runs.stdout
        report = run_main("report", str(run), "--log-dir", str(ctl_dir))
        assert report.returncode == 0, report.stderr
        assert "the nodes finished it (12 rounds): recorded as finished, logs gathered" in (
            report.stdout
        ), report.stdout
        record = json.loads((run / "run.json").read_text())
        assert record["status"] == "finished" and record["rounds_completed"] == 12
        conf = json.loads((run / "config.json").read_text())
        for node in [conf["aggregator"]["ip"], *conf["others"]]:
            assert json.loads((run / log_name(node)).read_text())["finished"], node
        summary = json.loads((run / "summary.json").read_text())
        assert summary["rounds_completed"] == 12

        cfg_long = json.loads(cfg.read_text())
        cfg_long["aggregator"]["iteration"] = 60
        cfg.write_text(json.dumps(cfg_long))
        follower, run = detached(cfg, ctl_dir)  # killed: `follow` takes it over
        os.kill(controller_pid(run), signal.SIGKILL)
        follower.kill()
        follower.communicate()
        followed = run_main("follow", "--log-dir", str(ctl_dir))  # the latest run
        assert followed.returncode == 0, followed.stderr[-2000:]
        out = followed.stdout
        assert "is gone: killed before it could say; a detached controller takes it over" in out
        assert f"experiment {run.name}: its controller is gone; this process (pid " in out, out
        taken = int(out.split("this process (pid ")[1].split(")")[0])
        assert "from round 1 of" not in out  # the rounds closed before are not printed again
        record = json.loads((run / "run.json").read_text())
        assert record["status"] == "finished" and record["rounds_completed"] == 60
        assert record["controller_since"] and record["controller_pid"] == taken
        assert "--take-over" in record["command"]
        assert stat.S_IMODE((run / "controller.log").stat().st_mode) == 0o600  # the page's key
    finally:
        nodes("down", cfg, node_dir)


def test_a_shortened_detach_flag_detaches_once(tmp_path: Path) -> None:
    """argparse takes `--det` for `--detach`: the detached controller is handed neither, and a
    controller with its experiment id never detaches again."""
    cfg = make_config(tmp_path, rounds=2)
    raw = json.loads(cfg.read_text())
    raw["network"] = {"startup_timeout_s": 1}  # nobody serves: it fails at once
    cfg.write_text(json.dumps(raw))
    done = run_main("agg", "--config", str(cfg), "--log-dir", str(tmp_path / "ctl"), "--det")
    assert done.returncode == 1, done.stdout + done.stderr
    (run,) = (tmp_path / "ctl").iterdir()
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "failed" and "not answering /health" in record["error"]
    assert not [a for a in record["command"] if a.startswith("--d")], record["command"]
    assert record["command"].count("--experiment") == 1

    def left() -> list[int]:
        return [
            pid
            for pid in (int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit())
            if run.name in command_line(pid) and pid != os.getpid()
        ]

    # no controller of it still running (nor detaching again): the detached one, which wrote the
    # record, may take a moment to exit on a loaded machine
    deadline = time.monotonic() + 10
    while left() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left() == []
