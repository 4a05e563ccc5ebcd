"""Switch endpoints: updates from its children; begin and global messages from its parent."""

from __future__ import annotations

from flask import Blueprint

from blueprints.messages import add_route, begin, global_, update
from hefl.wire import Kind

bp = Blueprint("switch", __name__)
add_route(bp, Kind.UPDATE, update)
add_route(bp, Kind.BEGIN, begin)
add_route(bp, Kind.GLOBAL, global_)
