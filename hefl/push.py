"""The config push: what the controller POSTs to /config and how a node turns it into its context."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hefl.config import parse_config
from hefl.errors import ConfigError
from hefl.nodes.base import NodeContext

EXPERIMENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def make_push(raw: Mapping[str, Any], node: str, experiment: str, endpoints: Mapping[str, str],
              keyless_context: bytes = b"") -> dict[str, Any]:
    """The body of POST /config for one node: the whole experiment, who it is, where its peers are,
    and, for a switch or the aggregator of an encrypted experiment, the keyless HE context (base64:
    it is configuration, sent once; ciphertexts always travel as raw bytes)."""
    body = {"node": node, "experiment": experiment, "config": dict(raw), "endpoints": dict(endpoints)}
    if keyless_context and raw["others"].get(node, {}).get("type") != "client":
        body["context"] = base64.b64encode(keyless_context).decode()
    return body


def parse_push(payload: Any, log_dir: Path, token: str) -> NodeContext:
    """Validate a pushed config; every problem is a one-line ConfigError."""
    if not isinstance(payload, dict):
        raise ConfigError("push: expected a JSON object")
    unknown = set(payload) - {"node", "experiment", "config", "endpoints", "context"}
    if unknown:
        raise ConfigError(f"push: unknown key {sorted(unknown)[0]!r}")
    cfg = parse_config(payload.get("config"))
    node, experiment = payload.get("node"), payload.get("experiment")
    if not isinstance(node, str) or node not in cfg.nodes:
        raise ConfigError(f"push.node: {node!r} is not a node of this experiment")
    if not isinstance(experiment, str) or not EXPERIMENT_ID.match(experiment):
        raise ConfigError(f"push.experiment: {experiment!r} must be letters, digits, '-', '_', '.'")
    endpoints = payload.get("endpoints") or cfg.default_endpoints()
    if not isinstance(endpoints, dict) or set(cfg.nodes) - set(endpoints):
        raise ConfigError("push.endpoints: must give the URL of every node of the experiment")
    for nid, url in endpoints.items():
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"push.endpoints[{nid!r}]: {url!r} is not an http(s) URL")
    try:
        context = base64.b64decode(payload.get("context") or "", validate=True)
    except (ValueError, TypeError):
        raise ConfigError("push.context: not base64") from None
    return NodeContext(cfg, node, experiment, endpoints, log_dir, token, context)
