"""What a node keeps on its own disk so that it rejoins its experiment after its process restarted
(a gunicorn worker killed by the OOM killer, systemd's Restart=on-failure): the config it was
pushed and, for a client, the global model it last applied. Nothing comes from its peers: the
global result of a round is a sum of changes, so a client cannot rebuild its model from the next
one, and switches and the aggregator must never hold a model.

Layout, under the node's log folder, mode 600 files in a mode 700 folder (they are the node's own,
as its keys are):

    .rejoin/<listen>.json                 which experiment and node this listening address serves
    .rejoin/<experiment>/<node>.push.json the config push, as it came
    .rejoin/<experiment>/<node>.model-<r>.npy a client's global model after round r's result
    .rejoin/<experiment>/<node>.model.json  which model is the last one applied, and its digest
    .rejoin/<experiment>/<node>.global-<r>.bin  a client's global result of round r, kept before
                                           it answers for it (until the model after it is kept)
    .rejoin/<experiment>/<node>.global-<r>.json its envelope and digest

A client keeps each global result before it answers 202 for it, and its model once the round is
done (applied, evaluated, reported, logged): a restart anywhere in between applies that result
again from its disk, so no result its parent delivered is lost, and none comes twice.

Every file is written whole or not at all (a temp file and a rename); a model whose digest does not
match what was written (a disk that lost it) is refused, and the node starts without an
experiment, as before."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hefl.address import file_stem, parse_address
from hefl.errors import HeflError
from hefl.files import write_bytes_atomic
from hefl.node.push import is_experiment_id

log = logging.getLogger(__name__)

FOLDER = ".rejoin"


def _write_private(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all (mode 600, as mkstemp makes it), in folders of mode 700
    from .rejoin down."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for folder in [path.parent, *path.parent.parents]:
        if FOLDER not in folder.parts:
            break
        os.chmod(folder, 0o700)
    write_bytes_atomic(path, data)


def _own(path: Path) -> Path:
    """`path`, if it is this user's own and private: not a link, owned by this user, neither
    group nor others may write it (nor read it, for a file). Anything else is a ValueError: a
    file another account could have planted is never taken up."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise ValueError(f"{path} is a symbolic link")
    if st.st_uid != os.getuid():
        raise ValueError(f"{path} belongs to user {st.st_uid}, not to this one")
    if stat.S_IMODE(st.st_mode) & (0o022 if stat.S_ISDIR(st.st_mode) else 0o077):
        raise ValueError(f"{path} has mode {stat.S_IMODE(st.st_mode):o}: others may change it")
    return path


def _pointer(path: Path) -> tuple[str, str] | None:
    """The experiment and node a pointer file names; None for anything else (an id that could
    not name a folder of its own, an address that is not one)."""
    try:
        said = json.loads(path.read_text())
        experiment, node = said["experiment"], said["node"]
        parse_address(node)
    except (OSError, ValueError, KeyError, TypeError, HeflError):
        return None
    if not is_experiment_id(experiment) or not isinstance(node, str):
        return None
    return experiment, node


@dataclass(frozen=True)
class Saved:
    """What a restarted node finds on its disk."""

    push: dict[str, Any]  # the config push it was configured with
    applied: int  # the last round whose global result it applied (-1: none; clients only)
    model: np.ndarray | None  # that round's global model (clients; None for other roles)
    # the global results taken (answered 202) after that model, not yet applied, by round: each
    # one's envelope headers and body
    pending: tuple[tuple[dict[str, str], bytes], ...] = ()


