"""Switch endpoints: updates from its children; begin and global messages from its parent."""

from __future__ import annotations

from flask import Blueprint

from blueprints import messages

bp = Blueprint("switch", __name__)
bp.add_url_rule("/update", view_func=messages.update, methods=["POST"])
bp.add_url_rule("/begin", view_func=messages.downward, methods=["POST"], endpoint="begin")
bp.add_url_rule("/global", view_func=messages.downward, methods=["POST"], endpoint="global")
