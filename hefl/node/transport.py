"""The one HTTP client all outbound calls go through (timeouts, retries), and the byte counter."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

import requests

from hefl.errors import PeerRefused, PeerRestarted, PeerUnreachable
from hefl.node.body import FileBody, Outgoing, PartStream
from hefl.node.wire import TOKEN_HEADER, Body, Envelope, Kind

if TYPE_CHECKING:
    from hefl.config import NetworkConfig
    from hefl.node.runlog import RunLog

STRANGER = "?"  # the link of a message whose sender is not a node of the experiment


@dataclass(frozen=True)
class Timeouts:
    """Seconds to open a connection and to wait for an answer (never None: a call must not hang),
    and the retry policy: `retries` more attempts, `backoff` x 2^k seconds apart."""

    connect: float = 3.0
    read: float = 60.0
    retries: int = 3
    backoff: float = 0.2
    # False: a peer that took the request and did not answer in time is not asked again (a probe
    # of a hung node must not wait twice)
    retry_silent: bool = True

    @classmethod
    def of(cls, net: NetworkConfig) -> Timeouts:
        """The experiment's timeouts: every node, the controller and test.py use these."""
        return cls(net.connect_timeout_s, net.read_timeout_s, net.retries)

    def once(self) -> Timeouts:
        """The same timeouts without retries: for a poll that asks again anyway."""
        return replace(self, retries=0)


class TrafficMeter:
    """The body bytes of every round message of one node, by round, direction and peer.

    Fed where bytes cross the wire: by the transport for each attempt of a request this node makes,
    and by the HTTP layer's two hooks for a request it answers (the request body before the node
    acts on it, the answer's body after). Messages of other experiments or rounds make no records.
    """

    def __init__(
        self,
        runlog: RunLog,
        experiment: str,
        rounds: int,
        peers: Collection[str],
        hops: Mapping[str, str] | None = None,
    ) -> None:
        self.runlog = runlog
        self.experiment = experiment
        self.rounds = rounds
        self.peers = frozenset(peers)
        # update sender -> the child it arrives through (topology.first_hops)
        self.hops = dict(hops or {})
        # the node's scheme's `form` (set once it has one): updates and results log their form
        self.form_of: Callable[[Any], str | None] | None = None

    def form(self, kind: Kind, body: object | None) -> str | None:
        if body is None or self.form_of is None or kind not in (Kind.UPDATE, Kind.GLOBAL):
            return None
        return self.form_of(body)

    def counts(self, env: Envelope) -> bool:
        return env.experiment == self.experiment and 0 <= env.round < self.rounds

    def outbound(
        self,
        kind: Kind,
        peer: str,
        env: Envelope,
        sent: int,
        received: int,
        at: float,
        body: object | None = None,
    ) -> None:
        """One attempt of a request this node made to `peer`, begun at `at` (monotonic)."""
        if self.counts(env):
            form = self.form(kind, body)
            direction = _direction(kind)
            self.runlog.add_bytes(
                env.round, direction, peer, sent, received, True, True, kind.value, at, form
            )

    def inbound(
        self,
        kind: Kind,
        env: Envelope,
        received: int,
        sent: int = 0,
        message: bool = True,
        body: object | None = None,
        at: float | None = None,
    ) -> None:
        """A request this node answers (`body`: the request's, for its form); `message` False
        adds the answer's body to one already counted; `at`: when its body had arrived
        (monotonic; default now)."""
        if self.counts(env):
            if kind is Kind.UPDATE:
                peer = self.hops.get(env.sender, STRANGER)
            else:
                peer = env.sender if env.sender in self.peers else STRANGER
            self.runlog.add_bytes(
                env.round,
                _direction(kind),
                peer,
                sent,
                received,
                False,
                message,
                kind.value,
                at,
                form=self.form(kind, body),
            )


def _direction(kind: Kind) -> str:
    direction = kind.route.direction
    if direction is None:
        raise ValueError(f"{kind.value} is not a round message")
    return direction


