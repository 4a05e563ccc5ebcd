"""The config push: what the controller POSTs to /config, what a node reads from it, and what the
controller says of a node that refuses it for its credential."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from hefl.address import check_base_url
from hefl.config import ExperimentConfig, parse_config
from hefl.errors import ConfigError, ForeignNode, HeflError, PeerRefused, Unauthorized
from hefl.node.transport import Transport
from hefl.node.wire import TOKEN_HEADER, Kind
from hefl.schema import EXPERIMENT_ID_LEN, is_safe_name, parse_section, safe_name


def is_experiment_id(text: Any) -> bool:
    """Whether `text` can be an experiment id (it names a log folder and appears in URLs)."""
    return is_safe_name(text, EXPERIMENT_ID_LEN)


@dataclass(frozen=True)
class PushBody:
    """The JSON body of POST /config, as sent."""

    node: str
    experiment: str = field(metadata=safe_name(EXPERIMENT_ID_LEN))
    config: dict[str, Any]
    endpoints: dict[str, str] = field(default_factory=dict)  # {} means each node's default URL
    context: str = ""  # base64 of the keyless HE context (switches and the aggregator)
    # switches and the aggregator: each client's training samples, as the client declared them
    # in its answer to its own push (Dirichlet slices are known only to the clients)
    samples: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Push:
    """A validated push: the experiment's config, which node this is, where its peers are."""

    cfg: ExperimentConfig
    node: str
    experiment: str
    endpoints: Mapping[str, str]
    context: bytes = b""  # the keyless HE context pushed to switches and the aggregator
    samples: Mapping[str, int] = field(default_factory=dict)  # {}: no table (not checked)


def make_push(
    raw: Mapping[str, Any],
    node: str,
    experiment: str,
    endpoints: Mapping[str, str],
    keyless_context: bytes = b"",
    samples: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The body of POST /config for one node: the whole experiment, who it is, where its peers are,
    and, for a switch or the aggregator of an encrypted experiment, the keyless HE context (base64:
    it is configuration, sent once; ciphertexts always travel as raw bytes)."""
    body = {
        "node": node,
        "experiment": experiment,
        "config": dict(raw),
        "endpoints": dict(endpoints),
    }
    adder = raw["others"].get(node, {}).get("type") != "client"
    if keyless_context and adder:
        body["context"] = base64.b64encode(keyless_context).decode()
    if samples and adder:
        body["samples"] = dict(samples)
    return body


def parse_push(payload: Any) -> Push:
    """Validate a pushed config; every problem is a one-line ConfigError."""
    body: PushBody = parse_section(payload, PushBody, "push")
    cfg = parse_config(body.config)
    if body.node not in cfg.nodes:
        raise ConfigError(f"push.node: {body.node!r} is not a node of this experiment")
    endpoints = body.endpoints or cfg.default_endpoints()
    missing = [n for n in cfg.nodes if n not in endpoints]
    if missing:
        raise ConfigError(
            f"push.endpoints: must give the URL of every node of the experiment "
            f"(none for {missing[0]!r})"
        )
    for nid, url in endpoints.items():
        check_base_url(url, f"push.endpoints[{nid!r}]")
    try:
        context = base64.b64decode(body.context, validate=True)
    except (binascii.Error, ValueError):  # ValueError: not ASCII
        raise ConfigError("push.context: not base64") from None
    clients = set(cfg.tree.clients())
    for nid, n in body.samples.items():
        if nid not in clients:
            raise ConfigError(f"push.samples: {nid!r} is not a client of this experiment")
        if isinstance(n, bool) or n < 1:
            raise ConfigError(f"push.samples[{nid!r}]: {n!r} is not a positive sample count")
    if body.samples and set(body.samples) != clients:
        absent = sorted(clients - set(body.samples))[0]
        raise ConfigError(
            f"push.samples: must give every client's sample count (none for {absent!r})"
        )
    return Push(cfg, body.node, body.experiment, endpoints, context, dict(body.samples))


def send_push(transport: Transport, node: str, body: Mapping[str, Any]) -> requests.Response:
    """POST `node` its config (make_push's body). A 401 raises ForeignNode: the node checks another
    credential than this controller's, and the line says whose node it may be (its open /health
    tells idle from serving another experiment) and what to do."""
    try:
        return transport.call(node, Kind.CONFIG, json.dumps(body).encode())
    except PeerRefused as exc:
        if exc.status != Unauthorized.status_code:
            raise
        url = transport.endpoints[node]
        try:
            port = urlsplit(url).port or 80
        except ValueError:
            port = 0
        health = open_health(transport, node)
        raise ForeignNode(
            node,
            url,
            port,
            bool(transport.session.headers.get(TOKEN_HEADER)),
            str(health.get("state") or ""),
            str(health.get("role") or ""),
        ) from None


def open_health(transport: Transport, node: str) -> dict[str, Any]:
    """What a node's /health tells anyone without its credential (state and role, no secrets);
    {} when it says nothing."""
    try:
        data = transport.call(node, Kind.HEALTH, timeouts=transport.timeouts.once()).json()
    except (HeflError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
