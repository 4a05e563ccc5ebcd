"""What every role shares: its context, run log, transport, and one worker thread for round work."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hefl.config import ExperimentConfig
from hefl.crypto import Scheme, load_keyless, load_secret, make_scheme
from hefl.errors import ConfigError, HeflError, ProtocolError
from hefl.modelspec import param_count
from hefl.runlog import RunLog, log_name
from hefl.transport import Timeouts, Transport
from hefl.wire import Envelope, check_scope

if TYPE_CHECKING:
    from hefl.crypto import KeyRing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeContext:
    """Everything a node is configured with: who it is, the experiment, where its peers are."""

    cfg: ExperimentConfig
    node_id: str
    experiment: str
    endpoints: Mapping[str, str]
    log_dir: Path
    token: str = ""
    context: bytes = b""  # the keyless HE context pushed to switches and the aggregator

    @property
    def exp_dir(self) -> Path:
        return self.log_dir / self.experiment


class Node:
    """Round state of one role; views call `on_*` methods, slow work runs on the worker thread."""

    role = "node"

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.id = ctx.node_id
        self.me = ctx.cfg.nodes[ctx.node_id]
        self.runlog = RunLog(ctx.exp_dir / log_name(ctx.node_id), self.id, self.role, ctx.experiment)
        net = ctx.cfg.network
        self.transport = Transport(ctx.endpoints, Timeouts(net.connect_timeout_s, net.read_timeout_s, net.retries),
                                   ctx.token, meter=self._meter_out)
        keys = self._keys()
        self.key_id = keys.key_id if keys is not None else ""
        self.scheme: Scheme = make_scheme(ctx.cfg.encryption.he_params(), param_count(ctx.cfg.model, ctx.cfg.dataset),
                                          keys, seed=self.scheme_seed())
        self.runlog.header.update(scheme=self.scheme.name, can_decrypt=self.scheme.can_decrypt)
        self.error = ""
        self.round = 0
        self.closed = False
        self._marks: dict[tuple[str, int], float] = {}
        self._jobs: queue.Queue[tuple[Callable[..., None], tuple[Any, ...]] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name=f"{self.role}-worker", daemon=True)

    def _keys(self) -> KeyRing | None:
        """Clients load the secret context from disk; every other role the pushed keyless one."""
        enc = self.cfg.encryption
        if enc.scheme == "none":
            return None
        if self.me.type == "client":
            return load_secret(enc.he_params(), Path(enc.key_dir))
        if not self.ctx.context:
            raise ConfigError(f"push.context: a {self.me.type} of a {enc.scheme} experiment needs the keyless context")
        return load_keyless(enc.he_params(), self.ctx.context)

    def scheme_seed(self) -> int:
        return 0

    @property
    def max_body(self) -> int:
        """The largest request body this node reads: twice a payload, at least 16 MiB."""
        return max(16 << 20, 2 * self.scheme.max_payload_bytes)

    def start(self) -> None:
        """Go live once fully built: write the (empty) log and start the worker thread."""
        self.runlog.flush()
        self._worker.start()

    # ------------------------------------------------------------ work and failure

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` on this node's worker thread, after the jobs already queued."""
        self._jobs.put((fn, args))

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self.closed:  # retired by a reconfiguration: drop what is left of the old experiment
                continue
            fn, args = job
            try:
                fn(*args)
            except Exception as exc:  # the worker must survive to report; the node keeps serving
                self.fail(f"{fn.__name__}: {exc}", exc)

    def fail(self, reason: str, exc: BaseException | None = None) -> None:
        """Record a failure, keep every log line written so far, and tell the aggregator."""
        self.error = f"{self.id} ({self.role}), round {self.round}: {reason}"
        log.error("%s", self.error, exc_info=exc if not isinstance(exc, HeflError) else None)
        self.runlog.flush()
        if self.id == self.cfg.root or self.closed:
            return
        try:
            self.transport.post(self.cfg.root, "/fail", self.error.encode(), self.envelope(self.round).headers(),
                                content_type="text/plain")
        except Exception as exc2:  # reporting is best effort; the failure is logged above
            log.error("%s: could not report the failure to the aggregator: %s", self.id, exc2)

    def close(self) -> None:
        """Retire this node: queued work is dropped, the log is written, connections closed."""
        self.closed = True
        self._jobs.put(None)
        self.runlog.flush()
        self.transport.close()
        self.scheme.close()

    # ------------------------------------------------------------ accounting

    def _meter_out(self, round_: int, sent: int, received: int) -> None:
        self.runlog.add_bytes(round_, sent, received, outbound=True)

    def meter_in(self, env: Envelope, received: int, sent: int = 0, message: bool = True) -> bool:
        """Count the body bytes of a round message this node was sent (by the HTTP layer, before
        the node acts on it); messages of other experiments or rounds make no records. True if counted."""
        if env.experiment != self.ctx.experiment or not 0 <= env.round < self.cfg.rounds:
            return False
        self.runlog.add_bytes(env.round, sent, received, outbound=False, message=message)
        return True

    def mark(self, what: str, round_: int) -> None:
        """Remember when something happened, to time a wait phase later."""
        self._marks[(what, round_)] = time.monotonic()

    def since(self, what: str, round_: int) -> float:
        started = self._marks.pop((what, round_), None)
        return 0.0 if started is None else time.monotonic() - started

    # ------------------------------------------------------------ messages

    def envelope(self, round_: int, samples: int = 0, contributors: int = 0) -> Envelope:
        return Envelope(self.ctx.experiment, round_, self.id, samples, contributors)

    def check_downward(self, env: Envelope, payload: bytes, allow_empty: bool = False) -> None:
        """A global result must come from this node's parent, for this experiment, in range."""
        check_scope(env, self.ctx.experiment, self.cfg.rounds)
        if env.sender != self.me.send:
            raise ProtocolError(f"{env.sender!r} is not this node's parent {self.me.send!r}")
        if not (allow_empty and not payload):
            self.scheme.check(payload)  # a relay checks the shape; a client loads it as well

    def status(self) -> dict[str, Any]:
        return {"state": "failed" if self.error else ("finished" if self.runlog.finished else "running"),
                "role": self.role, "node": self.id, "experiment": self.ctx.experiment, "round": self.round,
                "scheme": self.scheme.name, "can_decrypt": self.scheme.can_decrypt, "key_id": self.key_id,
                "error": self.error}
