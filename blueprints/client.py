"""Client endpoints: the begin message and each round's global result, from its switch."""

from __future__ import annotations

from flask import Blueprint

from blueprints import messages

bp = Blueprint("client", __name__)
bp.add_url_rule("/begin", view_func=messages.downward, methods=["POST"], endpoint="begin")
bp.add_url_rule("/global", view_func=messages.downward, methods=["POST"], endpoint="global")
