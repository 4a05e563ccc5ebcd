"""A node's host process: builds the node of a pushed config from its parts, swaps it in, retires
the old one, and answers for its logs. No HTTP here: blueprints/ calls it."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hefl.crypto import KeyRing, Scheme, load_keyless, load_secret, make_scheme
from hefl.errors import ConfigError, DuplicateMessage, HeflError, NotFound
from hefl.modelspec import param_count
from hefl.nodes import Node, Parts, Worker, role_class
from hefl.push import EXPERIMENT_ID, parse_push
from hefl.runlog import RunLog, log_name
from hefl.topology import first_hops
from hefl.transport import Timeouts, TrafficMeter, Transport

if TYPE_CHECKING:
    from hefl.nodes.base import NodeContext

log = logging.getLogger(__name__)


class Host:
    """Holds this process's node, if any. A push builds the new node first and retires the old one
    only if that worked, so a push that fails leaves the node as it was."""

    def __init__(self, log_dir: Path, token: str = "") -> None:
        self.log_dir = log_dir
        self.token = token
        self.node: Node | None = None
        self._lock = threading.Lock()

    def configure(self, payload: Any, swap: Callable[[Node], None] = lambda node: None) -> dict[str, Any]:
        """Take a pushed config; `swap` installs the new node's HTTP app before it goes live."""
        ctx = parse_push(payload, self.log_dir, self.token)
        with self._lock:
            current = self.node
            if current is not None and (current.experiment, current.id) == (ctx.experiment, ctx.node_id):
                raise DuplicateMessage(f"already configured as {ctx.node_id} for experiment {ctx.experiment!r}")
            node = build_node(ctx)
            swap(node)
            self.node = node
            node.start()
        if current is not None:
            current.close()
        log.info("%s configured as %s for experiment %s", ctx.node_id, node.role, ctx.experiment)
        return node.status()

    def health(self) -> dict[str, Any]:
        node = self.node
        if node is None:
            return {"state": "idle", "role": None, "experiment": None, "round": None}
        return node.status()

    def log_of(self, experiment: str) -> dict[str, Any]:
        """This node's log of an experiment: live for the current one, from disk for earlier ones."""
        node = self.node
        if node is not None and node.experiment == experiment:
            return node.runlog.snapshot()
        path = self.log_dir / experiment / log_name(node.id if node else "")
        if node is None or not EXPERIMENT_ID.match(experiment) or not path.is_file():
            raise NotFound(f"no log of experiment {experiment!r} on this node")
        try:
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError) as exc:
            raise HeflError(f"log of experiment {experiment!r} on this node is unreadable: {exc}") from None


def build_node(ctx: NodeContext) -> Node:
    """The node of `ctx.node_id`'s role, with every part it works with; a part that cannot be made
    (no data, no GPU, no keys) is the push's fault: one line, and nothing is left running."""
    cfg, role = ctx.cfg, ctx.cfg.nodes[ctx.node_id].type
    runlog = RunLog(ctx.log_dir / ctx.experiment / log_name(ctx.node_id), ctx.node_id, role, ctx.experiment)
    meter = TrafficMeter(runlog, ctx.experiment, cfg.rounds, cfg.nodes, first_hops(cfg.nodes, ctx.node_id))
    transport = Transport(ctx.endpoints, Timeouts.of(cfg.network), ctx.token, meter)
    scheme: Scheme | None = None
    try:
        keys = _keys(ctx)
        scheme = make_scheme(cfg.encryption.he_params(), param_count(cfg.model, cfg.dataset), keys, seed=_scheme_seed(ctx))
        parts = Parts(transport, scheme, runlog, meter, Worker(f"{role}-worker"), keys.key_id if keys else "")
        return role_class(role)(cfg, ctx.node_id, ctx.experiment, parts)
    except Exception as exc:
        transport.close()
        if scheme is not None:
            scheme.close()
        if isinstance(exc, HeflError):
            raise
        raise ConfigError(f"push: {ctx.node_id} cannot be set up: {type(exc).__name__}: {exc}") from exc


def _keys(ctx: NodeContext) -> KeyRing | None:
    """Clients load the secret context from disk; every other role the pushed keyless one."""
    enc, role = ctx.cfg.encryption, ctx.cfg.nodes[ctx.node_id].type
    if enc.scheme == "none":
        return None
    if role == "client":
        return load_secret(enc.he_params(), Path(enc.key_dir))
    if not ctx.context:
        raise ConfigError(f"push.context: a {role} of a {enc.scheme} experiment needs the keyless context")
    return load_keyless(enc.he_params(), ctx.context)


def _scheme_seed(ctx: NodeContext) -> int:
    """A client's stochastic rounding (bfv) is reproducible per client; other roles never round."""
    node = ctx.cfg.nodes[ctx.node_id]
    if node.type != "client":
        return 0
    return ctx.cfg.training.seed * 1_000_003 + node.index * 7919 + 17
