"""The scheme interface every way of sending an update implements, and the key ring a node holds.

Clients `encrypt` and `decrypt`; adders `load` (and so validate) what they receive, `add_into` a
running total as each update arrives (so a node holds one total per round, not every child's update)
and `serialize` the total; a relay only `check`s a payload's shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class Scheme(Protocol):
    """How one update of `size` float values becomes bytes on the wire and back."""

    name: str  # the experiment's `encryption.scheme`
    size: int  # values per update
    max_payload_bytes: int  # the most bytes one payload can have (exact for `none`)
    can_decrypt: bool  # False on switches and the aggregator: they hold no secret key

    def encrypt(self, values: np.ndarray) -> bytes: ...

    def check(self, payload: bytes) -> None: ...

    def load(self, payload: bytes) -> Any: ...

    def add_into(self, total: Any | None, loaded: Any) -> Any:
        """The running total with `loaded` added; the first call (total None) may return `loaded`
        itself as the total, so a loaded update must not be used again after it was added."""
        ...

    def serialize(self, total: Any) -> bytes: ...

    def decrypt(self, loaded: Any, contributors: int) -> np.ndarray: ...

    def close(self) -> None: ...


def add_all(scheme: Scheme, loaded: Sequence[Any]) -> bytes:
    """Add loaded payloads (in this order) into one payload."""
    total = None
    for item in loaded:
        total = scheme.add_into(total, item)
    return scheme.serialize(total)


@dataclass(frozen=True)
class KeyRing:
    """The HE library's context one node works with; `private` (it holds the secret key) only on
    clients."""

    context: Any  # the library's own context object (a tenseal.Context today)
    private: bool
    key_id: str = ""  # clients: which key pair (all clients of an experiment must agree)
