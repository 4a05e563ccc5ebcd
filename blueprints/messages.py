"""Reading round messages off a request: the envelope headers and a binary body."""

from __future__ import annotations

from flask import request

from hefl.errors import ProtocolError
from hefl.wire import BINARY, Envelope


def binary_message() -> tuple[Envelope, bytes]:
    """The envelope and payload of a POST; refuses a body that is not application/octet-stream."""
    env = Envelope.from_headers(request.headers)
    if request.mimetype != BINARY:
        raise ProtocolError(f"Content-Type must be {BINARY}, got {request.mimetype or 'none'!r}")
    return env, request.get_data(cache=False)
