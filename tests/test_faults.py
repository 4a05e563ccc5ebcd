"""Faults a researcher meets, with real processes on 127.0.0.1: signals to local mode, and what
every run leaves behind."""

from __future__ import annotations

import json
import os
import re
import shutil
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
    (exp,) = (p for p in (tmp_path / "log").iterdir() if not p.name.startswith("."))
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
    (exp,) = (d for d in (cluster.tmp / "agg").iterdir() if (d / "run.json").is_file())
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


def agg_until_round(cluster: Cluster, round_: int) -> subprocess.Popen[str]:
    """`main.py agg` on the cluster, returned once it printed round `round_`'s line; its later
    lines stay in its stdout."""
    agg = cluster.run()
    assert agg.stdout is not None
    for line in agg.stdout:
        if line.startswith(f"round {round_:>3}/"):
            return agg
    agg.wait()
    raise AssertionError(f"agg ended before round {round_}: {agg.stderr and agg.stderr.read()}")


def finish(agg: subprocess.Popen[str], timeout: float = 180) -> tuple[str, str]:
    """The rest of agg's output once it exits (killed and reaped if it does not in time)."""
    try:
        out, err = agg.communicate(timeout=timeout)
    finally:
        agg.kill()
        agg.wait()  # reaped: a failed test leaves no running process to warn about later
    return out, err


def rejoined_run(cluster: Cluster, out: str, victim: str) -> tuple[Path, int]:
    """The finished run folder of a run in which `victim` restarted and rejoined once, checked:
    named once, its fault recorded, its log (kept rounds and new ones) gathered whole."""
    lines = [x for x in out.splitlines() if " restarted and " in x]
    assert len(lines) == 1, out
    (line,) = lines
    found = re.fullmatch(
        re.escape(victim) + r" restarted and lost its state; rejoined at round (\d+)", line
    )
    assert found, line
    at = int(found.group(1)) - 1
    (exp,) = (d for d in (cluster.tmp / "agg").iterdir() if (d / "run.json").is_file())
    record = json.loads((exp / "run.json").read_text())
    assert record["status"] == "finished", record
    assert {"node": victim, "event": "rejoined", "round": at} in [
        {k: f[k] for k in ("node", "event", "round")} for f in record["faults"]
    ]
    rounds = cluster.raw["aggregator"]["iteration"]
    for node in cluster.ids.values():  # every log gathered, finished
        node_log = json.loads((exp / log_name(node)).read_text())
        assert node_log["finished"], node
        assert [r["round"] for r in node_log["iteration"]] == list(range(rounds)), node
    victim_log = json.loads((exp / log_name(victim)).read_text())
    assert victim_log["rejoined"] == [at]
    assert len(json.loads((exp / "rounds.json").read_text())) == rounds
    return exp, at


def test_a_client_whose_worker_is_killed_rejoins_and_the_run_gives_the_same_results(
    cluster: Cluster, key_dirs: dict[str, Path]
) -> None:
    """A client's gunicorn worker is killed mid-run (as the OOM killer would): its master starts a
    new one, which takes up the experiment from the client's own disk (its config, the global
    model it last applied; bfv's rounding is keyed by round). The run completes, names the client
    once as restarted and rejoined, gathers every log whole, and gives the accuracies, to the
    bit, of the same config run again without a fault."""
    cluster.raw["encryption"] = {"scheme": "bfv", "key_dir": str(key_dirs["bfv"])}
    victim = cluster.ids["c1"]
    agg = agg_until_round(cluster, 2)
    _, *workers = process_tree(cluster.procs[1].pid)
    assert len(workers) == 1, workers
    os.kill(workers[0], signal.SIGKILL)
    out, err = finish(agg)
    assert agg.returncode == 0, err[-2000:]
    exp, at = rejoined_run(cluster, out, victim)
    assert at >= 2
    assert not list((cluster.tmp / "c1" / ".rejoin").glob("*.json"))  # finished: nothing kept
    shutil.move(exp, cluster.tmp / "faulty")
    again = cluster.run()
    out2, err2 = finish(again)
    assert again.returncode == 0, err2[-2000:]
    (oracle,) = (d for d in (cluster.tmp / "agg").iterdir() if (d / "run.json").is_file())
    first, second = (
        json.loads((d / "rounds.json").read_text()) for d in (cluster.tmp / "faulty", oracle)
    )
    assert [(r["accuracy"], r["loss"]) for r in first] == [
        (r["accuracy"], r["loss"]) for r in second
    ]


def test_a_client_node_restarted_whole_rejoins_after_the_rounds_it_missed(
    cluster: Cluster,
) -> None:
    """With a round deadline, a client node's processes are killed (master and worker, as a
    crash of the machine's service would) and started again a few seconds later, as systemd's
    Restart=on-failure does. The rounds in between complete without it (a dropout, named
    missing); it then takes up the results its switch kept sending it, from the model on its
    disk, and contributes again; the run completes with every log gathered."""
    cluster.raw["network"] = {"startup_timeout_s": 60, "round_deadline_s": 1.5}
    cluster.raw["aggregator"]["min_clients"] = 1
    cluster.raw["aggregator"]["iteration"] = 10
    victim = cluster.ids["c1"]
    agg = agg_until_round(cluster, 2)
    tree = process_tree(cluster.procs[1].pid)
    for pid in tree:
        os.kill(pid, signal.SIGKILL)
    cluster.procs[1].wait(timeout=30)
    wait_gone(f"--port {victim.split(':')[1]} ")
    time.sleep(4)  # rounds complete without it
    cluster.procs[1] = cluster.start("c1", wait=False)
    out, err = finish(agg)
    assert agg.returncode == 0, err[-2000:]
    assert f"{victim} stopped answering in round " in out, out
    exp, at = rejoined_run(cluster, out, victim)
    rows = json.loads((exp / "rounds.json").read_text())
    missed = [r["round"] for r in rows if victim in (r.get("missing") or [])]
    assert missed and max(missed) < 9, rows  # it missed rounds, and contributed again after
    assert all(victim not in (r.get("missing") or []) for r in rows[max(missed) + 1 :])


def test_a_restarted_switch_is_named_and_its_log_of_before_is_gathered(cluster: Cluster) -> None:
    """A switch's worker is killed mid-run: a switch does not rejoin (its sums of the open round
    were in its memory only), so the run stops with a line that starts with the switch and says
    it restarted; its log of the rounds before, on its own disk, is gathered all the same."""
    cluster.raw["aggregator"]["iteration"] = 500
    victim = cluster.ids["sw"]
    agg = agg_until_round(cluster, 3)
    _, *workers = process_tree(cluster.procs[2].pid)
    assert len(workers) == 1, workers
    os.kill(workers[0], signal.SIGKILL)
    _, err = finish(agg, timeout=120)
    assert agg.returncode == 1, err[-2000:]
    (line,) = err.strip().splitlines()
    assert line.startswith(
        f"error: {victim} answers as an unconfigured node: it restarted and lost its experiment"
    ), line
    assert cluster.health("sw")["state"] == "idle"
    (exp,) = (d for d in (cluster.tmp / "agg").iterdir() if (d / "run.json").is_file())
    gathered = json.loads((exp / log_name(victim)).read_text())
    assert len([r for r in gathered["iteration"] if r["end_time"]]) >= 3
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