class Transport:
    """Requests to peers by node id and message kind; the paths come from the wire table."""

    def __init__(
        self,
        endpoints: Mapping[str, str],
        timeouts: Timeouts,
        token: str = "",
        meter: TrafficMeter | None = None,
    ) -> None:
        self.endpoints = dict(endpoints)
        self.timeouts = timeouts
        self.meter = meter
        self.session = requests.Session()
        if token:
            self.session.headers[TOKEN_HEADER] = token

    def send(self, peer: str, kind: Kind, env: Envelope, body: Outgoing = b"") -> requests.Response:
        """A round message, metered. A 409 (the peer has it already) counts as delivered; another
        4xx raises ProtocolError; no answer after the retries raises PeerUnreachable."""
        if kind.route.direction is None:
            raise ValueError(f"{kind.value} is not a round message: use call()")
        return self._call(peer, kind, body, env, "", self.timeouts)

    def call(
        self,
        peer: str,
        kind: Kind,
        body: Body = b"",
        arg: str = "",
        timeouts: Timeouts | None = None,
    ) -> requests.Response:
        """A control request (health, config, start, status, log); not metered. `timeouts`: this
        call's own (a poll that asks again anyway, a brief health probe), else the transport's."""
        if kind.route.direction is not None:
            raise ValueError(f"{kind.value} is a round message: use send()")
        return self._call(peer, kind, body, None, arg, timeouts or self.timeouts)

    def url(self, peer: str, kind: Kind, arg: str = "") -> str:
        try:
            return self.endpoints[peer] + kind.route.url_path(arg)
        except KeyError:
            raise PeerUnreachable(f"{peer!r} is not a node of this experiment") from None

    def _call(
        self,
        peer: str,
        kind: Kind,
        body: Outgoing,
        env: Envelope | None,
        arg: str,
        timeouts: Timeouts,
    ) -> requests.Response:
        route = kind.route
        url = self.url(peer, kind, arg)
        headers = {"Content-Type": route.content_type, **(env.headers() if env else {})}
        attempts = timeouts.retries + 1
        reason = ""
        silent = False  # the last attempt was taken in but got no answer (a hung peer)
        made = answered = 0  # attempts made; the 5xx status of the last, if it got one
        for attempt in range(attempts):
            made, answered = attempt + 1, 0
            if attempt:
                time.sleep(timeouts.backoff * 2 ** (attempt - 1))
            began = time.monotonic()
            try:
                resp = self.session.request(
                    route.method,
                    url,
                    # a reader of memoryviews (requests' stubs know only bytes and str)
                    data=_request_data(body),
                    headers=headers,
                    timeout=(timeouts.connect, timeouts.read),
                )
            except requests.ReadTimeout as exc:  # the body went out; no answer came back
                self._count(kind, peer, env, body, 0, began)
                reason = f"no answer within {timeouts.read:g}s ({type(exc).__name__})"
                silent = True
                if not timeouts.retry_silent:
                    break
                continue
            # refused, reset, bad URL, broken chunking, ...
            except requests.RequestException as exc:
                reason = _short(exc)
                silent = False
                continue
            self._count(kind, peer, env, body, len(resp.content), began)
            if resp.status_code < 400 or resp.status_code == 409:
                return resp
            where = f"{route.method} {route.url_path(arg)}"
            if resp.status_code in (404, 405) and _unconfigured(resp):
                raise PeerRestarted(peer, where, resp.status_code)
            if resp.status_code < 500:
                raise PeerRefused(
                    f"{peer} refused {where}: {resp.status_code} {_error_text(resp)}",
                    resp.status_code,
                )
            reason = f"{resp.status_code} {_error_text(resp)}"
            answered = resp.status_code
        raise PeerUnreachable(
            f"cannot reach {peer} ({url}) after {made} attempt{'s' * (made > 1)}: {reason}",
            silent,
            peer,
            answered,
        )

    def _count(
        self, kind: Kind, peer: str, env: Envelope | None, body: Outgoing, received: int, at: float
    ) -> None:
        if self.meter is not None and env is not None:
            if isinstance(body, PartStream) and body.ended_at is not None:
                # a body made as it went (encrypted while sent): it went when its last part did
                at = body.ended_at
            self.meter.outbound(kind, peer, env, len(body), received, at, body)

    def close(self) -> None:
        self.session.close()


def _request_data(body: Outgoing) -> Any:
    """What requests sends for a body: a file in blocks with its length, a stream of parts chunked
    (made anew for each attempt), bytes in blocks of a view."""
    if isinstance(body, FileBody):
        return body.sender()
    if isinstance(body, PartStream):
        return body.pieces()
    # a reader of memoryviews (requests' stubs know only bytes and str)
    return cast(Any, _BodyReader(body)) if body else None


class _BodyReader:
    """A body handed to requests as a stream of known length, so that it goes out in blocks.
    urllib3 sends a bytes body with one sendall() under the *connect* timeout, which bounds the
    whole upload: 24 MB over a 100 Mbit/s link shared by two senders takes about 4 s and failed
    at the default 3 s. In blocks, each sendall() gets that timeout afresh: a stalled peer still
    fails, a slow link does not. Content-Length stays (requests takes it from len()). Blocks are
    views of the body, 256 KiB at least (urllib3 asks for 16 KiB): no copy, few system calls, and
    a block still fits the 3 s timeout down to about 1 Mbit/s."""

    BLOCK = 1 << 18

    def __init__(self, body: Body) -> None:
        self._view = memoryview(body).cast("B")
        self._at = 0

    def __len__(self) -> int:
        return len(self._view) - self._at

    def __iter__(self) -> Iterator[memoryview]:
        while block := self.read():
            yield block

    def read(self, size: int = -1) -> memoryview:
        end = min(self._at + max(size, self.BLOCK), len(self._view))
        block = self._view[self._at : end]
        self._at = end
        return block


def _unconfigured(resp: requests.Response) -> bool:
    """Whether an answer comes from a node with no experiment (blueprints says so in its JSON)."""
    try:
        return resp.json().get("unconfigured") is True
    except (ValueError, AttributeError):
        return False


def _error_text(resp: requests.Response) -> str:
    try:
        return str(resp.json().get("error", resp.text))[:300]
    except (ValueError, AttributeError):
        return resp.text[:300]


def _short(exc: Exception) -> str:
    """The innermost reason of a requests connection error, on one line."""
    text = str(exc)
    for marker in (
        "Connection refused",
        "timed out",
        "Name or service not known",
        "No route to host",
        "Connection reset",
    ):
        if marker in text:
            return marker.lower()
    return text.splitlines()[0][:200] if text else type(exc).__name__
