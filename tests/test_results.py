"""Results: the run record, the summary against the node logs, report, runs, compare and sweep."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from hefl.config import parse_config
from hefl.control.experiment import Controller
from hefl.control.sweep import apply, cells, read_sweep
from hefl.errors import ConfigError, ExperimentFailed
from hefl.records import SPLIT, NodeLog, RoundRow, RunSummary
from hefl.results.table import to_csv
from hefl.results.timeline import Timeline, critical_path
from tests.helpers import ROOT, Run, node_processes, run_main, tree_config

PLOTS = ("accuracy.png", "bytes.png", "phases.png", "critical_path.png")


@pytest.fixture(scope="module")
def ckks_exp(ckks_run: Run) -> Path:
    """The shared CKKS run (two-level tree, the second leaf forwarding, models saved)."""
    assert ckks_run.proc.returncode == 0, ckks_run.proc.stderr[-2000:]
    assert "results: " in ckks_run.proc.stdout
    return ckks_run.exp


@pytest.fixture(scope="module")
def bfv_exp(bfv_run: Run) -> Path:
    assert bfv_run.proc.returncode == 0, bfv_run.proc.stderr[-2000:]
    return bfv_run.exp


def logs_of(exp: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for path in exp.glob("*.json"):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "iteration" in data:
            out[data["node"]] = data
    return out


def test_run_record_says_what_ran_where(ckks_exp: Path) -> None:
    run = json.loads((ckks_exp / "run.json").read_text())
    assert run["status"] == "finished" and run["rounds_completed"] == 3
    assert run["started"] <= run["ended"] and run["duration_s"] > 0
    assert run["command"][1] == "local"
    # the effective config: defaults filled in
    assert run["config"]["network"]["round_deadline_s"] == 0
    assert run["config"]["encryption"]["scheme"] == "ckks"
    assert run["config"]["training"]["save_models"] is True
    assert len(run["code"]["commit"] or "") == 40 and isinstance(run["code"]["dirty"], bool)
    for package in ("python", "torch", "tenseal", "numpy", "flask", "gunicorn"):
        assert run["versions"][package], package
    assert run["seeds"]["training.seed"] == 0
    cfg = parse_config(json.loads((ckks_exp / "config.json").read_text()))
    assert set(run["nodes"]) == set(cfg.nodes)
    key_ids = set()
    for node, entry in run["nodes"].items():
        m = entry["machine"]
        assert m["cores"] >= 1 and m["memory_bytes"] > 0 and m["cpu_model"], node
        assert m["versions"]["python"] and isinstance(m["gpus"], list)
        if entry["role"] == "client":
            key_ids.add(entry["key_id"])
    assert len(key_ids) == 1 and len(key_ids.pop()) == 16
    # a key id, never key material: no long opaque string anywhere in the record
    text = (ckks_exp / "run.json").read_text()
    assert max(len(s) for s in json.loads(text, object_hook=_strings)["_"]) < 300


def _strings(obj: dict[str, Any]) -> dict[str, Any]:
    found = [v for v in obj.values() if isinstance(v, str)]
    for v in obj.values():
        if isinstance(v, dict) and "_" in v:
            found += v["_"]
        if isinstance(v, list):
            found += [x for x in v if isinstance(x, str)]
    return {**obj, "_": found or [""]}


def test_summary_agrees_with_the_node_logs(ckks_exp: Path) -> None:
    summary = json.loads((ckks_exp / "summary.json").read_text())
    logs = logs_of(ckks_exp)
    role = {n: d["role"] for n, d in logs.items()}
    rounds = json.loads((ckks_exp / "rounds.json").read_text())
    assert [row["round"] for row in summary["rounds"]] == [0, 1, 2]
    for row, agg_row in zip(summary["rounds"], rounds, strict=True):
        r = row["round"]
        recs = {n: d["iteration"][r] for n, d in logs.items()}
        clients = [rec for n, rec in recs.items() if role[n] == "client"]
        # accuracy: the clients' test-sample weighted mean (and what the aggregator printed)
        n = sum(c["test_samples"] for c in clients)
        want = sum(c["accuracy"] * c["test_samples"] for c in clients) / n
        assert row["accuracy"] == pytest.approx(want, abs=1e-6)
        assert row["accuracy"] == pytest.approx(agg_row["accuracy"], abs=1e-6)
        # bytes per link kind, counted by the receivers, equal what the senders' side gives
        received: dict[str, int] = {}
        for node, rec in recs.items():
            for peer, link in rec["links"].items():
                for d in ("up", "down"):
                    if link[f"received_{d}"]:
                        key = f"{d}:{role[peer]}->{role[node]}"
                        received[key] = received.get(key, 0) + link[f"received_{d}"]
        links = dict(row["bytes_by_link"])
        assert links.pop("metrics") == sum(
            rec["byte_received_control"] for n, rec in recs.items() if role[n] == "aggregator"
        )
        assert links == received
        assert row["aggregator_ingress"] == links["up:switch->aggregator"]
        assert row["bytes_on_wire"] == sum(rec["byte_received"] for rec in recs.values())
        # the phases split apart: crypto on its own
        assert {"train", "encrypt", "serialize", "decrypt", "apply"} <= set(
            row["phases_by_role"]["client"]
        )
        assert {"load", "aggregate", "serialize", "send"} <= set(row["phases_by_role"]["switch"])
        path = row["critical_path"]
        assert path["complete"] and path["nodes"][0] == path["nodes"][-1] == "127.0.0.1:1"
        assert sum(role[x] == "client" for x in path["nodes"]) == 1
        assert sum(path["split"][k] for k in SPLIT) == pytest.approx(row["round_s"], abs=1e-5)
        assert path["split"]["training"] > 0 and path["split"]["crypto"] > 0
        assert 0 < row["he_error"]["max_abs"] < 1e-3  # CKKS: approximate, not exact
    csv_rows = (ckks_exp / "summary.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 3 + 1 and csv_rows[-1].startswith("total,")
    for name in PLOTS:
        assert (ckks_exp / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_rebuilds_summary_and_plots_byte_for_byte(ckks_exp: Path, tmp_path: Path) -> None:
    copy = tmp_path / ckks_exp.name
    shutil.copytree(ckks_exp, copy)
    before = {n: (copy / n).read_bytes() for n in ("summary.json", "summary.csv", *PLOTS)}
    for name in before:
        (copy / name).unlink()
    proc = run_main("report", str(copy))
    assert proc.returncode == 0, proc.stderr
    assert "total: 3 of 3 rounds" in proc.stdout
    for name, data in before.items():
        assert (copy / name).read_bytes() == data, name


def test_report_on_a_failed_run_gives_the_rounds_that_completed(
    ckks_exp: Path, tmp_path: Path
) -> None:
    copy = tmp_path / ckks_exp.name
    shutil.copytree(ckks_exp, copy)
    for path in copy.glob("*.json"):  # as if every node had stopped after round 2
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "iteration" in data:
            data["iteration"] = data["iteration"][:2]
            data["finished"] = False
            path.write_text(json.dumps(data))
    (copy / "127.0.0.1_101.json").unlink()  # and one client's log were lost
    proc = run_main("report", str(copy))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((copy / "summary.json").read_text())
    assert [row["round"] for row in summary["rounds"]] == [0, 1]
    assert summary["logs_missing"] == ["127.0.0.1:101"]
    # a round's figures are the aggregator's, from every report it took (rounds.json's): a lost
    # client log changes neither; only without the aggregator's log do the client logs count
    rows = json.loads((copy / "rounds.json").read_text())
    for row, agg_row in zip(summary["rounds"], rows, strict=False):
        assert row["clients"] == agg_row["reports"] == 4
        assert row["accuracy"] == pytest.approx(agg_row["accuracy"], abs=1e-6)
    # without the aggregator's log, rounds.json holds its figures; only without both, the
    # clients' own logs count (and so the rounds they evaluated)
    (copy / "127.0.0.1_1.json").unlink()
    assert run_main("report", str(copy)).returncode == 0
    summary = json.loads((copy / "summary.json").read_text())
    assert [row["clients"] for row in summary["rounds"]] == [4, 4, 4]
    assert summary["totals"]["final_accuracy"] == pytest.approx(rows[-1]["accuracy"], abs=1e-6)
    (copy / "rounds.json").unlink()
    assert run_main("report", str(copy)).returncode == 0
    summary = json.loads((copy / "summary.json").read_text())
    assert [row["clients"] for row in summary["rounds"]] == [3, 3]
    assert summary["rounds_not_completed"] == []


def test_a_round_the_aggregator_did_not_close_stays_out_of_the_totals(
    ckks_exp: Path, tmp_path: Path
) -> None:
    """The failure of the issue: every client evaluated round 3's result but the aggregator
    never closed the round (a client died before reporting): the summary has 2 rounds, its
    final accuracy is round 2's, and round 3 is listed apart, never in the totals."""
    copy = tmp_path / ckks_exp.name
    shutil.copytree(ckks_exp, copy)
    agg_log = copy / "127.0.0.1_1.json"
    data = json.loads(agg_log.read_text())
    data["iteration"][2]["end_time"] = None
    data["finished"] = False
    agg_log.write_text(json.dumps(data))
    rows = json.loads((copy / "rounds.json").read_text())
    proc = run_main("report", str(copy))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["rounds_completed"] == summary["totals"]["rounds"] == 2
    assert [row["round"] for row in summary["rounds"]] == [0, 1]
    assert summary["totals"]["final_accuracy"] == pytest.approx(rows[1]["accuracy"], abs=1e-6)
    (later,) = summary["rounds_not_completed"]
    assert later["round"] == 2 and later["closed_by_aggregator"] is False
    assert later["clients_evaluated"] == 4 and later["nodes_logged"] == 8
    assert later["accuracy"] == pytest.approx(rows[2]["accuracy"], abs=1e-6)
    csv_rows = (copy / "summary.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in csv_rows[1:]] == ["0", "1", "total"]
    assert "round 3 did not complete (not closed by the aggregator" in proc.stdout
    assert "total: 2 of 3 rounds" in proc.stdout
    # rounds.json, as the controller writes it after a failure, can hold fewer rounds still: the
    # summary never counts more than it does
    (copy / "rounds.json").write_text(json.dumps(rows[:1]))
    assert run_main("report", str(copy)).returncode == 0
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["rounds_completed"] == 1
    assert [r["round"] for r in summary["rounds_not_completed"]] == [1, 2]
    assert summary["rounds_not_completed"][0]["closed_by_aggregator"] is True


def test_bfv_reports_its_quantization_error(bfv_exp: Path) -> None:
    summary = json.loads((bfv_exp / "summary.json").read_text())
    for row in summary["rounds"]:
        # 16-bit lanes over [-clip, clip]: a step of 2 / 2^16, stochastic rounding
        assert 0 < row["he_error"]["max_abs"] < 1e-3
        assert row["he_error"]["mean_abs"] <= row["he_error"]["max_abs"]
        assert row["critical_path"]["nodes"][0] == "127.0.0.1:1"


def test_runs_and_compare(ckks_exp: Path, bfv_exp: Path, tmp_path: Path) -> None:
    proc = run_main("runs", "--log-dir", str(ckks_exp.parent))
    assert proc.returncode == 0, proc.stderr
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith(ckks_exp.name)]
    assert "finished" in line and "ckks" in line and "3/3" in line
    proc = run_main("compare", str(ckks_exp), str(bfv_exp), "--out", str(tmp_path / "cmp"))
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.splitlines()
    assert table[0].split()[:3] == ["run", "n", "accuracy"]
    assert table[1].startswith("ckks, mixed") and "x1.00" in table[1]
    assert table[2].startswith("bfv, mixed")
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert rows[1]["rounds"]["mean"] == 3 and rows[1]["he_error_max"]["mean"] > 0
    assert rows[0]["divergence_from_first"]["mean"] == 0.0
    assert rows[0]["rounds_left_out"]["mean"] == 1  # the means leave out round 1: warm-up
    assert "each run's round 1 left out (warm-up)" in table[-2]  # before "wrote ..."
    for claim in ("accuracy", "overhead", "hops"):
        assert (tmp_path / "cmp" / f"compare-{claim}.png").read_bytes()[:4] == b"\x89PNG"