class RejoinStore:
    """One node's files for one experiment, on behalf of the process listening on `listen`."""

    def __init__(self, log_dir: Path, listen: str, experiment: str, node: str) -> None:
        self.root = log_dir / FOLDER
        self.pointer = self.root / f"{file_stem(listen)}.json"
        self.folder = self.root / experiment
        stem = file_stem(node)
        self.push_file = self.folder / f"{stem}.push.json"
        self.model_info = self.folder / f"{stem}.model.json"
        self.attempts = self.folder / f"{stem}.attempts.json"
        self.stem = stem
        self.experiment, self.node, self.listen = experiment, node, listen

    def keep_push(self, payload: Any) -> None:
        """At configure: the push, then the pointer that names it (a crash in between leaves no
        pointer, so the node starts unconfigured as before). What this address kept for an
        earlier experiment goes."""
        earlier = self.pointed()
        if earlier is not None and earlier != (self.experiment, self.node):
            RejoinStore(self.root.parent, self.listen, *earlier).clear()
        _write_private(self.push_file, json.dumps(payload).encode())
        _write_private(
            self.pointer,
            json.dumps({"experiment": self.experiment, "node": self.node}).encode(),
        )

    def model_file(self, applied: int) -> Path:
        return self.folder / f"{self.stem}.model-{applied}.npy"

    def keep_model(self, applied: int, flat: np.ndarray) -> None:
        """A client, after applying round `applied`'s global result (-1: the initial model): the
        model under its round's name, then the record that names it (a crash in between leaves
        the earlier record and model, and the result kept before it: applied again)."""
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(flat), allow_pickle=False)
        data = buf.getvalue()
        _write_private(self.model_file(applied), data)
        digest = hashlib.sha256(data).hexdigest()
        _write_private(self.model_info, json.dumps({"applied": applied, "sha256": digest}).encode())
        for old in self.folder.glob(f"{self.stem}.model-*.npy"):
            if old != self.model_file(applied):
                old.unlink(missing_ok=True)
        for info in self.folder.glob(f"{self.stem}.global-*.json"):  # applied: not needed again
            try:
                done = int(info.name.rsplit("-", 1)[1].split(".")[0]) <= applied
            except ValueError:
                continue
            if done:
                info.unlink(missing_ok=True)
                info.with_suffix(".bin").unlink(missing_ok=True)

    def _global(self, round_: int, suffix: str) -> Path:
        return self.folder / f"{self.stem}.global-{round_}.{suffix}"

    def keep_global(self, round_: int, headers: dict[str, str], body: Any) -> None:
        """A client, before it answers for round `round_`'s global result: the message as it
        came (its digest last: a result without one is not taken up). A body read as it arrived
        (hefl.node.body.Incoming) is its spool file, moved here whole."""
        target = self._global(round_, "bin")
        if isinstance(body, bytes | bytearray):
            _write_private(target, bytes(body))
            digest = hashlib.sha256(body).hexdigest()
        else:
            kept = body.keep()
            summed = hashlib.sha256()
            with open(kept.path, "rb") as f:
                while block := f.read(1 << 20):
                    summed.update(block)
            _write_private(target, b"")  # the folders, private
            os.replace(kept.path, target)
            digest = summed.hexdigest()
        info = {"round": round_, "headers": headers, "sha256": digest}
        _write_private(self._global(round_, "json"), json.dumps(info).encode())

    def clear(self) -> None:
        """The experiment ended for this node (finished, failed, retired): nothing to rejoin.
        Only this node's files go (nodes started by `nodes up` share a log folder)."""
        try:
            if self.pointed() == (self.experiment, self.node):
                self.pointer.unlink(missing_ok=True)
            for path in self.folder.glob(f"{self.stem}.*"):
                path.unlink(missing_ok=True)
            if self.folder.is_dir() and not any(self.folder.iterdir()):
                self.folder.rmdir()
        except OSError as exc:
            log.warning("could not remove %s's files in %s: %s", self.node, self.folder, exc)

    def attempt(self, at: int) -> int:
        """Count one more attempt to rejoin at round `at` (a rejoin that crashes the process
        again must not loop for ever); how many there were, this one included."""
        try:
            said = json.loads(self.attempts.read_text())
            count = int(said["count"]) + 1 if said["round"] == at else 1
        except (OSError, ValueError, KeyError, TypeError):
            count = 1
        _write_private(self.attempts, json.dumps({"round": at, "count": count}).encode())
        return count

    def pointed(self) -> tuple[str, str] | None:
        """The experiment and node this address's pointer names, if any."""
        return _pointer(self.pointer)

    @classmethod
    def find(cls, log_dir: Path, listen: str) -> tuple[RejoinStore, Saved] | None:
        """What the process listening on `listen` served before it restarted, if anything is
        left of it; a file that is missing, cut short or altered is a warning and None."""
        pointer = log_dir / FOLDER / f"{file_stem(listen)}.json"
        if not pointer.is_file():
            return None
        named = _pointer(pointer)
        if named is None:
            log.warning("not rejoining: %s does not name an experiment and a node", pointer)
            return None
        try:
            store = cls(log_dir, listen, *named)
            push = json.loads(store.push_file.read_text())
            applied, model = -1, None
            for path in (log_dir / FOLDER, pointer, store.folder, store.push_file):
                _own(path)
            if store.model_info.is_file():
                info = json.loads(_own(store.model_info).read_text())
                kept = _own(store.model_file(int(info["applied"])))
                data = kept.read_bytes()
                if hashlib.sha256(data).hexdigest() != info["sha256"]:
                    raise ValueError(f"{kept} does not match its digest")
                model = np.load(io.BytesIO(data), allow_pickle=False)
                applied = int(info["applied"])
            pending = []
            for r in itertools.count(applied + 1):  # in order, without a gap
                if not store._global(r, "json").is_file():
                    break
                info = json.loads(_own(store._global(r, "json")).read_text())
                body = _own(store._global(r, "bin")).read_bytes()
                if hashlib.sha256(body).hexdigest() != info["sha256"]:
                    raise ValueError(f"{store._global(r, 'bin')} does not match its digest")
                headers = info["headers"]
                if not isinstance(headers, dict):
                    raise ValueError(f"{store._global(r, 'json')}: headers are not an object")
                pending.append(({str(k): str(v) for k, v in headers.items()}, body))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("not rejoining from %s: %s", pointer, exc)
            return None
        if not isinstance(push, dict):
            log.warning("not rejoining from %s: its push is not a JSON object", pointer)
            return None
        return store, Saved(push, applied, model, tuple(pending))
