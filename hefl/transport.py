"""The one HTTP client every outbound call goes through: timeouts, bounded retries, byte counting."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import requests

from hefl.errors import PeerUnreachable, ProtocolError
from hefl.wire import BINARY, TOKEN_HEADER

log = logging.getLogger(__name__)

Meter = Callable[[int, int, int], None]  # (round, bytes sent, bytes received)


@dataclass(frozen=True)
class Timeouts:
    """Seconds to open a connection and to wait for an answer; never None (a call must not hang)."""

    connect: float = 3.0
    read: float = 60.0
    retries: int = 3
    backoff: float = 0.2


class Transport:
    """POSTs and GETs to peers by node id; counts the HTTP body bytes of every attempt it makes."""

    def __init__(self, endpoints: Mapping[str, str], timeouts: Timeouts, token: str = "",
                 meter: Meter | None = None) -> None:
        self.endpoints = dict(endpoints)
        self.timeouts = timeouts
        self.meter = meter
        self.session = requests.Session()
        if token:
            self.session.headers[TOKEN_HEADER] = token

    def url(self, peer: str, path: str) -> str:
        try:
            return self.endpoints[peer] + path
        except KeyError:
            raise PeerUnreachable(f"{peer!r} is not a node of this experiment") from None

    def post(self, peer: str, path: str, body: bytes, headers: Mapping[str, str] | None = None,
             round_: int | None = None, content_type: str = BINARY) -> requests.Response:
        """POST `body`; a 409 (already have it) counts as delivered, other 4xx raise ProtocolError."""
        hdrs = {"Content-Type": content_type, **(headers or {})}
        return self._call("POST", peer, path, body, hdrs, round_)

    def get(self, peer: str, path: str, round_: int | None = None) -> requests.Response:
        return self._call("GET", peer, path, b"", {}, round_)

    def _call(self, method: str, peer: str, path: str, body: bytes, headers: Mapping[str, str],
              round_: int | None) -> requests.Response:
        url = self.url(peer, path)
        attempts = self.timeouts.retries + 1
        reason = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.timeouts.backoff * 2 ** (attempt - 1))
            try:
                resp = self.session.request(method, url, data=body or None, headers=headers,
                                            timeout=(self.timeouts.connect, self.timeouts.read))
            except requests.ReadTimeout as exc:  # the body went out; no answer came back
                self._count(round_, len(body), 0)
                reason = f"no answer within {self.timeouts.read:g}s ({type(exc).__name__})"
                continue
            except requests.RequestException as exc:  # refused, reset, bad URL, broken chunking, ...
                reason = _short(exc)
                continue
            self._count(round_, len(body), len(resp.content))
            if resp.status_code < 400 or resp.status_code == 409:
                return resp
            if resp.status_code < 500:
                raise ProtocolError(f"{peer} refused {method} {path}: {resp.status_code} {_error_text(resp)}")
            reason = f"{resp.status_code} {_error_text(resp)}"
        raise PeerUnreachable(f"cannot reach {peer} ({url}) after {attempts} attempts: {reason}")

    def _count(self, round_: int | None, sent: int, received: int) -> None:
        if self.meter is not None and round_ is not None:
            self.meter(round_, sent, received)

    def close(self) -> None:
        self.session.close()


def _error_text(resp: requests.Response) -> str:
    try:
        return str(resp.json().get("error", resp.text))[:300]
    except ValueError:
        return resp.text[:300]


def _short(exc: Exception) -> str:
    """The innermost reason of a requests connection error, on one line."""
    text = str(exc)
    for marker in ("Connection refused", "timed out", "Name or service not known", "No route to host",
                   "Connection reset"):
        if marker in text:
            return marker.lower()
    return text.splitlines()[0][:200] if text else type(exc).__name__
