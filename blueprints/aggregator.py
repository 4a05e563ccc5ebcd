"""Aggregator endpoints: updates from its children, metrics and failures from nodes, start and status."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from blueprints import current_node
from blueprints.messages import binary_message
from hefl.errors import ProtocolError
from hefl.wire import Envelope

bp = Blueprint("aggregator", __name__)


@bp.post("/update")
def update() -> Any:
    env, payload = binary_message()
    current_node().on_update(env, payload)
    return jsonify(accepted=True), 202


@bp.post("/metrics")
def metrics() -> Any:
    if request.mimetype != "application/json":
        raise ProtocolError("metrics: Content-Type must be application/json")
    current_node().on_metrics(Envelope.from_headers(request.headers), request.get_data())
    return jsonify(accepted=True), 202


@bp.post("/fail")
def fail() -> Any:
    current_node().on_fail(request.headers.get("X-Hefl-Sender", ""), request.get_data(as_text=True))
    return jsonify(accepted=True), 202


@bp.post("/start")
def start() -> Any:
    current_node().start()
    return jsonify(current_node().status()), 202


@bp.get("/status")
def status() -> Any:
    return jsonify(current_node().status())
