"""The HTTP layer: an app factory per role, and the WSGI entry that swaps apps when a node is
(re)configured.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import ClientDisconnected, HTTPException, RequestEntityTooLarge

from hefl.credential import read_key
from hefl.errors import HeflError, ProtocolError, Unauthorized
from hefl.node.body import Incoming, spool_dir
from hefl.node.host import Host
from hefl.node.nodes import Node
from hefl.node.wire import (
    COOKIE_READS,
    OPEN,
    PREFIX,
    TOKEN_COOKIE,
    TOKEN_HEADER,
    TOKEN_PARAM,
    Body,
    Envelope,
    Kind,
    kind_at,
)

log = logging.getLogger(__name__)
CONFIG_BODY = 16 << 20  # the largest body an unconfigured node reads (a config push)
UNCONFIGURED_BODY_S = 60.0  # how long an unconfigured node waits for a body (a config push)


class NodeServer:
    """WSGI entry of a node. A role change builds a fresh Flask app (Flask refuses
    register_blueprint after the first request), which the host swaps in under its lock."""

    def __init__(self, log_dir: Path, token: str = "", listen: str = "") -> None:
        """`listen`: host:port this process serves on; with it, a client that restarted rejoins
        its experiment from its own disk before the first request is taken."""
        self.host = Host(log_dir, token, listen)
        self._app = create_app(self, None)
        self.host.rejoin(swap=self._swap)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self._app(environ, start_response)

    @property
    def node(self) -> Node | None:
        return self.host.node

    @property
    def log_dir(self) -> Path:
        return self.host.log_dir

    def configure(self, payload: Any) -> dict[str, Any]:
        return self.host.configure(payload, swap=self._swap)

    def _swap(self, node: Node) -> None:
        self._app = create_app(self, node)


def create_app(server: NodeServer, node: Node | None) -> Flask:
    """An app with the common endpoints, plus the blueprint of `node`'s role when there is one."""
    from blueprints import aggregator, client, common, switch

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = node.max_body if node is not None else CONFIG_BODY
    app.extensions["hefl_server"] = server
    app.extensions["hefl_node"] = node
    app.register_blueprint(common.bp)
    if node is not None:
        app.register_blueprint(
            {"client": client.bp, "switch": switch.bp, "aggregator": aggregator.bp}[node.role]
        )
    app.before_request(_check_token)
    app.before_request(_meter_request)
    app.after_request(_meter_answer)
    app.teardown_request(_close_body)
    app.register_error_handler(HeflError, _on_error)
    app.register_error_handler(HTTPException, _on_http_error)
    return app


def current_node() -> Any:
    """The node serving this request (the blueprint of its role is registered, so it exists)."""
    return current_app.extensions["hefl_node"]


def has_credential() -> bool:
    """Whether this request carries the experiment's credential in its header (always true on a
    node without one), or is a read of the live page or /status (GET only) with the page's
    read-only key, from its cookie or its address's ?token=."""
    token = current_app.extensions["hefl_server"].host.token
    if not token or _same(request.headers.get(TOKEN_HEADER, ""), token):
        return True
    node = current_app.extensions["hefl_node"]
    if (
        node is None
        or request.method != "GET"
        or request.path not in {k.route.path for k in COOKIE_READS}
    ):
        return False
    key = read_key(token, node.experiment)  # this run's: an earlier run's key opens nothing
    if TOKEN_PARAM in request.args:
        return _same(request.args[TOKEN_PARAM], key)  # a wrong one is refused, cookie or not
    return _same(request.cookies.get(TOKEN_COOKIE, ""), key)


def _same(given: str, want: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), want.encode())


def _check_token() -> None:
    """Every endpoint but /health needs the experiment's credential when the node has one."""
    if request.path not in {kind.route.path for kind in OPEN} and not has_credential():
        raise Unauthorized(f"{request.method} {request.path}: missing or wrong {TOKEN_HEADER}")


STREAMED = frozenset({Kind.UPDATE, Kind.GLOBAL})  # bodies read part by part as the node asks


