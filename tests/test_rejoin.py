"""What a client keeps on its own disk to rejoin after a restart (hefl/node/rejoin.py): private
files, written whole, refused when altered; the results it took but had not applied, in order."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from hefl.errors import ConfigError
from hefl.node.rejoin import RejoinStore
from tests.helpers import ROOT

EXP = "exp-20261207-000000-abcd"
NODE = "127.0.0.1:7001"
LISTEN = "127.0.0.1:7001"


def test_a_store_round_trips_private_files_and_clears(tmp_path: Path) -> None:
    store = RejoinStore(tmp_path, LISTEN, EXP, NODE)
    push = {"node": NODE, "experiment": EXP, "config": {"a": 1}}
    store.keep_push(push)
    model = np.arange(10, dtype=np.float32)
    store.keep_model(2, model)
    store.keep_global(3, {"X-Hefl-Round": "3"}, b"result 3")
    store.keep_global(4, {"X-Hefl-Round": "4"}, bytearray(b"result 4"))
    found = RejoinStore.find(tmp_path, LISTEN)
    assert found is not None
    again, saved = found
    assert (again.experiment, again.node) == (EXP, NODE)
    assert saved.push == push and saved.applied == 2
    assert saved.model is not None and saved.model.dtype == np.float32
    assert np.array_equal(saved.model, model)
    assert [body for _, body in saved.pending] == [b"result 3", b"result 4"]
    assert saved.pending[0][0] == {"X-Hefl-Round": "3"}
    for path in (tmp_path / ".rejoin").rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    assert stat.S_IMODE((tmp_path / ".rejoin").stat().st_mode) == 0o700
    store.keep_model(3, model + 1)  # round 3's result applied: its file goes
    _, saved = RejoinStore.find(tmp_path, LISTEN) or (None, None)
    assert saved is not None and saved.applied == 3
    assert [body for _, body in saved.pending] == [b"result 4"]
    store.clear()
    assert RejoinStore.find(tmp_path, LISTEN) is None
    assert not (tmp_path / ".rejoin" / EXP).exists()


def test_an_altered_or_cut_file_is_not_taken_up(tmp_path: Path) -> None:
    store = RejoinStore(tmp_path, LISTEN, EXP, NODE)
    store.keep_push({"node": NODE})
    store.keep_model(0, np.zeros(4, dtype=np.float32))
    assert RejoinStore.find(tmp_path, LISTEN) is not None
    data = bytearray(store.model_file(0).read_bytes())
    data[-1] ^= 1
    store.model_file(0).write_bytes(bytes(data))
    assert RejoinStore.find(tmp_path, LISTEN) is None  # a model that is not what was kept
    store.keep_model(0, np.zeros(4, dtype=np.float32))
    store.keep_global(1, {}, b"abc")
    (tmp_path / ".rejoin" / EXP / "127.0.0.1_7001.global-1.bin").write_bytes(b"ab")
    assert RejoinStore.find(tmp_path, LISTEN) is None
    store.pointer.write_text("{not json")
    assert RejoinStore.find(tmp_path, LISTEN) is None


def test_the_pointer_of_a_newer_experiment_survives_the_older_ones_clear(tmp_path: Path) -> None:
    old = RejoinStore(tmp_path, LISTEN, EXP, NODE)
    old.keep_push({"node": NODE})
    new = RejoinStore(tmp_path, LISTEN, EXP.replace("abcd", "ef01"), NODE)
    new.keep_push({"node": NODE, "new": True})
    old.clear()  # the old node retired after the new one was configured
    found = RejoinStore.find(tmp_path, LISTEN)
    assert found is not None and found[1].push == {"node": NODE, "new": True}
    assert json.loads(new.pointer.read_text())["experiment"] == new.experiment


def test_nodes_sharing_a_log_folder_clear_only_their_own_files(tmp_path: Path) -> None:
    """`nodes up` starts every node with one log folder: a client that finishes keeps its
    neighbours' files."""
    mine = RejoinStore(tmp_path, LISTEN, EXP, NODE)
    other = RejoinStore(tmp_path, "127.0.0.1:7002", EXP, "127.0.0.1:7002")
    for store in (mine, other):
        store.keep_push({"node": store.node})
        store.keep_model(0, np.zeros(3, dtype=np.float32))
    mine.clear()
    assert RejoinStore.find(tmp_path, LISTEN) is None
    found = RejoinStore.find(tmp_path, "127.0.0.1:7002")
    assert found is not None and found[1].applied == 0


def test_a_pointer_that_names_no_experiment_or_address_is_refused(tmp_path: Path) -> None:
    store = RejoinStore(tmp_path, LISTEN, EXP, NODE)
    store.keep_push({"node": NODE})
    victim = tmp_path / "keep.me"
    victim.write_text("x")
    for said in ({"experiment": "../..", "node": NODE}, {"experiment": EXP, "node": "../keep"}):
        store.pointer.write_text(json.dumps(said))
        assert RejoinStore.find(tmp_path, LISTEN) is None
        RejoinStore(tmp_path, LISTEN, EXP.replace("abcd", "9999"), NODE).keep_push({})
    assert victim.read_text() == "x"


