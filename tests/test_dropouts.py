"""Stragglers and dropouts with real processes on 127.0.0.1: `network.round_deadline_s` and
`aggregator.min_clients`."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from hefl.address import log_name
from tests.helpers import Cluster, local_until_round, process_tree, tree_config, wait_gone

pytestmark = pytest.mark.process


def kill_node(parent: int, node: str) -> None:
    """SIGKILL the local node `node` started by `parent`: its gunicorn master and worker."""
    killed = 0
    for pid in process_tree(parent):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if f"--label\0{node}\0" in cmd:
            os.kill(pid, signal.SIGKILL)
            killed += 1
    assert killed == 2, f"{killed} processes of {node} below {parent}"


def deadline_config(rounds: int, deadline: float, min_clients: int) -> dict[str, Any]:
    """4 clients under 2 adding switches under the aggregator; rounds of about a second."""
    raw = tree_config(clients=4, leaves=2, spine=False, rounds=rounds)
    raw["training"]["epochs"] = 10
    raw["aggregator"]["min_clients"] = min_clients
    raw["network"] = {"round_deadline_s": deadline}
    return raw


def test_a_client_killed_mid_run_is_a_dropout_above_min_clients(tmp_path: Path) -> None:
    """SIGKILL of one of 4 clients with min_clients 3: the run completes (exit 0), the rounds
    after it name it missing and average over the 3 present, and every other log is whole."""
    proc = local_until_round(tmp_path, deadline_config(rounds=6, deadline=3, min_clients=3), 2)
    victim = "127.0.0.1:102"
    kill_node(proc.pid, victim)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    assert "missing 127.0.0.1:102" in out  # the round lines name it
    (exp,) = (tmp_path / "log").iterdir()
    rows = json.loads((exp / "rounds.json").read_text())
    assert len(rows) == 6
    assert rows[-1]["contributors"] == 3 and rows[-1]["missing"] == [victim]
    assert rows[0]["contributors"] == 4 and rows[0]["missing"] == []
    record = json.loads((exp / "run.json").read_text())
    assert record["status"] == "finished"
    agg = json.loads((exp / log_name("127.0.0.1:1")).read_text())
    last = agg["iteration"][-1]
    assert last["missing"] == [victim] and len(last["contributors"]) == 3
    assert wait_gone(str(tmp_path)) == []


def test_a_straggler_past_the_deadline_rejoins(cluster: Cluster) -> None:
    """A client paused past the round deadline: the round completes without it (named missing),
    its late update gets 422 'round closed', it applies that round's result like everyone else,
    and it contributes to the rounds after."""
    cluster.raw["aggregator"]["iteration"] = 8
    cluster.raw["aggregator"]["min_clients"] = 1
    cluster.raw["network"]["round_deadline_s"] = 3
    agg = cluster.run()
    victim = cluster.ids["c1"]
    paused = process_tree(cluster.procs[1].pid)
    try:
        assert agg.stdout is not None
        lines = []
        for line in agg.stdout:
            lines.append(line)
            if line.startswith("round   2/"):
                break
        for pid in paused:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(5)  # past the deadline of the round it was in
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
        out, err = agg.communicate(timeout=240)
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
        agg.kill()
    assert agg.returncode == 0, err[-3000:]
    rows = json.loads(next((cluster.tmp / "agg").glob("*/rounds.json")).read_text())
    assert len(rows) == 8
    missed = [row["round"] for row in rows if victim in row["missing"]]
    assert missed, rows  # at least one round went on without it
    assert rows[-1]["missing"] == [] and rows[-1]["contributors"] == 2  # it rejoined
    assert "round closed" in cluster.stderr("sw") or "round closed" in cluster.stderr("c1")