def _meter_request() -> None:
    """A round message's envelope is parsed here, before the node acts on it. An update or a
    global result is handed on unread (hefl.node.body.Incoming: the node reads it part by part,
    spooled to disk) and its bytes are counted when the request ends (`_meter_answer`); any other
    round message's body is read and counted here."""
    node = current_node()
    kind = kind_at(request.path) if request.url_rule is not None else None
    if node is None or kind is None or request.method != kind.route.method:
        return
    env = Envelope.from_headers(request.headers)
    g.message = (kind, env)
    if kind in STREAMED:
        limit = node.scheme.max_payload_bytes
        size = request.content_length
        if size is not None and size > limit:
            raise RequestEntityTooLarge()
        body = Incoming(_body_reader(), node.spool or spool_dir(server_log_dir()), limit)
        body.on_cancel = g.stall.cut
        body.on_done = functools.partial(_count_body, node, kind, env, body)
        g.body = body
    else:
        g.body = read_body()
        node.meter.inbound(kind, env, len(g.body), body=g.body)
    wanted = kind.route.content_type
    if kind.route.strict and request.mimetype != wanted:
        raise ProtocolError(f"Content-Type must be {wanted}, got {request.mimetype or 'none'!r}")


def _count_body(node: Node, kind: Kind, env: Envelope, body: Incoming) -> None:
    """A streamed body's bytes, counted once its end was read: before the node acts on it (a
    client's report of the round's bytes must hold its global result's)."""
    if not g.get("counted"):
        g.counted = True
        node.meter.inbound(kind, env, len(body), body=body, at=body.arrived)


def server_log_dir() -> Path:
    return Path(current_app.extensions["hefl_server"].log_dir)


STREAM_PIECE = 1 << 20  # the most a streamed body's read asks for: each must end in time


def _body_reader() -> Callable[[int], bytes]:
    """`read(n)` of this request's body for hefl.node.body.Incoming: up to n bytes, b"" only at its
    true end. A progress timeout: each read of up to 1 MiB must end within the node's
    `network.read_timeout_s` (a large body on a slow link takes as long as it needs while it
    keeps coming; one that stalls, or trickles below 1 MiB per that time, is cut: under gunicorn
    the socket is shut, which frees the request thread whatever the sender does). A body cut
    short, malformed (chunking) or stalled is a ProtocolError."""
    stream = request.environ["wsgi.input"]
    size = request.content_length
    watch = _Stall(request.environ.get("gunicorn.socket"), _body_timeout())
    g.stall = watch
    got = 0

    def read(n: int) -> bytes:
        nonlocal got
        want = min(n, STREAM_PIECE) if size is None else min(n, STREAM_PIECE, size - got)
        if want <= 0:
            return b""
        try:
            with watch:
                piece = stream.read(want)
        except (ParseException, ClientDisconnected, ValueError, OSError) as exc:
            if watch.fired:
                raise ProtocolError(watch.reason(got)) from None
            raise ProtocolError(
                f"body unreadable after {got} bytes: {type(exc).__name__}: {exc}"[:300]
            ) from None
        if not piece and watch.fired:
            raise ProtocolError(watch.reason(got))
        if not piece and size is not None:
            raise ProtocolError(f"body ended after {got} of its {size} bytes")
        got += len(piece)
        return bytes(piece)

    return read