def test_files_another_account_could_have_planted_are_not_taken_up(tmp_path: Path) -> None:
    store = RejoinStore(tmp_path, LISTEN, EXP, NODE)
    store.keep_push({"node": NODE})
    assert RejoinStore.find(tmp_path, LISTEN) is not None
    store.push_file.chmod(0o666)  # others may have written it
    assert RejoinStore.find(tmp_path, LISTEN) is None
    store.push_file.chmod(0o600)
    (tmp_path / ".rejoin").chmod(0o777)
    assert RejoinStore.find(tmp_path, LISTEN) is None
    (tmp_path / ".rejoin").chmod(0o700)
    other = tmp_path / "elsewhere.json"
    other.write_text(store.pointer.read_text())
    other.chmod(0o600)
    store.pointer.unlink()
    store.pointer.symlink_to(other)  # a link, even to a private file
    assert RejoinStore.find(tmp_path, LISTEN) is None


def test_a_crash_between_the_model_and_its_record_keeps_the_earlier_pair(tmp_path: Path) -> None:
    store = RejoinStore(tmp_path, LISTEN, EXP, NODE)
    store.keep_push({"node": NODE})
    store.keep_model(1, np.ones(3, dtype=np.float32))
    store.keep_global(2, {"X-Hefl-Round": "2"}, b"result 2")
    # round 2's model written, its record not yet (the process killed in between)
    store.model_file(2).write_bytes(b"\x93NUMPY half")
    found = RejoinStore.find(tmp_path, LISTEN)
    assert found is not None
    saved = found[1]
    assert saved.applied == 1 and saved.model is not None and saved.model.tolist() == [1, 1, 1]
    assert [body for _, body in saved.pending] == [b"result 2"]  # applied again
    store.keep_model(2, np.zeros(3, dtype=np.float32))
    assert sorted(p.name for p in store.folder.glob("*.npy")) == ["127.0.0.1_7001.model-2.npy"]


def test_attempts_at_one_round_are_counted_and_start_again_at_the_next(tmp_path: Path) -> None:
    store = RejoinStore(tmp_path, LISTEN, EXP, NODE)
    assert [store.attempt(4) for _ in range(3)] == [1, 2, 3]
    assert store.attempt(5) == 1


def test_a_pointer_names_the_node_this_process_listens_as() -> None:
    from hefl.node.host import _is_listening_as
    from hefl.node.push import make_push, parse_push
    from tests.helpers import addressed

    raw, ids = addressed([7001, 7002, 7003, 7004])
    push = parse_push(make_push(raw, ids["c0"], EXP, {}))
    _is_listening_as("127.0.0.1:7001", push)
    _is_listening_as("0.0.0.0:7001", push)  # every address of the machine: its port decides
    for other in ("127.0.0.1:7002", "127.0.0.2:7001"):
        with pytest.raises(ConfigError, match="not this process's"):
            _is_listening_as(other, push)


def test_rejoins_a_log_claims_are_named_within_bounds_and_written_once(tmp_path: Path) -> None:
    """A node's log says what it likes (a token holder writes its own): the controller names
    only a client's rejoins at rounds of the run, a few per round, and writes run.json once."""
    from hefl.control.experiment import MAX_REJOINS, Controller

    run = tmp_path / "run"
    shutil.copytree(ROOT / "tests" / "data" / "v1-run", run)
    client = run / "10.10.1.1.json"
    data = json.loads(client.read_text())
    data["rejoined"] = [1] * 5000 + [0, 10**9, -3]
    client.write_text(json.dumps(data))
    agg = run / "10.10.1.15.json"
    data = json.loads(agg.read_text())
    data["rejoined"] = [0]  # not a client: adders do not rejoin
    agg.write_text(json.dumps(data))
    lines: list[str] = []
    ctl = Controller.of_run(run, "t", out=lines.append)
    writes = []
    ctl.write_record = lambda: writes.append(1)  # type: ignore[method-assign]
    ctl.rejoins_in_logs()
    assert lines == [
        "10.10.1.1 restarted and lost its state; rejoined at round 1",
        *["10.10.1.1 restarted and lost its state; rejoined at round 2"] * MAX_REJOINS,
    ]
    assert len(writes) == 1
    assert [(f.node, f.round, f.event) for f in ctl.record.faults] == [
        ("10.10.1.1", 0, "rejoined"),
        *[("10.10.1.1", 1, "rejoined")] * MAX_REJOINS,
    ]
    again = Controller.of_run(
        run, "t", out=lines.append
    )  # what run.json recorded is not said again
    again.record = ctl.record
    again.rejoins_named = {}
    for fault in ctl.record.faults:
        again.rejoins_named.setdefault((fault.node, fault.round), set()).add(object())
    lines.clear()
    again.rejoins_in_logs()
    assert lines == []
