"""What a client keeps on its own disk to rejoin after a restart (hefl/node/rejoin.py): private
files, written whole, refused when altered; the results it took but had not applied, in order."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np

from hefl.node.rejoin import RejoinStore

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
    data = bytearray(store.model_file.read_bytes())
    data[-1] ^= 1
    store.model_file.write_bytes(bytes(data))
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
