"""A node's host process: builds the node of a pushed config from its parts, swaps it in, retires
the old one, and answers for its logs. No HTTP here: blueprints/ calls it."""

from __future__ import annotations

import ctypes
import ipaddress
import json
import logging
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hefl.address import log_name, parse_address
from hefl.crypto import KeyRing, Scheme, load_keyless, load_secret, make_scheme
from hefl.errors import ConfigError, DuplicateMessage, HeflError, NotFound
from hefl.modelspec import param_count
from hefl.node.body import clear_spools, spool_dir
from hefl.node.nodes import Node, Parts, Worker, role_class
from hefl.node.push import Push, is_experiment_id, parse_push
from hefl.node.rejoin import RejoinStore
from hefl.node.runlog import RunLog
from hefl.node.transport import Timeouts, TrafficMeter, Transport
from hefl.node.wire import Kind
from hefl.provenance import code, machine
from hefl.records import NodeLog
from hefl.seeds import quantize_seed

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3  # rejoins at one round that each ended with the process gone: then it gives up


class Host:
    """Holds this process's node, if any. A push builds the new node first and retires the old one
    only if that worked, so a push that fails leaves the node as it was."""

    def __init__(self, log_dir: Path, token: str = "", listen: str = "") -> None:
        """`listen`: the address this process listens on (host:port); with it, a client keeps
        what it needs to rejoin after a restart (hefl/node/rejoin.py), under that name."""
        self.log_dir = log_dir
        self.token = token
        self.listen = listen
        self.node: Node | None = None
        self.rejoined: int | None = None  # the round this process rejoined its experiment at
        # this process (a worker, forked from gunicorn's master: made here, not at import), in
        # /health after a rejoin: the controller names each restart once
        self.restart_id = secrets.token_hex(8)
        # the experiment and node this address served before a restart that did not rejoin
        self.previous: tuple[str, str] | None = None
        self._served: dict[str, str] = {}  # experiment -> the node this process was in it
        self._lock = threading.Lock()
        clear_spools(log_dir)
        code()  # the code this process runs, asked now: a copy replaced later is not it

    def configure(
        self, payload: Any, swap: Callable[[Node], None] = lambda node: None
    ) -> dict[str, Any]:
        """Take a pushed config; `swap` installs the new node's HTTP app before it goes live."""
        push = parse_push(payload)
        with self._lock:
            current = self.node
            if current is not None and (current.experiment, current.id) == (
                push.experiment,
                push.node,
            ):
                raise DuplicateMessage(
                    f"already configured as {push.node} for experiment {push.experiment!r}"
                )
            served = self._served.get(push.experiment)
            if (
                served is not None
                or (self.log_dir / push.experiment / log_name(push.node)).exists()
            ):
                raise DuplicateMessage(
                    f"experiment {push.experiment!r} already has a log of "
                    f"{served or push.node} on this node: an experiment id is used once, and its "
                    "files are never rewritten"
                )
            node = build_node(push, self.log_dir, self.token)
            try:
                node.start()  # writes its (empty) log: a log folder it cannot write is refused here
                if self.listen:  # clients rejoin from it; any role serves its log after a restart
                    store = RejoinStore(self.log_dir, self.listen, push.experiment, push.node)
                    store.keep_push(payload)
                    node.store = store
            except OSError as exc:
                node.close()
                raise ConfigError(f"push: {push.node} cannot write its log: {exc}") from None
            swap(node)
            self.node = node
            self.rejoined = None
            self._served[push.experiment] = push.node
        if current is not None:
            current.close()
        log.info("%s configured as %s for experiment %s", push.node, node.role, push.experiment)
        return self.health()

    def rejoin(self, swap: Callable[[Node], None] = lambda node: None) -> bool:
        """At start: rejoin the experiment this address served before its process restarted, from
        what it kept on its own disk; whether it did. Anything missing, finished or refused leaves
        the node unconfigured, as a fresh one (said in its log)."""
        found = RejoinStore.find(self.log_dir, self.listen) if self.listen else None
        if found is None:
            return False
        store, saved = found
        node: Node | None = None
        try:
            push = parse_push(saved.push)
            _is_listening_as(self.listen, push)
            self.previous = (push.experiment, push.node)  # /log serves its log on disk
            role = push.cfg.nodes[push.node].type
            if role != "client":
                log.warning(
                    "%s restarted and lost its state: an adding %s does not rejoin (the sums of "
                    "its open round were in its memory only)",
                    push.node,
                    role,
                )
                return False
            path = self.log_dir / push.experiment / log_name(push.node)
            kept = RunLog.kept(path)
            if kept is None or kept.finished:
                raise ConfigError(f"{path} is missing or finished: nothing to rejoin")
            tries = store.attempt(saved.applied + 1)
            if tries > MAX_ATTEMPTS:
                raise ConfigError(
                    f"gave up: {MAX_ATTEMPTS} attempts to rejoin at round {saved.applied + 2} "
                    "ended with this process gone"
                )
            _parent_runs(push, self.token)
            node = build_node(push, self.log_dir, self.token, kept)
            node.store = store
            at = node.rejoin(saved)
            node.start()
        except Exception as exc:  # whatever it is, the node must come up (unconfigured)
            log.warning("%s: not rejoining experiment %s: %s", self.listen, store.experiment, exc)
            if node is not None:
                node.close()
            store.clear()
            return False
        with self._lock:
            swap(node)
            self.node = node
            self.rejoined = at
            self._served[push.experiment] = push.node
        log.warning(
            "%s restarted and lost its state; rejoined experiment %s at round %d",
            push.node,
            push.experiment,
            at + 1,
        )
        return True

    def health(self) -> dict[str, Any]:
        """The node's status, and whether this process checks a credential."""
        node = self.node
        state: dict[str, Any]
        if node is None:
            state = {"state": "idle", "role": None, "experiment": None, "round": None}
        else:
            state = node.status()
            if self.rejoined is not None:  # the controller names the node once
                state.update(rejoined_at=self.rejoined, restart_id=self.restart_id)
        # machine and code: also what a retried config push (answered 409) reads back
        return {**state, "credential": bool(self.token), "machine": machine(), "code": code()}

    def end(self, experiment: str) -> dict[str, Any]:
        """Retire the node if it is in `experiment` (its log is written; it keeps answering /health
        and /log); a node in another experiment, or none, is left as it is. Its health after."""
        with self._lock:
            node = self.node
            if node is not None and node.experiment == experiment and not node.closed:
                node.stop("the controller ended the experiment")
        return self.health()

    def log_of(self, experiment: str) -> dict[str, Any]:
        """This node's log of an experiment: live for the current one, from disk for older ones."""
        node = self.node
        if node is not None and node.experiment == experiment:
            return node.runlog.snapshot()
        me = node.id if node else None
        if me is None and self.previous is not None and self.previous[0] == experiment:
            me = self.previous[1]  # restarted, not rejoined: its log of before is on disk
        path = self.log_dir / experiment / log_name(me or "")
        if me is None or not is_experiment_id(experiment) or not path.is_file():
            raise NotFound(f"no log of experiment {experiment!r} on this node")
        try:
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError) as exc:
            raise HeflError(
                f"log of experiment {experiment!r} on this node is unreadable: {exc}"
            ) from None


