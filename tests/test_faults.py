"""Faults a researcher meets, with real processes on 127.0.0.1: signals to local mode, and what
every run leaves behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from hefl.address import log_name
from hefl.node.wire import TOKEN_HEADER
from tests.helpers import (
    ROOT,
    TOKEN,
    Cluster,
    local_until_round,
    process_tree,
    results_agree,
    run_local,
    tree_config,
    wait_gone,
)

pytestmark = pytest.mark.process

PY = sys.executable


def ckks(rounds: int) -> dict[str, Any]:
    """Two clients, one switch; ckks with no keys in the config's key folder: local mode makes
    them in keys/local-<experiment>/ for the run."""
    return tree_config(
        clients=2,
        leaves=1,
        spine=False,
        rounds=rounds,
        encryption={"scheme": "ckks", "key_dir": "no-keys-here"},
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_local_mode_like_ctrl_c(tmp_path: Path, signum: int) -> None:
    proc = local_until_round(tmp_path, ckks(rounds=500), 2)
    assert list((tmp_path / "keys").glob("local-*/secret.ctx"))  # made for the run
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, err[-2000:]
    assert f"interrupted ({name}): every node was stopped" in err
    assert wait_gone(str(tmp_path), timeout=5) == []
    assert not list((tmp_path / "keys").glob("local-*"))
    (exp,) = (tmp_path / "log").iterdir()
    record = json.loads((exp / "run.json").read_text())
    assert (record["status"], record["error"]) == ("failed", f"interrupted ({name})")
    assert record["ended"] and record["rounds_completed"] >= 2
    rows = json.loads((exp / "rounds.json").read_text())
    assert [row["round"] for row in rows] == list(range(len(rows))) and len(rows) >= 2
    results_agree(exp)


def test_sigkill_of_local_mode_leaves_no_node_and_the_next_run_no_key_folder(
    tmp_path: Path,
) -> None:
    proc = local_until_round(tmp_path, ckks(rounds=500), 2)
    proc.kill()
    proc.communicate(timeout=30)
    assert wait_gone(str(tmp_path)) == []  # every node went with it
    (stale,) = (tmp_path / "keys").glob("local-*")  # nothing could remove it
    (tmp_path / "config.json").write_text(json.dumps(ckks(rounds=1)))
    again = run_local(tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert not stale.exists() and not list((tmp_path / "keys").glob("local-*"))


def test_a_failed_run_leaves_its_record_and_ends_the_surviving_nodes(cluster: Cluster) -> None:
    """A client killed mid-run: `agg` names it; run.json says failed and why, rounds.json holds
    the rounds that completed, the surviving nodes are told the experiment ended (they stop
    their round work and keep their logs) and their logs are gathered."""
    cluster.raw["aggregator"]["iteration"] = 500
    agg = cluster.run()
    try:
        assert agg.stdout is not None
        for line in agg.stdout:
            if line.startswith("round   3/"):
                break
        victim = cluster.ids["c1"]
        cluster.procs[1].kill()  # c1's gunicorn master; its worker exits with it
        out, err = agg.communicate(timeout=240)
    finally:
        agg.kill()
        agg.wait()  # reaped: a failed test leaves no running process to warn about later
    assert agg.returncode == 1 and victim in err, err[-2000:]
    (exp,) = (cluster.tmp / "agg").iterdir()
    record = json.loads((exp / "run.json").read_text())
    assert record["status"] == "failed" and victim in record["error"]
    rows = json.loads((exp / "rounds.json").read_text())
    assert len(rows) >= 3 and rows == sorted(rows, key=lambda r: r["round"])
    assert results_agree(exp) == len(rows)
    assert (exp / "accuracy.png").is_file()
    for name in ("c0", "sw", "agg"):
        health = cluster.health(name)
        assert health["state"] == "stopped", (name, health)
        node_log = json.loads((exp / log_name(cluster.ids[name])).read_text())
        assert len(node_log["iteration"]) >= 3


def test_a_restarted_node_is_named_with_what_happened_to_it(cluster: Cluster) -> None:
    """A client's gunicorn worker is killed (as the OOM killer would): its master starts a new
    one, with no experiment. The run stops with a line that starts with that node and says it
    restarted and lost its experiment, whoever notices first (its switch relaying to it, or the
    controller's probe, whose kept-alive connection to the old worker is reset)."""
    cluster.raw["aggregator"]["iteration"] = 500
    agg = cluster.run()
    victim = cluster.ids["c1"]
    try:
        assert agg.stdout is not None
        for line in agg.stdout:
            if line.startswith("round   2/"):
                break
        master, *workers = process_tree(cluster.procs[1].pid)
        assert len(workers) == 1, workers
        os.kill(workers[0], signal.SIGKILL)
        out, err = agg.communicate(timeout=120)
    finally:
        agg.kill()
        agg.wait()  # reaped: a failed test leaves no running process to warn about later
    assert agg.returncode == 1, err[-2000:]
    (line,) = err.strip().splitlines()
    assert line.startswith(
        f"error: {victim} answers as an unconfigured node: it restarted and lost its experiment"
    ), line
    assert cluster.health("c1")["state"] == "idle"  # a new worker, with no experiment
    (exp,) = (cluster.tmp / "agg").iterdir()
    results_agree(exp)


def test_a_retired_node_is_noticed_within_seconds(cluster: Cluster) -> None:
    """An /end for the experiment reaches a client mid-run (a token holder, or another
    controller): it stops, and its switch would wait for it until network.round_timeout_s (900
    s). The controller's next probe sees `stopped` and ends the run, naming it, within 10 s."""
    cluster.raw["aggregator"]["iteration"] = 500
    agg = cluster.run()
    victim = cluster.ids["c1"]
    try:
        assert agg.stdout is not None
        experiment = ""
        for line in agg.stdout:
            found = re.search(r"experiment (\S+)", line)
            experiment = found.group(1) if found else experiment
            if line.startswith("round   2/"):
                break
        headers = {TOKEN_HEADER: TOKEN, "Content-Type": "application/octet-stream"}
        end = requests.post(f"{cluster.url('c1')}/end/{experiment}", headers=headers, timeout=10)
        assert end.status_code < 300, end.text
        retired = time.monotonic()
        out, err = agg.communicate(timeout=120)
        noticed = time.monotonic() - retired
    finally:
        agg.kill()
        agg.wait()
    assert agg.returncode == 1, err[-2000:]
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: {victim} was retired during round "), line
    assert noticed < 10, noticed
    assert cluster.health("c1")["state"] == "stopped"


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 32 MiB tmpfs at tmp_path/disk (root only: mount), unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> None:
    """Write zeros until the disk is full."""
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass


@pytest.mark.root
def test_a_full_disk_mid_run_stops_it_with_one_line(tmp_path: Path, small_disk: Path) -> None:
    """The log folder's disk fills up during a run: the nodes that cannot write their logs still
    report it, the run stops with one line naming the node and the error (no traceback), and
    every node process is gone."""
    (tmp_path / "config.json").write_text(
        json.dumps(tree_config(clients=2, leaves=1, spine=False, rounds=500))
    )
    proc = subprocess.Popen(
        [
            PY,
            str(ROOT / "main.py"),
            "local",
            "--config",
            "config.json",
            "--log-dir",
            str(small_disk / "log"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("round   2/"):
            break
    fill(small_disk)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-2000:]
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and "No space left on device" in line, line
    assert "127.0.0.1:" in line  # the node that could not write
    assert wait_gone(str(tmp_path), timeout=15) == []


def test_a_paused_node_is_named_within_the_round_timeout(cluster: Cluster) -> None:
    """SIGSTOP of a client (its gunicorn master and worker): `agg` names it as hung within
    network.round_timeout_s (plus one probe), not minutes later; resumed, it still holds its
    experiment (no worker timeout emptied it)."""
    cluster.raw["aggregator"]["iteration"] = 500
    cluster.raw["network"]["round_timeout_s"] = 10
    agg = cluster.run()
    victim = cluster.ids["c1"]
    paused = process_tree(cluster.procs[1].pid)
    try:
        assert agg.stdout is not None
        for line in agg.stdout:
            if line.startswith("round   2/"):
                break
        exp = cluster.health("c1")["experiment"]
        for pid in paused:
            os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        out, err = agg.communicate(timeout=120)
        took = time.monotonic() - stopped
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
        agg.kill()
        agg.wait()  # reaped: a failed test leaves no running process to warn about later
    assert agg.returncode == 1, err[-2000:]
    (line,) = err.strip().splitlines()
    assert victim in line and ("hung" in line or "silent" in line), line
    # the round timeout, a probe, then the controller's salvage (logs, summary, plots: 15 s and
    # more on a loaded 2-core machine); still well before the 60 s read timeout would name it
    assert took < 10 + 3 + 5 + 27, f"named after {took:.0f}s"
    assert cluster.health("c1")["experiment"] == exp  # its state survived the pause


def test_an_unwritable_log_folder_is_one_line(tmp_path: Path) -> None:
    """The controller's own log folder cannot be made (a file stands where it would go; root
    ignores file modes, not that): one line, exit 1, no node left running."""
    (tmp_path / "config.json").write_text(json.dumps(tree_config(clients=2, leaves=1, spine=False)))
    (tmp_path / "log").write_text("a file, not a folder")
    proc = run_local(tmp_path, timeout=120)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and "log" in line and "Errno" in line, line
    assert wait_gone(str(tmp_path), timeout=15) == []