class _Stall:
    """Shuts a socket for reading when one read (`with` block) has taken longer than `seconds`:
    a thread per body, started with its first read, looks every `seconds` / 8 (a read is not
    signalled: a body of 270 MB takes thousands of them); ended by `close`. Without a socket
    (werkzeug's test server), nothing happens."""

    def __init__(self, sock: Any, seconds: float) -> None:
        self.sock = sock
        self.seconds = seconds
        self.fired = False
        self._since: float | None = None  # when the read in progress began
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> None:
        self._since = time.monotonic()
        if self._thread is None and self.sock is not None:
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._since = None

    def _watch(self) -> None:
        while not self._closed.wait(self.seconds / 8):
            since = self._since
            if since is not None and time.monotonic() - since > self.seconds:
                self.fired = True
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RD)
                return

    def cut(self) -> None:
        """Stop the body now (its round closed): a blocked read returns at once."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RD)

    def reason(self, got: int) -> str:
        return (
            f"body stalled: no progress for {self.seconds:g}s (network.read_timeout_s) after "
            f"{got} bytes"
        )

    def close(self) -> None:
        self._closed.set()


def read_body(piece_size: int = 1 << 20) -> Body:
    """The request body, read in large pieces and appended to one buffer as they arrive (werkzeug's
    get_data reads 64 KiB pieces into a growing buffer, then copies it: a third of loopback speed
    for 24 MB); memory grows with the bytes that arrived, not with the length a sender declares,
    and the buffer is handed on as it is (a bytearray: no second copy). Refused with 413 above the
    app's limit (chunked bodies too, as soon as they pass it) and with a 400 if the sender stops
    short or takes longer than the node's `network.read_timeout_s` (under gunicorn: the socket is
    shut at that deadline, which frees the request thread whatever the sender does). Updates and
    global results are not read here (`_body_reader`)."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    size = request.content_length
    if size is not None and limit is not None and size > limit:
        raise RequestEntityTooLarge()
    stream = request.environ["wsgi.input"]
    timeout = _body_timeout()
    with _deadline(request.environ.get("gunicorn.socket"), timeout) as late:
        body = bytearray()
        while size is None or len(body) < size:
            want = piece_size if size is None else min(piece_size, size - len(body))
            try:
                piece = stream.read(want)
            except (ParseException, ClientDisconnected, ValueError) as exc:  # malformed chunking
                raise ProtocolError(
                    f"body unreadable after {len(body)} bytes: {type(exc).__name__}: {exc}"[:300]
                ) from None
            if not piece:
                if size is None:  # chunked: its end
                    break
                if late.is_set():
                    raise ProtocolError(
                        f"body did not arrive within {timeout:g}s (network.read_timeout_s): "
                        f"{len(body)} of its {size} bytes came"
                    )
                raise ProtocolError(f"body ended after {len(body)} of its {size} bytes")
            body += piece
            if limit is not None and len(body) > limit:  # chunked: no length said beforehand
                raise RequestEntityTooLarge()
    return body


def _body_timeout() -> float:
    node = current_app.extensions["hefl_node"]
    return float(node.cfg.network.read_timeout_s) if node is not None else UNCONFIGURED_BODY_S


@contextmanager
def _deadline(sock: Any, seconds: float) -> Iterator[threading.Event]:
    """Shut `sock` for reading after `seconds` unless the `with` ended first (a blocked read
    then returns at once); the event says whether it fired. Without a socket (werkzeug's test
    server), nothing happens."""
    fired = threading.Event()

    def shut() -> None:
        fired.set()
        try:
            sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    timer = threading.Timer(seconds, shut) if sock is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        yield fired
    finally:
        if timer is not None:
            timer.cancel()


def _meter_answer(response: Response) -> Response:
    """The answer to a round message crossed the wire too: count its body (a refusal's error line;
    an accepted message is answered 202 with no body), and a streamed request's body, as far as it
    was read."""
    message: tuple[Kind, Envelope] | None = g.pop("message", None)
    if message is None:
        return response
    sent = len(response.get_data()) if not response.is_streamed else 0
    body = g.get("body")
    if isinstance(body, Incoming) and not g.get("counted"):  # refused before its end was read
        if response.status_code >= 400:
            body.drain(_body_timeout())
        g.counted = True
        current_node().meter.inbound(*message, len(body), sent, body=body, at=body.arrived)
    elif sent:
        current_node().meter.inbound(*message, 0, sent, message=False)
    return response


def _close_body(exc: BaseException | None) -> None:
    """A streamed body's spool goes when its request ends (unless the node kept it)."""
    body = g.pop("body", None)
    if isinstance(body, Incoming):
        body.close()
    stall = g.pop("stall", None)
    if stall is not None:
        stall.close()


def _on_error(exc: HeflError) -> tuple[Response, int]:
    node = current_app.extensions["hefl_node"]
    who = node.id if node is not None else "unconfigured node"
    sender = request.headers.get(f"{PREFIX}Sender", request.remote_addr)
    log.warning("%s: refused %s %s from %s: %s", who, request.method, request.path, sender, exc)
    return jsonify(error=str(exc)), exc.status_code


def _on_http_error(exc: HTTPException) -> tuple[Response, int]:
    """Flask's own refusals (no endpoint for this role, body too large) as one JSON line too."""
    node = current_app.extensions["hefl_node"]
    role = node.role if node is not None else "unconfigured"
    code = exc.code or 500
    reason = (
        f"not an endpoint of this node (role: {role})"
        if code in (404, 405)
        else (exc.description or exc.name)
    )
    answer: dict[str, Any] = {"error": f"{request.method} {request.path}: {reason}"}
    if node is None:  # a peer that expects an experiment here can tell the node restarted
        answer["unconfigured"] = True
    return jsonify(answer), code
