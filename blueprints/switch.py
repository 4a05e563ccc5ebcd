"""Switch endpoints: updates from its children (begin and global messages come through `down`)."""

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
