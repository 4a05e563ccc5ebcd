"""Endpoints every node answers: health, config push, and its logs."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, current_app, jsonify, request

from hefl.errors import ConfigError, NotConfigured
from hefl.runlog import log_name

bp = Blueprint("common", __name__)


@bp.get("/health")
def health() -> Any:
    return jsonify(current_app.extensions["hefl_server"].health())


@bp.post("/config")
def config() -> Any:
    payload = request.get_json(silent=True)
    if payload is None:
        raise ConfigError("push: body is not JSON (send Content-Type: application/json)")
    return jsonify(current_app.extensions["hefl_server"].configure(payload))


@bp.get("/log/<experiment>")
def node_log(experiment: str) -> Any:
    """This node's log of an experiment: live for the current one, from disk for earlier ones."""
    node = current_app.extensions["hefl_node"]
    if node is not None and node.ctx.experiment == experiment:
        return jsonify(node.runlog.snapshot())
    server = current_app.extensions["hefl_server"]
    if node is not None:
        path = server.log_dir / experiment / log_name(node.id)
        if "/" not in experiment and path.is_file():
            return jsonify(json.loads(path.read_text()))
    raise NotConfigured(f"no log of experiment {experiment!r} on this node")
