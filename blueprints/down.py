"""Endpoints of nodes below the aggregator: the begin message and each round's global result."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from blueprints import current_node
from blueprints.messages import binary_message

bp = Blueprint("down", __name__)


@bp.post("/begin")
@bp.post("/global")
def downward() -> Any:
    env, payload = binary_message()
    current_node().on_down(request.path, env, payload)
    return jsonify(accepted=True), 202