def test_an_existing_run_folder_is_never_rewritten(ckks_exp: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    shutil.copytree(ckks_exp, log / ckks_exp.name)
    before = (log / ckks_exp.name / "run.json").read_bytes()
    raw = json.loads((ckks_exp / "config.json").read_text())
    raw["encryption"] = {"scheme": "none"}  # its keys went with the run
    ctl = Controller(raw, parse_config(raw), {}, ckks_exp.name, log)
    with pytest.raises(ExperimentFailed, match="holds a run already"):
        ctl.run()
    assert (log / ckks_exp.name / "run.json").read_bytes() == before


@pytest.mark.process
def test_sweep_records_a_failing_cell_and_goes_on(tmp_path: Path) -> None:
    raw = tree_config(clients=2, leaves=1, spine=False, rounds=2)
    (tmp_path / "base.json").write_text(json.dumps(raw))
    sweep = {"config": "base.json", "grid": {"training.lr": [0.05, -1.0]}, "repeat": 1}
    (tmp_path / "s.json").write_text(json.dumps(sweep))
    proc = run_main("sweep", "s.json", "--log-dir", "log", cwd=tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stderr
    (folder,) = (tmp_path / "log").glob("sweep-s-*")
    record = json.loads((folder / "sweep.json").read_text())
    ok, bad = record["cells"]
    assert ok["status"] == "finished" and (Path(tmp_path / ok["run"]) / "summary.json").exists()
    assert bad["status"] == "failed" and "lr" in bad["error"]
    assert "cell 2 failed" in proc.stdout
    assert (folder / "compare.txt").read_text().splitlines()[1].startswith("lr=0.05")


@pytest.mark.process
def test_ctrl_c_stops_a_sweep_and_keeps_its_record(tmp_path: Path) -> None:
    raw = tree_config(clients=2, leaves=1, spine=False, rounds=50)
    (tmp_path / "base.json").write_text(json.dumps(raw))
    sweep = {"config": "base.json", "grid": {"training.lr": [-1.0, 0.05, 0.04]}}
    (tmp_path / "s.json").write_text(json.dumps(sweep))
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "sweep", "s.json", "--log-dir", "log"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},  # each line as it is printed
        # a test suite started in the background (`cmd &`) inherits SIGINT ignored; Ctrl-C needs it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("round   1/50"):  # cell 2 runs
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "sweep interrupted: 0 of 3 runs finished" in out
    (folder,) = (tmp_path / "log").glob("sweep-s-*")
    cells = json.loads((folder / "sweep.json").read_text())["cells"]
    assert [c["status"] for c in cells] == ["failed", "interrupted"]
    assert node_processes(str(tmp_path)) == []


# ---- pure parts


def test_a_chain_segment_splits_by_the_phase_running_then() -> None:
    line = Timeline("n", "client")
    line.spans = [(0.0, 1.0, "wait"), (0.2, 0.4, "load"), (0.5, 0.9, "train"), (0.6, 0.7, "send")]
    split = line.split(0.1, 1.2)
    # load beats wait, train beats send; 1.0 to 1.2 is covered by nothing: waiting
    assert split == pytest.approx({"training": 0.4, "crypto": 0.2, "transfer": 0.0, "waiting": 0.5})


def _log(node: str, role: str, messages: list[tuple[float, str, str, str, int]]) -> dict[str, Any]:
    by_round: dict[int, list[dict[str, Any]]] = {}
    for t, d, kind, peer, r in messages:
        by_round.setdefault(r, []).append(
            {"t": t, "dir": d, "kind": kind, "peer": peer, "bytes": 1}
        )
    return {
        "node": node,
        "role": role,
        "iteration": [
            {"round": r, "start_s": 0.0, "messages": m, "spans": []} for r, m in by_round.items()
        ],
    }


def test_the_critical_path_follows_the_last_update_back_to_its_clients_start() -> None:
    raw = tree_config(clients=2, leaves=1, spine=False, rounds=2)
    cfg = parse_config(raw)
    agg, leaf, c0, c1 = "127.0.0.1:1", "127.0.0.1:10", "127.0.0.1:100", "127.0.0.1:101"
    # clocks differ by hundreds of seconds between nodes: only durations on one clock count
    s, r = "sent", "received"
    logs = {
        agg: _log(
            agg,
            "aggregator",
            [(5.0, s, "begin", leaf, 0), (9.0, r, "update", leaf, 0), (9.5, s, "global", leaf, 0)],
        ),
        leaf: _log(
            leaf,
            "switch",
            [
                (100.1, r, "begin", agg, 0),
                (100.2, s, "begin", c0, 0),
                (100.3, s, "begin", c1, 0),
                (101.0, r, "update", c0, 0),
                (103.0, r, "update", c1, 0),
                (103.4, s, "update", agg, 0),
            ],
        ),
        c0: _log(c0, "client", [(50.0, r, "begin", leaf, 0), (50.5, s, "update", leaf, 0)]),
        c1: _log(c1, "client", [(700.0, r, "begin", leaf, 0), (702.5, s, "update", leaf, 0)]),
    }
    lines = {n: Timeline.of(NodeLog.from_json(d)) for n, d in logs.items()}
    path = critical_path(lines, cfg, 0)
    assert path is not None and path.complete
    assert path.nodes == (agg, leaf, c1, leaf, agg)
    assert path.client == c1
    # on nodes (no spans: all waiting): agg 0 (its first send went to the leaf) and 0.5, leaf
    # 0.2 (begin in, on to c1) and 0.4 (c1's update in, sum up), c1 2.5; the round 4.5 s
    assert path.split["waiting"] == pytest.approx(0.5 + 0.2 + 0.4 + 2.5)
    assert path.split["transfer"] == pytest.approx(4.5 - 3.6)


def test_csv_has_a_row_per_round_and_totals() -> None:
    summary = RunSummary.from_json({"experiment": "e", "rounds": [], "totals": {"rounds": 0}})
    assert to_csv(summary).splitlines()[0].startswith("round,accuracy,loss")


def test_sweep_cells_and_dotted_keys(tmp_path: Path) -> None:
    grid = {"encryption.scheme": ["none", "ckks"], "others.*.dumb": [False, True]}
    assert cells(grid) == [
        {"encryption.scheme": "none", "others.*.dumb": False},
        {"encryption.scheme": "none", "others.*.dumb": True},
        {"encryption.scheme": "ckks", "others.*.dumb": False},
        {"encryption.scheme": "ckks", "others.*.dumb": True},
    ]
    raw = tree_config(clients=4, leaves=2)
    out = apply(raw, {"others.*.dumb": True, "training.lr": 0.1, "network.retries": 1})
    assert all(n["dumb"] for n in out["others"].values() if n["type"] == "switch")
    assert all("dumb" not in n for n in out["others"].values() if n["type"] == "client")
    assert out["training"]["lr"] == 0.1 and out["network"] == {"retries": 1}
    assert raw["training"]["lr"] == 0.05  # the base is not touched
    with pytest.raises(ConfigError, match="no node of `others` has 'colour'"):
        apply(raw, {"others.*.colour": 1})
    with pytest.raises(ConfigError, match="'name' is not a section"):
        apply(raw, {"name.x": 1})
    for bad, why in (
        ("[]", "an object"),
        ('{"grid": {}}', "grid must be"),
        ('{"grid": {"a": 1}}', "non-empty list"),
        ('{"grid": {"a": [1]}, "repeat": 0}', "repeat"),
        ('{"grid": {"a": [1]}, "extra": 1}', "an object with keys"),
        ("{", "not JSON"),
    ):
        (tmp_path / "s.json").write_text(bad)
        with pytest.raises(ConfigError, match=why):
            read_sweep(tmp_path / "s.json")


def test_a_refused_update_and_a_late_retry_are_not_the_critical_path() -> None:
    """Clients under the aggregator: c1's update came late and was refused at the deadline (not
    in the sum), and c0 retried its update after the round's result had reached it (a duplicate):
    the path goes through c0's first attempt."""
    raw = tree_config(clients=2, leaves=1, spine=False, rounds=2)
    for c in ("127.0.0.1:100", "127.0.0.1:101"):
        raw["others"][c]["send"] = "127.0.0.1:1"
    del raw["others"]["127.0.0.1:10"]
    cfg = parse_config(raw)
    agg, c0, c1 = "127.0.0.1:1", "127.0.0.1:100", "127.0.0.1:101"
    s, r = "sent", "received"
    logs = {
        agg: _log(
            agg,
            "aggregator",
            [
                (1.0, s, "begin", c0, 0),
                (1.0, s, "begin", c1, 0),
                (3.0, r, "update", c0, 0),
                (5.0, r, "update", c1, 0),  # refused: the deadline had passed
                (5.02, s, "global", c0, 0),
                (5.02, s, "global", c1, 0),
                (65.0, r, "update", c0, 0),  # c0's retry: a duplicate
            ],
        ),
        c0: _log(
            c0,
            "client",
            [(10.0, r, "begin", agg, 0), (11.5, s, "update", agg, 0), (14.0, r, "global", agg, 0)]
            + [(70.0, s, "update", agg, 0)],
        ),
        c1: _log(c1, "client", [(20.0, r, "begin", agg, 0), (23.9, s, "update", agg, 0)]),
    }
    lines = {n: Timeline.of(NodeLog.from_json(d)) for n, d in logs.items()}
    path = critical_path(lines, cfg, 0, {agg: [c0]})
    assert path is not None and path.complete and path.client == c0
    assert path.nodes == (agg, c0, agg)
    split = path.split
    assert split["waiting"] == pytest.approx(1.5 + 2.02) and split["transfer"] >= 0


def test_the_code_version_of_a_tree_with_non_utf8_changes(tmp_path: Path) -> None:
    from hefl.provenance import code_version

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.txt").write_text("x\n")
    git("add", "a.txt")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one")
    clean = code_version(tmp_path)
    assert clean["dirty"] is False and len(clean["commit"]) == 40
    (tmp_path / "a.txt").write_bytes(b"caf\xe9\n")
    first = code_version(tmp_path)
    (tmp_path / "new\xe9.bin".encode().decode("utf-8", "surrogateescape")).write_bytes(b"\xff")
    second = code_version(tmp_path)
    assert first["dirty"] and second["dirty"] and first["commit"] == clean["commit"]
    assert first["diff_sha256"] != second["diff_sha256"]  # an untracked file counts too


def test_report_without_the_aggregators_log_or_with_a_cut_model(
    ckks_exp: Path, tmp_path: Path
) -> None:
    copy = tmp_path / ckks_exp.name
    shutil.copytree(ckks_exp, copy)
    (copy / "127.0.0.1_100.r1.local.npy").write_bytes(b"\x93NUMPY")  # a client killed mid-write
    proc = run_main("report", str(copy))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((copy / "summary.json").read_text())
    assert [row["he_error"] is None for row in summary["rounds"]] == [False, True, True]
    (copy / "127.0.0.1_1.json").unlink()
    proc = run_main("report", str(copy))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["logs_missing"] == ["127.0.0.1:1"] and summary["totals"]["seconds"] is None
    assert all(row["critical_path"] is None for row in summary["rounds"])


class FakeStatus:
    """The aggregator's /status as the controller's probe sees it (or a failure)."""

    def __init__(self, answer: dict[str, Any] | Exception) -> None:
        self.answer = answer

    def call(
        self, peer: str, kind: Any, body: bytes = b"", arg: str = "", timeouts: Any = None
    ) -> Any:
        if isinstance(self.answer, Exception):
            raise self.answer
        answer = self.answer

        class Resp:
            def json(self) -> dict[str, Any]:
                return answer

        return Resp()


def test_after_a_failure_the_controller_keeps_the_rounds_the_aggregator_closed(
    ckks_exp: Path, tmp_path: Path
) -> None:
    """salvage's view of the rounds: what the aggregator says after the end (it may have closed
    rounds since the last poll), trimmed to what its log in the folder holds; another
    experiment's answer, or none, leaves what the controller saw."""
    from hefl.errors import PeerUnreachable

    raw = json.loads((ckks_exp / "config.json").read_text())
    raw["encryption"] = {"scheme": "none"}
    ctl = Controller(raw, parse_config(raw), {}, ckks_exp.name, ckks_exp.parent)
    said = json.loads((ckks_exp / "rounds.json").read_text())
    rows = [RoundRow.from_json(row) for row in said]
    ctl.rows = rows[:1]
    ctl.transport = FakeStatus({"experiment": ckks_exp.name, "rounds": said})  # type: ignore[assignment]
    assert ctl.closed_rows() == rows  # the log holds all three
    ctl.transport = FakeStatus({"experiment": "another-run", "rounds": said})  # type: ignore[assignment]
    assert ctl.closed_rows() == rows[:1]
    ctl.transport = FakeStatus(PeerUnreachable("gone", peer="127.0.0.1:1"))  # type: ignore[assignment]
    assert ctl.closed_rows() == rows[:1]
    # the aggregator's log in the folder closed two rounds: no row past them is kept
    copy = tmp_path / ckks_exp.name
    shutil.copytree(ckks_exp, copy)
    agg_log = copy / "127.0.0.1_1.json"
    data = json.loads(agg_log.read_text())
    data["iteration"][2]["end_time"] = None
    agg_log.write_text(json.dumps(data))
    ctl = Controller(raw, parse_config(raw), {}, copy.name, tmp_path)
    ctl.transport = FakeStatus({"experiment": copy.name, "rounds": said})  # type: ignore[assignment]
    assert ctl.closed_rows() == rows[:2]


def test_compare_labels_a_run_with_seeding_off_full() -> None:
    from hefl.records import RunSummary
    from hefl.results.compare import label_of

    def summary(encryption: dict[str, Any]) -> RunSummary:
        return RunSummary(
            experiment="x", scheme="ckks", backend="tenseal", encryption=encryption, switches=6
        )

    assert label_of(summary({"scheme": "ckks", "seeded": True})) == "ckks, adding"
    assert label_of(summary({"scheme": "ckks", "seeded": False})) == "ckks full, adding"
    assert label_of(summary({"scheme": "ckks"})) == "ckks, adding"  # a run from before seeding


def test_runs_says_a_running_run_whose_controller_is_gone(tmp_path: Path) -> None:
    """run.json says `running` until its controller writes how the run ended: after a `kill -9`
    of the controller, `main.py runs` tells it from a live one by its pid and start time."""
    import os
    import socket
    from datetime import datetime

    from hefl.records import RunRecord
    from hefl.results.report import list_runs, process_start

    def free_pid() -> int:
        pid = int(Path("/proc/sys/kernel/pid_max").read_text()) - 1
        while Path(f"/proc/{pid}").exists():
            pid -= 1
        return pid

    started = datetime.fromtimestamp(process_start(os.getpid()) or 0, UTC)
    here = {"hostname": socket.gethostname()}
    runs = {
        "a-live": RunRecord("a-live", controller_pid=os.getpid(), controller=here),
        "b-killed": RunRecord("b-killed", controller_pid=free_pid(), controller=here),
        "c-elsewhere": RunRecord("c-elsewhere", controller_pid=free_pid(), controller={}),
        "d-finished": RunRecord(
            "d-finished", status="finished", controller_pid=free_pid(), controller=here
        ),
    }
    for name, run in runs.items():
        folder = tmp_path / name
        folder.mkdir()
        record = run.to_json() | {"started": started.isoformat(timespec="seconds")}
        (folder / "run.json").write_text(json.dumps(record))
        os.utime(folder / "run.json", (len(folder.name), ord(name[0])))  # listed in name order
    lines = list_runs(tmp_path)[1:]
    status = {line.split()[0]: line.split()[1] for line in lines}
    assert status == {
        "a-live": "running",
        "b-killed": "gone",
        "c-elsewhere": "running",  # another machine's: cannot be told from here
        "d-finished": "finished",
    }
    assert f"pid {runs['b-killed'].controller_pid}, is gone" in lines[1]


def test_a_probe_that_is_reset_once_is_asked_again_before_a_node_is_called_dead() -> None:
    """The controller's /health probes: a refused connection is a node gone at once; a reset or
    a disconnect (a saturated link) only when the next probe fails too; an answer clears it."""
    from hefl.control.experiment import Strikes
    from hefl.errors import PeerUnreachable

    strikes = Strikes()
    reset = PeerUnreachable("cannot reach s0 after 1 attempt: RemoteDisconnected", peer="s0")
    refused = PeerUnreachable("cannot reach c1 after 1 attempt: connection refused", peer="c1")
    assert strikes.gone("c1", refused)
    assert not strikes.gone("s0", reset)
    strikes.clear("s0")  # it answered the next probe
    assert not strikes.gone("s0", reset)
    assert strikes.gone("s0", reset)  # two in a row
