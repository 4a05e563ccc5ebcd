"""Per-node iteration records, written atomically (temp file + rename) after every iteration."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hefl.files import write_json_atomic
from hefl.records import (
    DIRECTIONS,
    FORMAT_VERSION,
    ClientFigures,
    LinkBytes,
    LogFormatError,
    Message,
    NodeLog,
    RoundRecord,
    Span,
)


def rounds_closed(log: Any) -> int:
    """How many rounds a node log (its JSON data) closed, from round 0 on without a gap (a record
    of a round gets its `end_time` when the node closes it); 0 for anything that is not a node
    log."""
    try:
        return NodeLog.from_json(log).rounds_closed()
    except LogFormatError:
        return 0


_FIGURES = frozenset(f.name for f in fields(RoundRecord) if f.metadata.get("optional"))
_CLIENT_FIGURES = frozenset(ClientFigures.keys())


@dataclass
class _Open:
    """A round's record while the node writes it (RoundRecord is what it becomes)."""

    round: int
    started: float  # monotonic
    start_s: float
    start_time: float
    end_time: float | None = None
    duration_s: float | None = None
    sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DIRECTIONS, 0))
    received: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DIRECTIONS, 0))
    links: dict[str, tuple[dict[str, int], dict[str, int]]] = field(default_factory=dict)
    messages_sent: int = 0
    messages_received: int = 0
    phases: dict[str, float] = field(default_factory=dict)
    phases_cpu: dict[str, float] = field(default_factory=dict)
    spans: list[Span] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    clients: dict[str, dict[str, Any]] = field(default_factory=dict)
    client_phases: dict[str, dict[str, float]] = field(default_factory=dict)

    def closed(self) -> RoundRecord:
        hosted = dict.fromkeys([*self.client_phases, *self.clients])
        figures = dict(self.figures)
        if hosted:
            figures.update(
                clients={
                    c: ClientFigures(
                        phases=_copy(self.client_phases.get(c)), **self.clients.get(c, {})
                    )
                    for c in hosted
                }
            )
        by_direction: dict[str, Any] = {
            f"byte_{k}_{d}": n[d]
            for k, n in (("send", self.sent), ("received", self.received))
            for d in DIRECTIONS
        }
        return RoundRecord(
            round=self.round,
            start_s=self.start_s,
            start_time=self.start_time,
            end_time=self.end_time,
            duration_s=self.duration_s,
            byte_received=sum(self.received.values()),
            byte_send=sum(self.sent.values()),
            messages_received=self.messages_received,
            messages_sent=self.messages_sent,
            links={p: LinkBytes.of(*counts) for p, counts in self.links.items()},
            phases=dict(self.phases),
            phases_cpu=dict(self.phases_cpu),
            spans=tuple(self.spans),
            messages=tuple(self.messages),
            **by_direction,
            **figures,
        )


def _copy(phases: dict[str, float] | None) -> dict[str, float] | None:
    return None if phases is None else dict(phases)


def _known(values: dict[str, Any], allowed: frozenset[str], what: str) -> dict[str, Any]:
    unknown = set(values) - allowed
    if unknown:
        raise TypeError(
            f"not a field of {what}: {', '.join(sorted(unknown))} (see hefl/records.py)"
        )
    return values


