"""deploy/vcluster.sh: every node in a network namespace of its own on one bridge, links shaped with
tc, `main.py agg` from the aggregator's namespace; everything it made is gone afterwards."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_main, tree_config

pytestmark = [pytest.mark.root, pytest.mark.process]

SCRIPT = ROOT / "deploy" / "vcluster.sh"
LINKS = ROOT / "deploy" / "configs" / "links-1m.json"


def env() -> dict[str, str]:
    """PATH with this venv first: the script runs `python` from PATH, as with the venv active."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


@pytest.fixture(autouse=True)
def namespaces_here() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces and tc)")
    probe = subprocess.run(["ip", "netns", "add", "hefl-probe"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"network namespaces are not permitted here: {probe.stderr.strip()}")
    subprocess.run(["ip", "netns", "del", "hefl-probe"], check=True)


def leftovers() -> dict[str, list[str]]:
    """What a virtual cluster could leave behind: its namespaces, links (and so their qdiscs),
    work folders (the run's credential and keys) and node processes."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    procs = []
    for pid in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"vcluster-hv" in cmd:
            procs.append(pid)
    return {
        "netns": re.findall(r"^(hv[0-9a-f]{4}-\d+)", netns, re.M),
        "links": re.findall(r"^\d+: (hv[0-9a-f]{4}\w*)", links, re.M),
        "work": [str(p) for p in Path("/tmp").glob("vcluster-hv*")],
        "procs": procs,
    }


def vcluster(config: Path, log_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), "--config", str(config), "--log-dir", str(log_dir), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env(),
        check=False,
    )


def one_round(tmp_path: Path) -> Path:
    """links-1m.json for one round, with one client under each of its two switches (5 nodes)
    and a model a tenth of the size (100k parameters: 1.2 MB a seeded CKKS message, a tenth of
    the CKKS work)."""
    raw = json.loads(LINKS.read_text())
    raw["aggregator"]["iteration"] = 1
    raw["model"]["hidden"] = [1333]
    for gone in ("10.10.1.2", "10.10.1.4"):
        del raw["others"][gone]
    for index, client in enumerate(("10.10.1.1", "10.10.1.3")):
        raw["others"][client].update(client_number=2, index=index)
    raw["others"]["10.10.1.5"]["receive"] = ["10.10.1.1"]
    raw["others"]["10.10.1.6"]["receive"] = ["10.10.1.3"]
    cfg = tmp_path / "links.json"
    cfg.write_text(json.dumps(raw))
    return cfg


def test_a_config_it_cannot_place_is_refused_in_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(tree_config(clients=2, leaves=1)))  # every node on 127.0.0.1
    proc = vcluster(cfg, tmp_path / "log")
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "vcluster:" in proc.stderr and "127.0.0.1" in proc.stderr
    bad = vcluster(cfg, tmp_path / "log", "--rate", "fast")
    assert bad.returncode == 2 and "--rate" in bad.stderr
    assert leftovers() == {"netns": [], "links": [], "work": [], "procs": []}


def test_it_takes_the_schemes_and_backends_agg_takes(tmp_path: Path) -> None:
    """links-1m.json's tree (one round, two clients) with SEAL-Python's bfv: both flags reach the
    keys and every node (tests/test_cli.py checks the choices are agg's, paillier among them)."""
    pytest.importorskip("seal")
    flags, label = ["--backend", "seal", "--scheme", "bfv"], "bfv/seal"
    cfg = one_round(tmp_path)
    proc = vcluster(cfg, tmp_path / "log", *flags)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = re.search(r"^vcluster: logs in (\S+)", proc.stdout, re.M)
    assert folder, proc.stdout
    exp = Path(folder.group(1))
    run = json.loads((exp / "run.json").read_text())
    assert run["status"] == "finished" and run["rounds_completed"] == 1
    scheme = flags[flags.index("--scheme") + 1]
    assert run["encryption"]["scheme"] == scheme
    assert run["encryption"].get("backend") == ("seal" if "seal" in flags else None)
    logs = [json.loads(p.read_text()) for p in exp.glob("10.10.1.*.json")]
    assert len(logs) == 5 and {log["scheme"] for log in logs} == {scheme}
    assert f"scheme {label}," in run_main("report", str(exp)).stdout.splitlines()[0]
    bad = vcluster(cfg, tmp_path / "log", "--backend", "openfhe")
    assert bad.returncode == 2 and "--backend must be tenseal or seal" in bad.stderr


def test_a_slower_link_shows_in_the_round_time_and_nothing_is_left(tmp_path: Path) -> None:
    """2 clients, 2 switches, a 100k-parameter model, CKKS: about 1.2 MB a message seeded, which
    links of 20 Mbit/s carry in about 0.5 s (1 Gbit/s: 0.01 s; the whole round takes 0.3 s
    unshaped). The round cannot be shorter than the two hops of an update up to the aggregator at
    that rate."""
    before = leftovers()
    cfg = one_round(tmp_path)
    rate = "20mbit"
    proc = vcluster(cfg, tmp_path / "log", "--rate", rate)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = re.search(r"^vcluster: logs in (\S+)", proc.stdout, re.M)
    assert folder, proc.stdout
    exp = Path(folder.group(1))
    assert exp.parent == tmp_path / "log"
    assert len(list((exp / "vcluster").glob("10.10.1.*.out"))) == 5
    assert json.loads((exp / "vcluster" / "links.json").read_text())["rate"] == rate
    run = json.loads((exp / "run.json").read_text())
    assert run["status"] == "finished" and run["config"]["encryption"]["scheme"] == "ckks"
    logs = {p.stem: json.loads(p.read_text()) for p in exp.glob("10.10.1.*.json")}
    assert len(logs) == 5
    summary = json.loads((exp / "summary.json").read_text())
    (only,) = summary["rounds"]
    assert only["aggregator_ingress"] > 2e6  # two 1.2 MB seed lists
    # client 10.10.1.1 to its switch 10.10.1.5, that switch to the aggregator: one after the other
    hops = [logs[n]["iteration"][0]["byte_send_up"] for n in ("10.10.1.1", "10.10.1.5")]
    floor = sum(hops) * 8 / 20e6
    assert floor > 0.75 and only["round_s"] >= 0.95 * floor, (only["round_s"], floor)
    assert leftovers() == before


def test_ctrl_c_ends_the_run_keeps_its_logs_and_removes_everything(tmp_path: Path) -> None:
    before = leftovers()
    raw = json.loads(LINKS.read_text())  # one client of the four: quicker to start
    for gone in ("10.10.1.2", "10.10.1.3", "10.10.1.4", "10.10.1.6"):
        del raw["others"][gone]
    raw["others"]["10.10.1.1"]["client_number"] = 1
    raw["others"]["10.10.1.5"]["receive"] = ["10.10.1.1"]
    cfg = tmp_path / "one.json"
    cfg.write_text(json.dumps(raw))
    proc = subprocess.Popen(
        [str(SCRIPT), "--config", str(cfg), "--log-dir", str(tmp_path), "--rate", "100mbit"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env(), "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 180
    for line in proc.stdout:
        seen.append(line)
        if "running 2 rounds" in line:
            break
        assert time.monotonic() < deadline, "".join(seen)
    time.sleep(3)  # mid-round: the updates are on the (slow) links
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    out = "".join(seen) + rest
    assert proc.returncode == 130, out
    (exp,) = [p for p in tmp_path.iterdir() if (p / "run.json").is_file()]
    run = json.loads((exp / "run.json").read_text())
    # the script hands Ctrl-C to agg as SIGTERM, which agg takes like Ctrl-C
    assert (run["status"], run["error"]) == ("failed", "interrupted (SIGTERM)"), run
    assert "vcluster: stopping the experiment" in out
    assert len(list((exp / "vcluster").glob("10.10.1.*.out"))) == 3  # kept on this path too
    assert leftovers() == before
