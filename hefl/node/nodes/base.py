"""What every role shares: its parts (given, not built here), failure reporting, and its status."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from hefl.config import ExperimentConfig, NodeConfig
from hefl.crypto import Scheme
from hefl.crypto.frame import Payload
from hefl.errors import ConfigError, HeflError, PeerRestarted, PeerUnreachable, ProtocolError
from hefl.node.body import FileBody, Outgoing, new_spool, remove_spool
from hefl.node.rejoin import RejoinStore, Saved
from hefl.node.runlog import RunLog
from hefl.node.transport import TrafficMeter
from hefl.node.wire import Envelope, Kind, check_scope
from hefl.provenance import machine

log = logging.getLogger(__name__)


class Sender(Protocol):
    """What a node sends through: the Transport, or a fake in unit tests."""

    def send(self, peer: str, kind: Kind, env: Envelope, body: Outgoing = b"") -> Any: ...

    def close(self) -> None: ...


class Worker:
    """One thread that runs a node's round work in order; a job that raises goes to `on_error`."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.Queue[tuple[Callable[..., None], tuple[Any, ...]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._on_error: Callable[[str, Exception], None] = lambda job, exc: None
        self.closed = False

    def start(self, on_error: Callable[[str, Exception], None]) -> None:
        self._on_error = on_error
        self._thread.start()

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` on the worker thread, after the jobs already queued."""
        self._jobs.put((fn, args))

    def close(self) -> None:
        """Drop the queued work (a retired node's) and let the thread end."""
        self.closed = True
        self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self.closed:
                continue
            fn, args = job
            try:
                fn(*args)
            except Exception as exc:  # the worker must survive to report; the node keeps serving
                try:
                    self._on_error(fn.__name__, exc)
                except Exception:  # reporting failed too: said in the log, the thread lives on
                    log.exception("reporting a failure failed")


@dataclass(frozen=True)
class Parts:
    """What a node works with; hefl.node.host's `build_node` makes them, a test may pass fakes."""

    transport: Sender
    scheme: Scheme
    runlog: RunLog
    meter: TrafficMeter  # the HTTP layer counts what this node is sent with it
    worker: Worker
    key_id: str = ""  # clients: which key pair they loaded
    # adders: each client's training samples as it declared them ({}: not given, not checked)
    samples: Mapping[str, int] = field(default_factory=dict)
    # clients: what trains (hefl.node.nodes.local_training.LocalTraining; a test's own part)
    training: Any = None
    # where large bodies go on disk (hefl.node.body); None: they are made in memory
    spool: Path | None = None


class Node:
    """One role's round state. Messages arrive through `on_<kind>` methods, called by the HTTP
    layer after it counted their bytes; the work they cause runs on the worker thread."""

    role: ClassVar[str]  # "client", "switch" or "aggregator": set by each role's class

    def __init__(self, cfg: ExperimentConfig, node_id: str, experiment: str, parts: Parts) -> None:
        self.cfg = cfg
        self.id = node_id
        self.experiment = experiment
        self.node_cfg: NodeConfig = cfg.nodes[node_id]
        self.transport = parts.transport
        self.scheme = parts.scheme
        self.runlog = parts.runlog
        self.meter = parts.meter
        self.worker = parts.worker
        self.key_id = parts.key_id
        self.spool = parts.spool
        self.runlog.describe(
            scheme=self.scheme.name, can_decrypt=self.scheme.can_decrypt, machine=machine()
        )
        self.store: RejoinStore | None = None  # what a restart rejoins from (clients)
        self.error = ""
        self.stopped = ""  # why the experiment ended before this node finished
        self.round = 0
        self.closed = False

    def rejoin(self, saved: Saved) -> int:
        """Take up the experiment after a restart (clients only: an adder's sums of the open
        round were in its memory alone)."""
        raise ConfigError(f"{self.id}: a {self.role} does not rejoin after a restart")

    @property
    def max_body(self) -> int:
        """The largest request body this node reads: twice a payload, at least 16 MiB."""
        return max(16 << 20, 2 * self.scheme.max_payload_bytes)

    def start(self) -> None:
        """Go live once fully built: write the (empty) log and start the worker thread."""
        self.runlog.flush()
        self.worker.start(self.job_failed)

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        self.worker.submit(fn, *args)

    @contextmanager
    def step(self, doing: str) -> Iterator[None]:
        """Name what the node does in this block ("sending its update to ..."): a failure in it
        is reported as that, not as the worker job it happened in (the innermost step wins)."""
        try:
            yield
        except Exception as exc:
            if not hasattr(exc, "hefl_step"):
                try:
                    exc.hefl_step = doing  # type: ignore[attr-defined]
                except Exception:  # an exception that takes no attributes keeps its own text
                    pass
            raise

    def job_failed(self, job: str, exc: Exception) -> None:
        """A worker job raised: the node fails with what it was doing and why."""
        self.fail(f"{getattr(exc, 'hefl_step', job)}: {exc}", exc)

    def fail(self, reason: str, exc: BaseException | None = None) -> None:
        """Record a failure, keep every log line written so far, and tell the aggregator. The
        first failure is the node's error (what follows from it is logged, not reported). A
        failure caused by a peer (unreachable, restarted) names that peer first."""
        line = f"{self.id} ({self.role}), round {self.round + 1}: {reason}"
        if isinstance(exc, PeerUnreachable | PeerRestarted) and exc.peer not in ("", self.id):
            line = f"{exc.headline} ({line})"
        quiet = isinstance(exc, HeflError | OSError)  # said in the line: no traceback
        log.error("%s", line, exc_info=None if quiet else exc)
        if self.error or self.stopped:  # after the end: work in flight failing, not a failure
            return
        self.error = line
        if self.store is not None:  # a failed node does not rejoin
            self.store.clear()
        try:
            self.runlog.flush()
        except OSError as exc2:  # a full or read-only disk: the report below still goes out
            if "log" not in reason:
                self.error += f" (and its log could not be written: {exc2})"
            log.error("%s: could not write its log: %s", self.id, exc2)
        if self.id == self.cfg.tree.root or self.closed:
            return
        try:
            self.transport.send(
                self.cfg.tree.root, Kind.FAIL, self.envelope(self.round), self.error.encode()
            )
        except Exception as exc2:  # reporting is best effort; the failure is logged above
            log.error("%s: could not report the failure to the aggregator: %s", self.id, exc2)

    def stop(self, reason: str) -> None:
        """The experiment ended without this node finishing: say so in its status, retire it."""
        if not self.runlog.finished and not self.error:
            self.stopped = reason
        self.close()

    def close(self) -> None:
        """Retire this node: queued work is dropped, the log is written, connections closed."""
        self.closed = True
        self.worker.close()
        if self.store is not None:  # retired or replaced: nothing to rejoin
            self.store.clear()
        try:
            self.runlog.flush()
        except OSError as exc:  # a full disk must not keep the connections and workers alive
            log.error("%s: could not write its log when retired: %s", self.id, exc)
        self.transport.close()
        self.scheme.close()
        remove_spool(self.spool)  # files of work that was dropped (a queued relay, a forward)

    def dump(self, total: Any) -> Outgoing:
        """A round's total as the body that carries it: written to a file a part at a time (sent
        from there, then removed), or serialized in memory where the node has no spool folder."""
        if self.spool is None:
            return self.scheme.serialize(total)
        out, path = new_spool(self.spool, "out-")
        try:
            with out:
                self.scheme.write(total, out)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return FileBody(path)

    def envelope(
        self, round_: int, samples: int = 0, contributors: int = 0, members: int = 0
    ) -> Envelope:
        return Envelope(self.experiment, round_, self.id, samples, contributors, members)

    def check_downward(
        self, env: Envelope, payload: Payload, allow_empty: bool = False, shape: bool = True
    ) -> None:
        """A begin or global message must come from the parent, for this experiment, in range;
        with `shape`, its payload is a frame of this experiment's parts (a caller that loads the
        payload next, which checks every part, passes False: a body still arriving is not read
        twice)."""
        check_scope(env, self.experiment, self.cfg.rounds)
        if env.sender != self.node_cfg.send:
            raise ProtocolError(f"{env.sender!r} is not this node's parent {self.node_cfg.send!r}")
        if shape and not (allow_empty and not payload):
            self.scheme.check(payload)

    def status(self) -> dict[str, Any]:
        state = "failed" if self.error else ("finished" if self.runlog.finished else "running")
        if state == "running" and self.stopped:
            state = "stopped"
        return {
            "state": state,
            "role": self.role,
            "node": self.id,
            "experiment": self.experiment,
            "round": self.round,
            "scheme": self.scheme.name,
            "can_decrypt": self.scheme.can_decrypt,
            "key_id": self.key_id,
            "error": self.error,
            "phase": self.runlog.current or "waiting",
        }
