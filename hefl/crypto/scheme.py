"""The scheme interface every way of sending an update implements, and the key ring a node holds.

Clients `encrypt` and `decrypt`; adders `load_into` a running total each update as it arrives (it is
deserialized, checked and added one ciphertext at a time: a node holds one total per round, never
every child's update) and `serialize` the total; a relay only `check`s a payload's shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import numpy as np

from hefl.crypto.frame import Payload


class Scheme(Protocol):
    """How one update of `size` float values becomes bytes on the wire and back."""

    name: str  # the experiment's `encryption.scheme`
    size: int  # values per update
    max_payload_bytes: int  # the most bytes one payload can have (exact for `none`)
    can_decrypt: bool  # False on switches and the aggregator: they hold no secret key
    precomputed: int  # parts of the last `encrypt` that used work `precompute` had done
    adding_s: float  # seconds this scheme spent adding payloads into totals (not loading them)

    def encrypt(self, values: np.ndarray) -> bytes:
        """`serialize(encrypt_parts(values))`."""
        ...

    def encrypt_parts(self, values: np.ndarray, rng: np.random.Generator | None = None) -> Any:
        """The update encoded and encrypted, in memory (`serialize` makes the bytes): a client
        times the two apart. `rng`: the stochastic rounding's stream (bfv), by default the
        scheme's own: a node hosting several clients passes each client's."""
        ...

    def precompute(self, stop: Callable[[], bool]) -> int:
        """Do ahead what the next `encrypt` can use (HE: encryptions of zero, which do not depend
        on the values), until done or `stop()`; return how many parts were made (0: nothing)."""
        ...

    def check(self, payload: Payload) -> None: ...

    def form(self, payload: Payload) -> str | None:
        """How a payload's ciphertexts travel (`full`, `seeded`, `seed_list`; None: plaintext or
        not a payload of this scheme), read cheaply from its first part for the message log."""
        ...

    def check_sum(self, payload: Payload, contributors: int) -> None:
        """What an adder can check of the values of a sum of `contributors` updates: plaintext
        ones are finite and within contributors x clip; ciphertexts cannot be looked into."""
        ...

    def load(self, payload: Payload) -> Any:
        """Every part of a payload, loaded and checked (a body still arriving is read as it is)."""
        ...

    def add_into(self, total: Any | None, loaded: Any) -> Any:
        """The running total with `loaded` added; the first call (total None) may return `loaded`
        itself as the total, so a loaded update must not be used again after it was added."""
        ...

    def load_into(self, total: Any | None, payload: Payload) -> Any:
        """`add_into(total, load(payload))` in one pass, holding at most one ciphertext of the
        payload at a time; a payload refused part way leaves `total` as it was."""
        ...

    def serialize(self, total: Any) -> bytes: ...

    def write(self, total: Any, out: BinaryIO) -> None:
        """`serialize` into a file a part at a time; `total` is not used again."""
        ...

    def verify(self, payload: Payload) -> None:
        """Load and check every part of a payload without keeping it (a forwarding switch)."""
        ...

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

    context: Any  # the library's own: a tenseal.Context, SealKeys, PaillierKeys
    private: bool
    key_id: str = ""  # clients: which key pair (all clients of an experiment must agree)