class RunLog:
    """One node's records, one per round; thread-safe, written to disk whenever a round ends."""

    def __init__(
        self, path: Path, node: str, role: str, experiment: str, kept: NodeLog | None = None
    ) -> None:
        """`kept`: this node's log as its process left it on disk before a restart; its closed
        rounds stay in the log as they were (a round it had not closed starts afresh)."""
        self.path = path
        self.header: dict[str, Any] = {}  # what the node's role adds (NodeLog's header fields)
        self.node, self.role, self.experiment = node, role, experiment
        self._records: dict[int, _Open] = {}
        self._kept: dict[int, RoundRecord] = {}
        self._rejoined: tuple[int, ...] = ()  # the rounds it rejoined at after restarts
        if kept is not None:
            self._kept = {r.round: r for r in kept.iteration if r.end_time is not None}
            self._rejoined = tuple(kept.rejoined or ())
        self._lock = threading.Lock()
        self.finished = False
        # this node's clock: every offset in the log counts from here (monotonic; no wall clocks
        # of different machines are ever compared)
        self.origin = time.monotonic()
        self.current = ""  # the timed phase running now, if any (what /health says it does)

    @staticmethod
    def kept(path: Path) -> NodeLog | None:
        """The log a node left at `path` (None: none, or not a node log)."""
        try:
            return NodeLog.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, RecursionError, LogFormatError):
            return None

    def rejoined_at(self, round_: int) -> None:
        """Say in the header that the node rejoined at `round_` after a restart."""
        with self._lock:
            self._rejoined = (*self._rejoined, round_)

    def describe(self, **values: Any) -> None:
        """Add fields to the log's header (NodeLog's)."""
        with self._lock:
            self.header.update(_known(values, frozenset(NodeLog.HEADER), "a node log's header"))

    def _record(self, round_: int) -> _Open:
        rec = self._records.get(round_)
        if rec is None:
            self._kept.pop(round_, None)  # a kept round done again (a result applied again)
            now = time.monotonic()
            rec = _Open(round_, now, round(now - self.origin, 6), time.time())
            self._records[round_] = rec
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
        form: str | None = None,
    ) -> None:
        """Count the body bytes of one HTTP exchange with `peer`: a request this node made
        (outbound) or answered; `message` False adds bytes to an exchange already counted (an
        answer's body). A message is also listed in `messages` with its time on this node's
        clock, `at` (monotonic; default now): when the request went (outbound: the attempt's
        start; a body made as it is sent, a client's streamed update: when its last part went)
        or when its body had arrived (inbound), as an offset from the round's start."""
        at = time.monotonic() if at is None else at
        with self._lock:
            rec = self._record(round_)
            link = rec.links.get(peer)
            if link is None:
                link = rec.links[peer] = (
                    dict.fromkeys(DIRECTIONS, 0),
                    dict.fromkeys(DIRECTIONS, 0),
                )
            for counts, n in (
                (rec.sent, sent),
                (rec.received, received),
                (link[0], sent),
                (link[1], received),
            ):
                counts[direction] += n
            if message:
                if outbound:
                    rec.messages_sent += 1
                else:
                    rec.messages_received += 1
                rec.messages.append(
                    Message(
                        round(at - rec.started, 6),
                        "sent" if outbound else "received",
                        kind,
                        peer,
                        sent if outbound else received,
                        form,
                    )
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
            for phases, value in ((rec.phases, seconds), (rec.phases_cpu, cpu_seconds)):
                if value is not None:
                    phases[name] = round(phases.get(name, 0.0) + value, 6)
            if client is not None:
                mine = rec.client_phases.setdefault(client, {})
                mine[name] = round(mine.get(name, 0.0) + seconds, 6)
            if seconds > 0:
                start = end - seconds - rec.started
                rec.spans.append(Span(name, round(start, 6), round(seconds, 6)))

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
        """The figures of the node's role in a round (RoundRecord's optional fields)."""
        with self._lock:
            self._record(round_).figures.update(_known(values, _FIGURES, "a round record"))

    def set_client(self, round_: int, client: str, **values: Any) -> None:
        """Figures of one of the clients a node hosts, in the round's `clients` record."""
        with self._lock:
            rec = self._record(round_)
            rec.clients.setdefault(client, {}).update(
                _known(values, _CLIENT_FIGURES, "a client's figures")
            )

    def end(self, round_: int, final: bool = False) -> None:
        """Close a round (wall-clock end, monotonic duration) and write the whole log."""
        with self._lock:
            rec = self._record(round_)
            rec.end_time = time.time()
            rec.duration_s = round(time.monotonic() - rec.started, 6)
            self.finished = self.finished or final
            self._write_locked()

    def flush(self) -> None:
        with self._lock:
            self._write_locked()

    def record(self, round_: int) -> RoundRecord:
        """One round's record as it stands."""
        with self._lock:
            return self._record(round_).closed()

    def log(self) -> NodeLog:
        """The whole log as it stands."""
        with self._lock:
            return self._log_locked()

    def snapshot(self) -> dict[str, Any]:
        """The log as JSON data (what its file holds)."""
        data: dict[str, Any] = self.log().to_json()
        return data

    def _log_locked(self) -> NodeLog:
        return NodeLog(
            node=self.node,
            role=self.role,
            experiment=self.experiment,
            format_version=FORMAT_VERSION,
            **self.header,
            rejoined=self._rejoined or None,
            finished=self.finished,
            iteration=tuple(
                self._records[r].closed() if r in self._records else self._kept[r]
                for r in sorted({*self._records, *self._kept})
            ),
        )

    def _write_locked(self) -> None:
        write_json_atomic(self.path, self._log_locked().to_json())


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
