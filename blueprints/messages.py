"""Round message views shared by the role blueprints: one call on the node each, then 202."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, g

from blueprints import current_node
from hefl.node.wire import Body, Envelope, Kind


def add_route(bp: Blueprint, kind: Kind, view: Callable[..., Any]) -> None:
    """Serve `kind` at its path from the wire table."""
    bp.add_url_rule(
        kind.route.path, view_func=view, methods=[kind.route.method], endpoint=kind.value
    )


def add_routes(bp: Blueprint, views: dict[Kind, Callable[..., Any]]) -> None:
    """Serve each kind at its path from the wire table, with its view."""
    for kind, view in views.items():
        add_route(bp, kind, view)


def message() -> tuple[Envelope, Body]:
    """Envelope and body of this request's round message (read, parsed and counted by the meter
    hook)."""
    _, env = g.message
    body: Body = g.body
    return env, body


def accepted() -> tuple[Response, int]:
    """202 with no body: what an accepted message costs on the wire is its request alone."""
    return Response(status=202), 202


def update() -> tuple[Response, int]:
    current_node().on_update(*message())
    return accepted()


def begin() -> tuple[Response, int]:
    current_node().on_begin(*message())
    return accepted()


def global_() -> tuple[Response, int]:
    current_node().on_global(*message())
    return accepted()


def flush() -> tuple[Response, int]:
    """A round's deadline passed: answered once this switch has sent up what it had."""
    current_node().on_flush(*message())
    return accepted()
