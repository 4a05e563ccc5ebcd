"""Client endpoints: the begin message and each round's global result, from its switch."""

from __future__ import annotations

from flask import Blueprint

from blueprints.messages import add_route, begin, global_
from hefl.node.wire import Kind

bp = Blueprint("client", __name__)
add_route(bp, Kind.BEGIN, begin)
add_route(bp, Kind.GLOBAL, global_)
