"""Aggregator endpoints: updates from its children, metrics and failures from nodes, start and status."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from blueprints import current_node, messages
from hefl.wire import Envelope

bp = Blueprint("aggregator", __name__)
bp.add_url_rule("/update", view_func=messages.update, methods=["POST"])


@bp.post("/metrics")
def metrics() -> Any:
    env, body = messages.read_message(messages.JSON)
    current_node().on_metrics(env, body)
    return messages.accepted()


@bp.post("/fail")
def fail() -> Any:
    current_node().on_fail(Envelope.from_headers(request.headers), request.get_data(as_text=True))
    return messages.accepted()


@bp.post("/start")
def start() -> Any:
    current_node().begin_experiment()
    return jsonify(current_node().status()), 202


@bp.get("/status")
def status() -> Any:
    return jsonify(current_node().status())