def _is_listening_as(listen: str, push: Push) -> None:
    """A pointer names the node this process serves: the port it listens on, and its address
    where both are IP addresses and it listens on one (not 0.0.0.0)."""
    want = parse_address(push.node)
    here = parse_address(listen)
    port = want.port or push.cfg.network.port
    if port != here.port:
        raise ConfigError(f"it names {push.node} (port {port}), not this process's {listen}")
    try:
        same = ipaddress.ip_address(want.host) == ipaddress.ip_address(here.host)
        wildcard = ipaddress.ip_address(here.host).is_unspecified
    except ValueError:  # a name: not compared
        return
    if not (same or wildcard):
        raise ConfigError(f"it names {push.node}, not this process's {listen}")


def _parent_runs(push: Push, token: str) -> None:
    """A client rejoins only an experiment its parent still runs (a node stopped with its run,
    then started again, must not train for a run that is over)."""
    parent = push.cfg.nodes[push.node].send
    transport = Transport(push.endpoints, Timeouts(connect=3.0, read=5.0, retries=2), token)
    try:
        health = transport.call(parent, Kind.HEALTH).json()
    except (HeflError, ValueError) as exc:
        raise ConfigError(
            f"its parent {parent} does not say it runs the experiment: {exc}"
        ) from None
    finally:
        transport.close()
    if not isinstance(health, dict) or (health.get("experiment"), health.get("state")) != (
        push.experiment,
        "running",
    ):
        state = health.get("state") if isinstance(health, dict) else "?"
        raise ConfigError(
            f"its parent {parent} no longer runs experiment {push.experiment} ({state})"
        )


