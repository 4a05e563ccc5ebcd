"""Client endpoints: the begin message and each round's global result, from its switch."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from blueprints import current_node
from blueprints.messages import binary_message

bp = Blueprint("client", __name__)


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
