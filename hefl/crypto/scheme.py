"""The scheme interface every way of sending an update implements, and the key ring a node holds.

Clients `encrypt` and `decrypt`; adders `load` (and so validate) what they receive and `add` loaded
payloads into one new payload; a relay only `check`s a payload's shape.
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

    def add(self, loaded: Sequence[Any]) -> bytes: ...

    def decrypt(self, loaded: Any, contributors: int) -> np.ndarray: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class KeyRing:
    """The HE library's context one node works with; `private` (it holds the secret key) only on
    clients."""

    context: Any  # the library's own context object (a tenseal.Context today)
    private: bool
    key_id: str = ""  # clients: which key pair (all clients of an experiment must agree)
