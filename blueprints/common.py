"""Endpoints every node answers: health, config push, and its logs."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, current_app, jsonify, request

from hefl.errors import ConfigError, HeflError, NotFound
from hefl.push import is_experiment_id
from hefl.runlog import log_name

bp = Blueprint("common", __name__)


@bp.get("/health")
def health() -> Any:
    return jsonify(current_app.extensions["hefl_server"].health())


@bp.post("/config")
def config() -> Any:
    try:
        payload = request.get_json(silent=True)
    except RecursionError:
        payload = None
    if payload is None:
        raise ConfigError("push: body is not JSON (send Content-Type: application/json)")
    return jsonify(current_app.extensions["hefl_server"].configure(payload))


@bp.get("/log/<experiment>")
def node_log(experiment: str) -> Any:
    """This node's log of an experiment: live for the current one, from disk for earlier ones."""
    node = current_app.extensions["hefl_node"]
    if node is not None and node.ctx.experiment == experiment:
        return jsonify(node.runlog.snapshot())
    path = current_app.extensions["hefl_server"].log_dir / experiment / log_name(node.id if node else "")
    if node is None or not is_experiment_id(experiment) or not path.is_file():
        raise NotFound(f"no log of experiment {experiment!r} on this node")
    try:
        return jsonify(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise HeflError(f"log of experiment {experiment!r} on this node is unreadable: {exc}") from None
