"""The node's gunicorn worker: gthread, except that a request reaches a thread only once its head
(request line and headers) has arrived whole.

gunicorn's threaded worker hands a connection to a request thread as soon as its first byte
arrives; the thread then blocks until the headers are complete, for as long as the sender takes.
Eight connections that send a byte every two seconds thus held every thread of a node, and the
experiment stalled. Here the worker's main loop reads heads itself, without blocking, from as
many connections as it has, and drops a connection whose head is not complete within
`HEAD_TIMEOUT_S` (or grows past `MAX_HEAD_BYTES`); above `MAX_HEADING` connections sending heads at
once, the oldest one is dropped. A peer sends its head at once and is never among them for long.

What a thread then reads is bounded too: a request without the credential is refused from its
head and its body is never read: the connection is shut after the answer instead of being drained
(gthread drains an unread body before keeping a connection alive, 1 KiB at a time, for as long as
the sender trickles it); a body a node does read must arrive within its `network.read_timeout_s`
(`blueprints.read_body`).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections import deque
from functools import partial
from typing import Any

from gunicorn.http.body import ChunkedReader, LengthReader
from gunicorn.workers.gthread import ThreadWorker

HEAD_TIMEOUT_S = 10.0  # from the head's first byte (or a kept-alive connection's next) to its end
MAX_HEAD_BYTES = 128 << 10  # a node's own requests carry well under 2 KiB of head
MAX_HEADING = 256  # connections whose heads are still arriving; above it the oldest is dropped
HEAD_END = b"\r\n\r\n"


class NodeWorker(ThreadWorker):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.heading: deque[Any] = deque()  # connections whose head is arriving, oldest first
        self.dropped_heads = 0

    def enqueue_req(self, conn: Any) -> None:
        """Every way to a request thread passes here (a new connection, a kept-alive one that
        became readable, bytes read ahead): the head is read first, on the main loop."""
        if getattr(conn, "head_ready", False):
            conn.head_ready = False
            super().enqueue_req(conn)
            return
        ahead = b""
        if conn.parser is not None:  # bytes a finished request read ahead belong to the next head
            ahead = conn.parser.unreader.buf.getvalue()
            conn.parser.unreader.buf.seek(0)
            conn.parser.unreader.buf.truncate()
        conn.head = bytearray(ahead)
        conn.timeout = time.monotonic() + HEAD_TIMEOUT_S
        if HEAD_END in conn.head:
            self._head_done(conn)
            return
        while len(self.heading) >= MAX_HEADING:
            self._drop(self.heading[0])
        conn.sock.setblocking(False)
        self.heading.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_head_readable, conn))

    def on_head_readable(self, conn: Any, sock: Any) -> None:
        try:
            data = sock.recv(64 << 10)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the sender closed
            self._drop(conn, counted=False)
            return
        conn.head += data
        if HEAD_END in conn.head:
            self._forget(conn)
            self._head_done(conn)
        elif len(conn.head) > MAX_HEAD_BYTES:
            self._drop(conn)

    def _head_done(self, conn: Any) -> None:
        """The head is whole: give it to the parser as if read from the socket, then a thread."""
        conn.init()  # blocking socket and parser for a new connection; nothing for a kept one
        conn.sock.setblocking(True)
        conn.parser.unreader.unread(bytes(conn.head))
        conn.head = bytearray()
        conn.data_ready = True  # gthread would otherwise wait for more bytes first
        conn.head_ready = True
        self.enqueue_req(conn)

    def _forget(self, conn: Any) -> None:
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        try:
            self.heading.remove(conn)
        except ValueError:
            pass

    def _drop(self, conn: Any, counted: bool = True) -> None:
        self._forget(conn)
        self.nr_conns -= 1
        self.dropped_heads += counted
        conn.close()

    def _keepalive_after(self, conn: Any, keepalive: bool) -> bool:
        """Keep a connection only when its request's body was read to the end; otherwise shut it
        at once (in this request thread: the main loop's graceful close would then find nothing
        to wait for)."""
        if _body_unread(conn):
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
            return False
        return bool(super()._keepalive_after(conn, keepalive))

    def _cap_keepalive(self, deadline: float) -> None:
        """When the node stops, its idle kept-alive connections close at once, not after gthread's
        2 s linger for a request that might still come on one: a peer's next request opens a new
        connection (and finds the node gone), and a run's nodes stop in a fraction of a second.
        Requests in progress still get `graceful_timeout` to finish."""
        super()._cap_keepalive(min(deadline, time.monotonic()))

    def murder_pending(self) -> None:
        """gthread's own timeouts, then heads past their time (every head once the worker
        stops)."""
        super().murder_pending()
        now = time.monotonic()
        while self.heading and (self.heading[0].timeout <= now or not self.alive):
            self._drop(self.heading[0])


def _body_unread(conn: Any) -> bool:
    """Whether the request just answered on `conn` left body bytes unread (a read-to-close body
    counts as unread; a chunked one, the way a client streams its update, until its last chunk)."""
    mesg = getattr(conn.parser, "mesg", None)
    reader = getattr(getattr(mesg, "body", None), "reader", None)
    if reader is None:
        return False
    if isinstance(reader, LengthReader):
        return bool(reader.length > 0)
    if isinstance(reader, ChunkedReader):
        return reader.parser is not None or reader.buf.tell() > 0
    return True
