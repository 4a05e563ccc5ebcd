"""Switch endpoints: updates from children, begin and global messages from the parent."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from blueprints import current_node
from blueprints.messages import binary_message

bp = Blueprint("switch", __name__)


@bp.post("/update")
def update() -> Any:
    env, payload = binary_message()
    current_node().on_update(env, payload)
    return jsonify(accepted=True), 202


@bp.post("/begin")
def begin() -> Any:
    env, payload = binary_message()
    current_node().on_down("/begin", env, payload)
    return jsonify(accepted=True), 202


@bp.post("/global")
def global_result() -> Any:
    env, payload = binary_message()
    current_node().on_down("/global", env, payload)
    return jsonify(accepted=True), 202
