"""Aggregator endpoints: its children's updates, nodes' metrics and failures, start and status."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from blueprints import current_node
from blueprints.messages import accepted, add_route, message, update
from hefl.wire import Kind

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


for _kind, _view in (
    (Kind.METRICS, metrics),
    (Kind.FAIL, fail),
    (Kind.START, start),
    (Kind.STATUS, status),
):
    add_route(bp, _kind, _view)
