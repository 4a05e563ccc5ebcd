"""Endpoints every node answers: health, config push, and its logs."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, current_app, jsonify, request

from blueprints import has_credential, read_body
from blueprints.messages import add_routes
from hefl.errors import ConfigError
from hefl.node.wire import Kind

bp = Blueprint("common", __name__)


def health() -> Any:
    """State and role to anyone (a liveness probe); everything else, the experiment id and an
    error's text included, only with the credential."""
    state = current_app.extensions["hefl_server"].host.health()
    if not has_credential():
        state = {"state": state["state"], "role": state["role"]}
    return jsonify(state)


def config() -> Any:
    body = read_body()  # bounded in size and time like a round message's
    payload = None
    if request.is_json:
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            payload = None
    if payload is None:
        raise ConfigError("push: body is not JSON (send Content-Type: application/json)")
    return jsonify(current_app.extensions["hefl_server"].configure(payload))


def node_log(experiment: str) -> Any:
    """This node's log of an experiment: live for the current one, from disk for earlier ones."""
    return jsonify(current_app.extensions["hefl_server"].host.log_of(experiment))


def end(experiment: str) -> Any:
    """The controller ends an experiment that failed: a node still in it stops its round work,
    writes its log and keeps answering /health and /log."""
    return jsonify(current_app.extensions["hefl_server"].host.end(experiment))


add_routes(bp, {Kind.HEALTH: health, Kind.CONFIG: config, Kind.LOG: node_log, Kind.END: end})
