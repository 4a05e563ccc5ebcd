"""Switch endpoints: updates from its children; begin, global and flush messages from its parent."""

from __future__ import annotations

from flask import Blueprint

from blueprints.messages import add_route, begin, flush, global_, update
from hefl.node.wire import Kind

bp = Blueprint("switch", __name__)
add_route(bp, Kind.UPDATE, update)
add_route(bp, Kind.BEGIN, begin)
add_route(bp, Kind.GLOBAL, global_)
add_route(bp, Kind.FLUSH, flush)
