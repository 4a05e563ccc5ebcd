"""The HTTP layer: an app factory per role, and the WSGI entry that swaps apps when a node is (re)configured."""

from __future__ import annotations

import hmac
import logging
import threading
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from hefl.errors import ConfigError, DuplicateMessage, HeflError, Unauthorized
from hefl.nodes import Node, NodeContext, build_node
from hefl.push import parse_push
from hefl.wire import TOKEN_HEADER

log = logging.getLogger(__name__)
CONFIG_BODY = 16 << 20  # the largest body an unconfigured node reads (a config push)


class NodeServer:
    """WSGI entry of a node. A role change builds a fresh Flask app (Flask refuses
    register_blueprint after the first request) and swaps it in under a lock."""

    def __init__(self, log_dir: Path, token: str = "") -> None:
        self.log_dir = log_dir
        self.token = token
        self.node: Node | None = None
        self._lock = threading.Lock()
        self._app = create_app(self, None)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self._app(environ, start_response)

    def configure(self, payload: Any) -> dict[str, Any]:
        """Take a pushed config: build the role's node and app first, then retire the old ones.
        A push that fails leaves the node as it was."""
        push = parse_push(payload)
        ctx = NodeContext(push.cfg, push.node, push.experiment, push.endpoints, self.log_dir, self.token, push.context)
        with self._lock:
            current = self.node
            if current is not None and (current.ctx.experiment, current.id) == (ctx.experiment, ctx.node_id):
                raise DuplicateMessage(f"already configured as {ctx.node_id} for experiment {ctx.experiment!r}")
            try:
                node = build_node(ctx)
            except HeflError:
                raise
            except Exception as exc:  # e.g. torch cannot use the device: still the push's fault, one line
                raise ConfigError(f"push: {ctx.node_id} cannot be set up: {type(exc).__name__}: {exc}") from exc
            self._app = create_app(self, node)
            self.node = node
            node.start()
        if current is not None:
            current.close()
        log.info("%s configured as %s for experiment %s", ctx.node_id, node.role, ctx.experiment)
        return node.status()

    def health(self) -> dict[str, Any]:
        node = self.node
        if node is None:
            return {"state": "idle", "role": None, "experiment": None, "round": None}
        return node.status()


def create_app(server: NodeServer, node: Node | None) -> Flask:
    """An app with the common endpoints, plus the blueprint of `node`'s role when there is one."""
    from blueprints import aggregator, client, common, switch

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = node.max_body if node is not None else CONFIG_BODY
    app.extensions["hefl_server"] = server
    app.extensions["hefl_node"] = node
    app.register_blueprint(common.bp)
    if node is not None:
        app.register_blueprint({"client": client.bp, "switch": switch.bp, "aggregator": aggregator.bp}[node.role])
    app.before_request(_check_token)
    app.after_request(_count_refusal)
    app.register_error_handler(HeflError, _on_error)
    app.register_error_handler(HTTPException, _on_http_error)
    return app


def current_node() -> Any:
    """The node serving this request (the blueprint of its role is registered, so it exists)."""
    return current_app.extensions["hefl_node"]


def _check_token() -> None:
    """Every endpoint but /health needs the experiment's credential when the node has one."""
    token = current_app.extensions["hefl_server"].token
    if token and request.path != "/health":
        given = request.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise Unauthorized(f"{request.method} {request.path}: missing or wrong {TOKEN_HEADER}")


def _count_refusal(response: Response) -> Response:
    """A refused round message still crossed the wire: count the error body this node sends back.
    (Its request body was counted when it was read; an accepted message's answer has no body.)"""
    metered = g.pop("metered", None)
    if metered is not None and response.status_code >= 400 and not response.is_streamed:
        current_node().meter_in(metered, 0, len(response.get_data()), message=False)
    return response


def _on_error(exc: HeflError) -> tuple[Response, int]:
    node = current_app.extensions["hefl_node"]
    who = node.id if node is not None else "unconfigured node"
    sender = request.headers.get("X-Hefl-Sender", request.remote_addr)
    log.warning("%s: refused %s %s from %s: %s", who, request.method, request.path, sender, exc)
    return jsonify(error=str(exc)), exc.status_code


def _on_http_error(exc: HTTPException) -> tuple[Response, int]:
    """Flask's own refusals (no such endpoint for this role, body too large) as one JSON line too."""
    node = current_app.extensions["hefl_node"]
    role = node.role if node is not None else "unconfigured"
    code = exc.code or 500
    reason = f"not an endpoint of this node (role: {role})" if code in (404, 405) else (exc.description or exc.name)
    return jsonify(error=f"{request.method} {request.path}: {reason}"), code
