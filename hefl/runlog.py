"""Per-node iteration records, written atomically (temp file + rename) after every iteration."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hefl.wire import DIRECTIONS

_BY_DIRECTION = [f"byte_{k}_{d}" for d in DIRECTIONS for k in ("send", "received")]
# a link's bytes with one peer: in all, and by direction (sent_up, received_up, sent_down, ...)
_LINK_KEYS = ["sent", "received", *(f"{k}_{d}" for d in DIRECTIONS for k in ("sent", "received"))]


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a reader (or a crash) never sees half a file."""
    write_bytes_atomic(path, json.dumps(data, indent=1).encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a file through a temp file and a rename: whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rounds_closed(log: Any) -> int:
    """How many rounds a node log closed, from round 0 on without a gap (a record of a round
    gets its `end_time` when the node closes it); 0 for anything that is not a node log."""
    try:
        closed = {rec.get("round") for rec in log["iteration"] if rec.get("end_time")}
    except (KeyError, TypeError, AttributeError):
        return 0
    count = 0
    while count in closed:
        count += 1
    return count


class RunLog:
    """One node's records, one per round; thread-safe, written to disk whenever a round ends."""

    def __init__(self, path: Path, node: str, role: str, experiment: str) -> None:
        self.path = path
        self.header: dict[str, Any] = {"node": node, "role": role, "experiment": experiment}
        self._records: dict[int, dict[str, Any]] = {}
        self._started: dict[int, float] = {}
        self._lock = threading.Lock()
        self.finished = False
        # this node's clock: every offset in the log counts from here (monotonic; no wall clocks
        # of different machines are ever compared)
        self.origin = time.monotonic()
        self.current = ""  # the timed phase running now, if any (what /health says it does)

    def _record(self, round_: int) -> dict[str, Any]:
        rec = self._records.get(round_)
        if rec is None:
            rec = {
                "round": round_,
                "start_s": round(time.monotonic() - self.origin, 6),
                "start_time": time.time(),
                "end_time": None,
                "duration_s": None,
                "byte_received": 0,
                "byte_send": 0,
                **dict.fromkeys(_BY_DIRECTION, 0),
                "messages_received": 0,
                "messages_sent": 0,
                "links": {},
                "phases": {},
                "phases_cpu": {},
                "spans": [],
                "messages": [],
            }
            self._records[round_] = rec
            self._started[round_] = time.monotonic()
        return rec

    def begin(self, round_: int) -> None:
        with self._lock:
            self._record(round_)

    def add_bytes(
        self,
        round_: int,
        direction: str,
        peer: str,
        sent: int,
        received: int,
        outbound: bool,
        message: bool = True,
        kind: str = "",
        at: float | None = None,
    ) -> None:
        """Count the body bytes of one HTTP exchange with `peer`: a request this node made
        (outbound) or answered; `message` False adds bytes to an exchange already counted (an
        answer's body). A message is also listed in `messages` with its time on this node's
        clock, `at` (monotonic; default now): when the request went (outbound: the attempt's
        start) or when its body had arrived (inbound), as an offset from the round's start."""
        at = time.monotonic() if at is None else at
        with self._lock:
            rec = self._record(round_)
            link = rec["links"].get(peer)
            if link is None:
                link = rec["links"][peer] = dict.fromkeys(_LINK_KEYS, 0)
            for key, n in (("send", sent), ("received", received)):
                rec[f"byte_{key}"] += n
                rec[f"byte_{key}_{direction}"] += n
            for key, n in (("sent", sent), ("received", received)):
                link[key] += n
                link[f"{key}_{direction}"] += n
            if message:
                rec["messages_sent" if outbound else "messages_received"] += 1
                rec["messages"].append(
                    {
                        "t": round(at - self._started[round_], 6),
                        "dir": "sent" if outbound else "received",
                        "kind": kind,
                        "peer": peer,
                        "bytes": sent if outbound else received,
                    }
                )

    def add_phase(
        self,
        round_: int,
        name: str,
        seconds: float,
        cpu_seconds: float | None = None,
        end: float | None = None,
        client: str | None = None,
    ) -> None:
        """Add `seconds` to the round's phase `name`, and list the interval in `spans` as
        [name, start offset from the round's start, seconds]; it ended at `end` (monotonic;
        default now). A zero-length phase (a wait that never started) makes no span. With
        `client` (a node hosting several), the seconds also go to that client's own phases."""
        end = time.monotonic() if end is None else end
        with self._lock:
            rec = self._record(round_)
            for key, value in (("phases", seconds), ("phases_cpu", cpu_seconds)):
                if value is not None:
                    rec[key][name] = round(rec[key].get(name, 0.0) + value, 6)
            if client is not None:
                mine = self._client_locked(rec, client).setdefault("phases", {})
                mine[name] = round(mine.get(name, 0.0) + seconds, 6)
            if seconds > 0:
                start = end - seconds - self._started[round_]
                rec["spans"].append([name, round(start, 6), round(seconds, 6)])

    @contextmanager
    def phase(self, round_: int, name: str, client: str | None = None) -> Iterator[None]:
        """Time a block with the monotonic clock and add it to the round's phase `name`; add the
        CPU seconds the calling thread spent in it to `phases_cpu` (less than the wall time when
        the thread waited for the network, a lock or a core another process held)."""
        t0, cpu0 = time.monotonic(), time.thread_time()
        self.current = name
        try:
            yield
        finally:
            end = time.monotonic()
            self.current = ""
            self.add_phase(round_, name, end - t0, time.thread_time() - cpu0, end, client)

    def set(self, round_: int, **values: Any) -> None:
        with self._lock:
            self._record(round_).update(values)

    def set_client(self, round_: int, client: str, **values: Any) -> None:
        """Figures of one of the clients a node hosts, in the round's `clients` record."""
        with self._lock:
            self._client_locked(self._record(round_), client).update(values)

    @staticmethod
    def _client_locked(rec: dict[str, Any], client: str) -> dict[str, Any]:
        mine: dict[str, Any] = rec.setdefault("clients", {}).setdefault(client, {})
        return mine

    def end(self, round_: int, final: bool = False) -> None:
        """Close a round (wall-clock end, monotonic duration) and write the whole log."""
        with self._lock:
            rec = self._record(round_)
            rec["end_time"] = time.time()
            rec["duration_s"] = round(time.monotonic() - self._started[round_], 6)
            self.finished = self.finished or final
            self._write_locked()

    def flush(self) -> None:
        with self._lock:
            self._write_locked()

    def record(self, round_: int) -> dict[str, Any]:
        """A copy of one round's record as it stands."""
        with self._lock:
            return json.loads(json.dumps(self._record(round_)))  # type: ignore[no-any-return]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self._snapshot_locked()

    def _snapshot_locked(self) -> dict[str, Any]:
        records = [json.loads(json.dumps(self._records[r])) for r in sorted(self._records)]
        return {**self.header, "finished": self.finished, "iteration": records}

    def _write_locked(self) -> None:
        write_json_atomic(self.path, self._snapshot_locked())


class Stopwatch:
    """A named wait of a node, per round: started at one event, read at a later one (monotonic)."""

    def __init__(self) -> None:
        self._started: dict[int, float] = {}
        self._lock = threading.Lock()  # request threads start waits, the worker stops them

    def start(self, round_: int, first: bool = False) -> None:
        """Start the wait of `round_`; `first` keeps an earlier start (first of several events)."""
        with self._lock:
            if not (first and round_ in self._started):
                self._started[round_] = time.monotonic()

    def stop(self, round_: int) -> float:
        """Seconds since the start of `round_`'s wait (0 if it never started)."""
        with self._lock:
            started = self._started.pop(round_, None)
        return 0.0 if started is None else time.monotonic() - started
