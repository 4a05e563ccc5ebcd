"""Round messages off a request: envelope headers, body, byte counting; shared by the role blueprints."""

from __future__ import annotations

from flask import Response, g, request

from blueprints import current_node
from hefl.errors import ProtocolError
from hefl.wire import BINARY, Envelope

JSON = "application/json"


def read_message(content_type: str = BINARY) -> tuple[Envelope, bytes]:
    """The envelope and body of a round message, its bytes counted before the node acts on it."""
    env = Envelope.from_headers(request.headers)
    body = request.get_data(cache=False)
    if current_node().meter_in(env, len(body)):
        g.metered = env
    if request.mimetype != content_type:
        raise ProtocolError(f"Content-Type must be {content_type}, got {request.mimetype or 'none'!r}")
    return env, body


def accepted() -> tuple[Response, int]:
    """202 with no body: what an accepted message costs on the wire is its request alone."""
    return Response(status=202), 202


def update() -> tuple[Response, int]:
    """POST /update: a child's update (switches and the aggregator)."""
    env, payload = read_message()
    current_node().on_update(env, payload)
    return accepted()


def downward() -> tuple[Response, int]:
    """POST /begin and /global: from the parent (clients and switches)."""
    env, payload = read_message()
    current_node().on_down(request.path, env, payload)
    return accepted()
