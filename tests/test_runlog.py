"""Per-node iteration records: bytes by direction and link, phases, atomic writes, named waits."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from hefl.files import write_json_atomic
from hefl.node.runlog import RunLog, Stopwatch
from hefl.records import FORMAT_VERSION, LogFormatError, NewerFormat, NodeLog


def test_bytes_add_up_by_direction_and_by_link(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "n.json", "a", "switch", "e")
    log.add_bytes(0, "up", "b", sent=0, received=100, outbound=False)
    # a refusal's body
    log.add_bytes(0, "up", "b", sent=30, received=0, outbound=False, message=False)
    log.add_bytes(0, "up", "p", sent=100, received=0, outbound=True)
    log.add_bytes(0, "down", "p", sent=0, received=50, outbound=False)
    log.add_bytes(0, "control", "p", sent=7, received=0, outbound=True)
    rec = log.record(0).to_json()
    assert (rec["byte_send"], rec["byte_received"]) == (137, 150)
    assert (rec["byte_send_up"], rec["byte_received_up"]) == (130, 100)
    assert (rec["byte_send_down"], rec["byte_received_down"]) == (0, 50)
    assert (rec["byte_send_control"], rec["byte_received_control"]) == (7, 0)
    b, p = rec["links"]["b"], rec["links"]["p"]
    assert (b["sent"], b["received"], b["sent_up"], b["received_up"]) == (30, 100, 30, 100)
    assert (p["sent"], p["received"]) == (107, 50)
    assert (p["sent_up"], p["received_down"], p["sent_control"], p["sent_down"]) == (100, 50, 7, 0)
    assert (rec["messages_sent"], rec["messages_received"]) == (2, 2)
    # one entry per message (not per answer), in the order counted
    assert [(m["dir"], m["peer"], m["bytes"]) for m in rec["messages"]] == [
        ("received", "b", 100),
        ("sent", "p", 100),
        ("received", "p", 50),
        ("sent", "p", 7),
    ]


def test_messages_and_spans_carry_offsets_on_the_nodes_own_clock(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "n.json", "a", "client", "e")
    time.sleep(0.02)
    log.begin(0)
    started = time.monotonic()
    with log.phase(0, "train"):
        time.sleep(0.03)
    log.add_bytes(0, "up", "p", 10, 0, True, kind="update", at=started + 0.05)
    log.add_phase(0, "wait", 0.01, end=started + 0.1)
    log.add_phase(0, "wait", 0.0)  # a wait that never started: no span
    log.begin(1)
    rec0, rec1 = log.record(0).to_json(), log.record(1).to_json()
    assert rec0["start_s"] >= 0.02 and rec1["start_s"] >= rec0["start_s"] + 0.03
    (train, wait) = rec0["spans"]
    assert train[0] == "train" and 0 <= train[1] < 0.01 and 0.03 <= train[2] < 0.1
    assert wait[0] == "wait" and abs(wait[1] - 0.09) < 0.005 and wait[2] == 0.01
    (msg,) = rec0["messages"]
    assert msg["kind"] == "update" and msg["dir"] == "sent" and abs(msg["t"] - 0.05) < 0.005


def test_a_round_is_written_when_it_ends_and_the_last_one_finishes_the_log(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "n.json"
    log = RunLog(path, "a", "client", "e")
    log.begin(0)
    with log.phase(0, "train"):
        time.sleep(0.01)
    log.add_phase(0, "train", 0.5)
    log.set(0, accuracy=0.75)
    assert not path.exists()  # nothing written before a round ends
    log.end(0)
    first = json.loads(path.read_text())
    assert (first["node"], first["role"], first["experiment"], first["finished"]) == (
        "a",
        "client",
        "e",
        False,
    )
    (rec,) = first["iteration"]
    assert rec["accuracy"] == 0.75 and 0.51 <= rec["phases"]["train"] < 1.0
    assert rec["duration_s"] >= 0.01 and rec["end_time"] >= rec["start_time"]
    log.begin(1)
    log.end(1, final=True)
    second = json.loads(path.read_text())
    assert second["finished"] and [r["round"] for r in second["iteration"]] == [0, 1]
    assert log.snapshot() == second
    assert [p.name for p in path.parent.iterdir()] == ["n.json"]  # no temp files left


def test_atomic_write_leaves_the_old_file_when_it_fails(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": 1})
    try:
        write_json_atomic(path, {"a": object()})  # not JSON
    except TypeError:
        pass
    assert json.loads(path.read_text()) == {"a": 1} and len(list(tmp_path.iterdir())) == 1


def test_stopwatch_measures_named_waits_per_round() -> None:
    wait = Stopwatch()
    assert wait.stop(3) == 0.0  # never started
    wait.start(0)
    time.sleep(0.02)
    wait.start(0, first=True)  # keeps the first start
    wait.start(1)
    assert wait.stop(0) >= 0.02 and wait.stop(0) == 0.0 and wait.stop(1) < 0.02


def test_a_phase_records_the_cpu_its_thread_spent_beside_the_wall_time(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "n.json", "a", "client", "e")
    with log.phase(0, "wait_here"):
        time.sleep(0.2)
    with log.phase(0, "compute"):
        t0, cpu0 = time.monotonic(), time.thread_time()
        # busy until this thread has had 0.15 s of CPU, however many processes share the cores
        while time.thread_time() - cpu0 < 0.15 and time.monotonic() - t0 < 30:
            pass
    rec = log.record(0).to_json()
    assert rec["phases"]["wait_here"] >= 0.2 and rec["phases_cpu"]["wait_here"] < 0.05
    assert rec["phases_cpu"]["compute"] >= 0.15
    log.add_phase(0, "wait", 1.0)  # a wait measured elsewhere has no CPU figure
    assert "wait" not in log.record(0).to_json()["phases_cpu"]


def test_rounds_closed_counts_from_round_0_to_the_first_gap() -> None:
    from hefl.node.runlog import rounds_closed

    def log(*ends: float | None) -> dict[str, Any]:
        return {
            "node": "n",
            "role": "aggregator",
            "iteration": [{"round": r, "end_time": e} for r, e in enumerate(ends)],
        }

    assert rounds_closed(log(1.0, 2.0, 3.0)) == 3
    assert rounds_closed(log(1.0, None, 3.0)) == 1  # round 2 open: round 3 does not count
    assert rounds_closed(log()) == 0
    assert rounds_closed({"node": "x"}) == rounds_closed([1, 2]) == rounds_closed(None) == 0


V1_RUN = Path(__file__).parent / "data" / "v1-run"  # a ckks run written before format_version


def test_a_log_written_before_format_version_loads_and_writes_back_the_same() -> None:
    """Version 1 logs (returning users' old folders) read into the records and give back every
    key they had, to the value; a log of the new version says so in its header."""
    for path in sorted(V1_RUN.glob("10.*.json")):
        old = json.loads(path.read_text())
        log = NodeLog.from_json(old)
        assert "format_version" not in old and log.format_version == 1
        assert log.to_json() == {**old, "format_version": 1}
        assert log.rounds_closed() == 2
    hosted = NodeLog.from_json(json.loads((V1_RUN / "10.10.1.2.json").read_text()))
    assert [c.client for c in hosted.clients or ()] == ["10.10.1.2#0", "10.10.1.2#1"]
    assert set(hosted.iteration[1].clients or {}) == {"10.10.1.2#0", "10.10.1.2#1"}


def test_an_old_run_folder_gives_the_summary_it_gave_then(tmp_path: Path) -> None:
    """summary.json and summary.csv rebuilt from version 1 logs by today's code: the same figures
    (the HE error from the saved models included), with format_version added."""
    import shutil

    from hefl.results.summary import summarize
    from hefl.results.table import to_csv

    then = json.loads((V1_RUN / "summary.json").read_text())
    exp = tmp_path / then["experiment"]
    shutil.copytree(V1_RUN, exp)
    now = summarize(exp)
    assert now.to_json() == {**then, "format_version": FORMAT_VERSION}
    assert to_csv(now) == (V1_RUN / "summary.csv").read_text()
    assert now.rounds[1].he_error is not None and now.rounds[1].he_error.max_abs < 1e-5


def test_a_newer_or_broken_log_is_refused_and_odd_figures_read_as_unknown() -> None:
    """Edited by hand or cut short: a figure that is not one reads as unknown (an optional one)
    or its default, an entry that is not one is left out, the rest of the log stands; what is not
    a node log at all, or one of a newer format, is refused."""
    rec = {"round": 0, "accuracy": "high", "byte_send": 12.0, "phases": {"x": 1, "y": "nan"}}
    base = {"node": "a", "role": "client", "iteration": [rec, {"no": "round"}, 7]}
    got = NodeLog.from_json(base).iteration
    assert len(got) == 1 and got[0].accuracy is None and got[0].byte_send == 12
    assert got[0].phases == {"x": 1.0}
    assert NodeLog.from_json({**base, "iteration": {"0": {}}}).iteration == ()
    with pytest.raises(NewerFormat, match="newer than this hefl's"):
        NodeLog.from_json({**base, "format_version": FORMAT_VERSION + 1})
    for version in ("2", True, 0, -1, 2.0, None):
        with pytest.raises(LogFormatError, match="format_version"):
            NodeLog.from_json({**base, "format_version": version})
    for broken in ([], {"node": "a"}, {**base, "node": 7}):
        with pytest.raises(LogFormatError):
            NodeLog.from_json(broken)


def test_the_log_written_is_the_records_contract() -> None:
    """What RunLog writes reads back through NodeLog to the same JSON, and a field that is not
    in the contract is refused where it is set (a typo never reaches a file)."""
    log = RunLog(Path("/nonexistent/n.json"), "a", "client", "e")
    log.describe(client_number=2, index=0, train_samples=10, all_samples=20, weight=1.0)
    log.add_bytes(0, "up", "p", sent=5, received=0, outbound=True, kind="update")
    log.add_phase(0, "train", 0.5, 0.4)
    log.set(0, accuracy=0.5, loss=1.0, test_samples=3)
    data = log.snapshot()
    assert data["format_version"] == FORMAT_VERSION and data["client_number"] == 2
    assert NodeLog.from_json(data).to_json() == data
    # the aggregator's round with no report: its figures are null, not absent (README)
    log.set(1, accuracy=None, loss=None, reports=0)
    assert {"accuracy": None, "loss": None, "reports": 0}.items() <= log.snapshot()["iteration"][
        1
    ].items()
    with pytest.raises(TypeError, match="accuracyy"):
        log.set(0, accuracyy=0.5)
    with pytest.raises(TypeError, match="colour"):
        log.describe(colour="red")
