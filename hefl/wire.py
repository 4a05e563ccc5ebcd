"""The message envelope: (experiment, round, sender, samples, contributors) <-> HTTP headers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from hefl.errors import ProtocolError

BINARY = "application/octet-stream"
PREFIX = "X-Hefl-"
TOKEN_HEADER = "X-Hefl-Token"
_COUNT = re.compile(r"[0-9]{1,12}")  # ASCII digits only: str.isdigit() also takes '²'


class Headers(Protocol):
    """A case-insensitive header lookup: a dict of str, or werkzeug's / requests' headers."""

    def get(self, key: str, /) -> str | None: ...


@dataclass(frozen=True)
class Envelope:
    """Metadata of one update or global result; the payload travels as the binary body."""

    experiment: str
    round: int
    sender: str
    samples: int = 0  # training samples behind the payload (summed by aggregating nodes)
    contributors: int = 0  # clients whose updates are added into the payload

    @property
    def key(self) -> tuple[str, int, str]:
        """What makes a message unique: a second one with the same key is a duplicate."""
        return (self.experiment, self.round, self.sender)

    def headers(self) -> dict[str, str]:
        return {
            f"{PREFIX}Experiment": self.experiment,
            f"{PREFIX}Round": str(self.round),
            f"{PREFIX}Sender": self.sender,
            f"{PREFIX}Samples": str(self.samples),
            f"{PREFIX}Contributors": str(self.contributors),
        }

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
                raise ProtocolError(f"header {PREFIX}{name}: {values[name][:20]!r} is not a non-negative integer")
            numbers[name] = int(values[name])
        return cls(values["Experiment"], numbers["Round"], values["Sender"], numbers["Samples"], numbers["Contributors"])


def check_scope(env: Envelope, experiment: str, rounds: int) -> None:
    """Refuse a message of another experiment, or of a round this experiment does not have."""
    if env.experiment != experiment:
        raise ProtocolError(f"experiment {env.experiment!r} is not the running experiment {experiment!r}")
    if not 0 <= env.round < rounds:
        raise ProtocolError(f"round {env.round} is outside 0..{rounds - 1}")


def round_of(headers: Headers) -> int | None:
    """The round a request belongs to, for byte accounting; None for control-plane requests."""
    value = headers.get(f"{PREFIX}Round") or ""
    return int(value) if _COUNT.fullmatch(value) else None
