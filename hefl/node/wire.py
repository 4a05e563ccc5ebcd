"""What crosses the wire: message kinds, the one table of HTTP paths, and the envelope headers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from hefl.errors import ProtocolError

BINARY = "application/octet-stream"
# a message body as it arrived: the HTTP layer reads into a bytearray (no second copy of a 24 MB
# update); everything that reads a body takes either
Body = bytes | bytearray
JSON = "application/json"
TEXT = "text/plain"
PREFIX = "X-Hefl-"
TOKEN_HEADER = "X-Hefl-Token"
_COUNT = re.compile(r"[0-9]{1,12}")  # ASCII digits only: str.isdigit() also takes '²'
_MASK = re.compile(r"[0-9a-f]{1,4096}")  # a client bit mask: up to 16,384 clients


class Kind(Enum):
    """Every request a node makes or answers. Round messages carry an envelope and are metered."""

    BEGIN = "begin"  # the aggregator starts round 0 down the tree (empty body)
    UPDATE = "update"  # a child's (summed) update, up the tree
    GLOBAL = "global"  # a round's summed update, down the tree
    METRICS = "metrics"  # a client's evaluation, to the aggregator
    FAIL = "fail"  # a node's failure report, to the aggregator
    HEALTH = "health"
    CONFIG = "config"
    START = "start"
    STATUS = "status"
    LOG = "log"
    END = "end"  # the controller: the experiment is over (it failed); retire the node
    FLUSH = "flush"  # a parent: a round's deadline passed; send up at once what you have
    PAGE = "page"  # the aggregator's live page (HTML); it polls STATUS

    @property
    def route(self) -> Route:
        return ROUTES[self]


@dataclass(frozen=True)
class Route:
    """How a kind travels: method, path, body type, the traffic it counts as (None: not metered)."""

    method: str
    path: str
    content_type: str = JSON
    direction: str | None = None  # "up", "down" or "control" for round messages
    strict: bool = True  # the request's Content-Type must be `content_type`

    def url_path(self, arg: str = "") -> str:
        """The path of one request; `arg` fills the path's one <argument>, if it has one."""
        return re.sub(r"<[a-z_]+>", lambda _: arg, self.path)


ROUTES: dict[Kind, Route] = {
    Kind.BEGIN: Route("POST", "/begin", BINARY, "down"),
    Kind.UPDATE: Route("POST", "/update", BINARY, "up"),
    Kind.GLOBAL: Route("POST", "/global", BINARY, "down"),
    Kind.METRICS: Route("POST", "/metrics", JSON, "control"),
    Kind.FAIL: Route("POST", "/fail", TEXT, "control", strict=False),  # a reason, as text
    Kind.HEALTH: Route("GET", "/health"),
    Kind.CONFIG: Route("POST", "/config"),
    Kind.START: Route("POST", "/start"),
    Kind.STATUS: Route("GET", "/status"),
    Kind.LOG: Route("GET", "/log/<experiment>"),
    Kind.END: Route("POST", "/end/<experiment>"),
    Kind.FLUSH: Route("POST", "/flush", BINARY, "down"),  # empty body
    Kind.PAGE: Route("GET", "/"),
}
OPEN = frozenset({Kind.HEALTH})  # answered without the credential
# read with the credential from a cookie too (a browser's page cannot set a header on a link); the
# page's address sets it from ?token= once. Never a request that changes anything.
COOKIE_READS = frozenset({Kind.PAGE, Kind.STATUS})
TOKEN_COOKIE = "hefl_token"
TOKEN_PARAM = "token"


def kind_at(path: str) -> Kind | None:
    """The round message kind served at a request path (None for control endpoints)."""
    for kind, route in ROUTES.items():
        if route.direction is not None and route.path == path:
            return kind
    return None


class Headers(Protocol):
    """A case-insensitive header lookup: a dict of str, or werkzeug's / requests' headers."""

    def get(self, key: str, /) -> str | None: ...


@dataclass(frozen=True)
class Envelope:
    """Metadata of one round message; the payload travels as the binary body."""

    experiment: str
    round: int
    sender: str
    samples: int = 0  # training samples behind the payload (summed by aggregating nodes)
    contributors: int = 0  # clients whose updates are added into the payload
    members: int = 0  # which clients (bit i: slice index i); 0: every client below the sender

    def headers(self) -> dict[str, str]:
        out = {
            f"{PREFIX}Experiment": self.experiment,
            f"{PREFIX}Round": str(self.round),
            f"{PREFIX}Sender": self.sender,
            f"{PREFIX}Samples": str(self.samples),
            f"{PREFIX}Contributors": str(self.contributors),
        }
        if self.members:
            out[f"{PREFIX}Clients"] = format(self.members, "x")
        return out

    @classmethod
    def from_headers(cls, headers: Headers) -> Envelope:
        """Parse the envelope headers; anything missing or malformed is a ProtocolError."""
        values: dict[str, str] = {}
        for name in ("Experiment", "Round", "Sender", "Samples", "Contributors"):
            value = headers.get(f"{PREFIX}{name}")
            if value is None:
                raise ProtocolError(f"missing header {PREFIX}{name}")
            values[name] = value
        numbers = {}
        for name in ("Round", "Samples", "Contributors"):
            if not _COUNT.fullmatch(values[name]):
                raise ProtocolError(
                    f"header {PREFIX}{name}: {values[name][:20]!r} is not a non-negative integer"
                )
            numbers[name] = int(values[name])
        members = headers.get(f"{PREFIX}Clients")
        if members is not None and not _MASK.fullmatch(members):
            raise ProtocolError(
                f"header {PREFIX}Clients: {members[:20]!r} is not a hexadecimal client mask"
            )
        return cls(
            values["Experiment"],
            numbers["Round"],
            values["Sender"],
            numbers["Samples"],
            numbers["Contributors"],
            int(members, 16) if members else 0,
        )


def check_scope(env: Envelope, experiment: str, rounds: int) -> None:
    """Refuse a message of another experiment, or of a round this experiment does not have."""
    if env.experiment != experiment:
        raise ProtocolError(
            f"experiment {env.experiment!r} is not the running experiment {experiment!r}"
        )
    if not 0 <= env.round < rounds:
        raise ProtocolError(f"round {env.round + 1} is outside 1..{rounds}")
