"""Aggregator endpoints: its children's updates, nodes' metrics and failures, start and status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, redirect, request

from blueprints import current_node
from blueprints.messages import accepted, add_route, add_routes, message, update
from hefl.node.wire import TOKEN_COOKIE, TOKEN_PARAM, Kind

bp = Blueprint("aggregator", __name__)
add_route(bp, Kind.UPDATE, update)


def metrics() -> Any:
    current_node().on_metrics(*message())
    return accepted()


def fail() -> Any:
    env, body = message()
    current_node().on_fail(env, body.decode("utf-8", errors="replace"))
    return accepted()


def start() -> Any:
    current_node().begin_experiment()
    return jsonify(current_node().status()), 202


def status() -> Any:
    return jsonify(current_node().status())


PAGE = (Path(__file__).parent / "page.html").read_bytes()


def page() -> Any:
    """The live page. Opened as /?token=<read-only key> (checked before this runs): the key goes
    into an HttpOnly cookie (which only this page and /status take) and the browser is sent on to
    / without it in the address."""
    if request.args.get(TOKEN_PARAM):
        resp = redirect(Kind.PAGE.route.path, code=303)
        resp.set_cookie(
            TOKEN_COOKIE,
            request.args[TOKEN_PARAM],
            httponly=True,
            samesite="Strict",
            path=Kind.PAGE.route.path,
        )
        return resp
    resp = Response(PAGE, mimetype="text/html")
    resp.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'"
    )
    resp.headers["Cache-Control"] = "no-store"
    return resp


add_routes(
    bp,
    {
        Kind.METRICS: metrics,
        Kind.FAIL: fail,
        Kind.START: start,
        Kind.STATUS: status,
        Kind.PAGE: page,
    },
)