def return_large_buffers(threshold: int = 1 << 20) -> bool:
    """Make glibc hand every buffer of `threshold` bytes or more back to the system when freed.

    By default glibc raises its mmap threshold up to 32 MiB after freeing a large buffer, so later
    bodies and payloads (24 MB for a 1M-parameter CKKS update) come from its heap and stay
    resident after use: an adding switch of 4 children peaked at 347 MB instead of 238 MB. Set for
    switches and the aggregator only: a client's torch tensors would pay page faults on every
    allocation. False where the C library has no `mallopt` (not glibc): nothing changes there."""
    try:
        libc = ctypes.CDLL(None)
        m_mmap_threshold = -3  # glibc's malloc.h
        return bool(libc.mallopt(m_mmap_threshold, threshold))
    except (OSError, AttributeError):
        return False


def build_node(push: Push, log_dir: Path, token: str = "", kept: NodeLog | None = None) -> Node:
    """The node of `push.node`'s role, with every part it works with; a part that cannot be made
    (no data, no GPU, no keys) is the push's fault: one line, and nothing is left running.
    `kept`: the node's log on disk, when it rejoins (its closed rounds stay in the log)."""
    cfg, role = push.cfg, push.cfg.nodes[push.node].type
    runlog = RunLog(
        log_dir / push.experiment / log_name(push.node), push.node, role, push.experiment, kept
    )
    hops = cfg.tree.first_hops(push.node)
    meter = TrafficMeter(runlog, push.experiment, cfg.rounds, cfg.nodes, hops)
    transport = Transport(push.endpoints, Timeouts.of(cfg.network), token, meter)
    scheme: Scheme | None = None
    try:
        keys = _keys(push)
        size = param_count(cfg.model, cfg.dataset)
        scheme = make_scheme(cfg.he_params(), size, keys, seed=_scheme_seed(push))
        meter.form_of = scheme.form
        training = None
        if role == "client":  # data, the model and torch: only here
            from hefl.node.nodes.local_training import LocalTraining

            training = LocalTraining(cfg, push.node)
        parts = Parts(
            transport,
            scheme,
            runlog,
            meter,
            Worker(f"{role}-worker"),
            keys.key_id if keys else "",
            push.samples,
            training,
            spool_dir(log_dir, secrets.token_hex(4)),
        )
        node = role_class(role)(cfg, push.node, push.experiment, parts)
        if role != "client":
            return_large_buffers()
        return node
    except Exception as exc:
        transport.close()
        if scheme is not None:
            scheme.close()
        if isinstance(exc, HeflError):
            raise
        raise ConfigError(
            f"push: {push.node} cannot be set up: {type(exc).__name__}: {exc}"
        ) from exc


def _keys(push: Push) -> KeyRing | None:
    """Clients load the secret context from disk; every other role the pushed keyless one."""
    enc, role = push.cfg.encryption, push.cfg.nodes[push.node].type
    if not enc.encrypted:
        return None
    if role == "client":
        return load_secret(enc.he_params(), Path(enc.key_dir))
    if not push.context:
        raise ConfigError(
            f"push.context: a {role} of a {enc.scheme} experiment needs the keyless context"
        )
    return load_keyless(enc.he_params(), push.context)


def _scheme_seed(push: Push) -> int:
    """The scheme's own rounding stream (a client passes each round's: ClientNode.rounding);
    other roles never round."""
    node = push.cfg.nodes[push.node]
    return quantize_seed(push.cfg.training.seed, node.index, 0) if node.type == "client" else 0


PARENT_ENV = "HEFL_PARENT_PID"  # set by local mode: the node exits when that process is gone


def die_with_parent() -> bool:
    """When $HEFL_PARENT_PID names this process's parent (local mode), ask the kernel for SIGTERM
    when the parent dies (Linux: PR_SET_PDEATHSIG), and exit at once if it died already. A node
    started by hand or by deploy/ has no such variable and lives on its own. Whether it is a
    local run's node."""
    import os
    import signal

    want = os.environ.pop(PARENT_ENV, "")
    if not want:
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1  # linux/prctl.h
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        log.warning("cannot ask to be stopped with the local run (no prctl here)")
    if str(os.getppid()) != want:  # the parent died before the request above
        raise SystemExit(f"the local run that started this node (pid {want}) is gone")
    return True
