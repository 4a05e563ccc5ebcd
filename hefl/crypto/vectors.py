"""What CKKS and BFV share: an update as ceil(size / slots) ciphertext vectors in one framed body."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from hefl.config import EncryptionConfig
from hefl.crypto.frame import frame, unframe
from hefl.crypto.keys import KeyRing
from hefl.crypto.params import coeffs, slots
from hefl.errors import ProtocolError


class VectorScheme:
    """Chunked at the slot count (one call per ciphertext: no TenSEAL 'does not fit' warning)."""

    name = "vector"

    def __init__(self, enc: EncryptionConfig, size: int, keys: KeyRing, loader: Callable[[Any, bytes], Any]) -> None:
        self.enc = enc
        self.size = size
        self.ctx = keys.context
        self.can_decrypt = keys.private
        self.slots = slots(enc)
        self.chunks = math.ceil(size / self.slots)
        self._loader = loader
        data_primes = len(coeffs(enc)) - 1  # only the data primes reach the wire
        per_ct = 2 * enc.poly_modulus_degree * 8 * data_primes + 4096  # 64-bit words before SEAL's compression
        self.wire_size = self.chunks * per_ct + 8 + 4 * self.chunks  # an upper bound

    def chunk_lengths(self) -> list[int]:
        """Vector length of each ciphertext (values for CKKS, slots for BFV)."""
        return [min(self.slots, self.size - i * self.slots) for i in range(self.chunks)]

    def slot_count(self, values: int) -> int:
        return values

    def check(self, payload: bytes) -> None:
        """The payload's shape only: a frame of the right number of ciphertexts, none oversized."""
        if len(payload) > self.wire_size or not all(unframe(payload, self.chunks)):
            raise ProtocolError(f"payload of {len(payload)} bytes is not {self.chunks} ciphertexts of this experiment")

    def load(self, payload: bytes) -> list[Any]:
        """Deserialize and check every ciphertext of a payload in this node's context."""
        vectors = []
        for i, (part, want) in enumerate(zip(unframe(payload, self.chunks), self.chunk_lengths(), strict=True)):
            try:
                vec = self._loader(self.ctx, part)
            except (ValueError, RuntimeError, TypeError) as exc:
                raise ProtocolError(f"ciphertext {i} does not load in this experiment's context: {exc}") from None
            if vec.size() != self.slot_count(want):
                raise ProtocolError(f"ciphertext {i} holds {vec.size()} slots, expected {self.slot_count(want)}")
            self.check_vector(i, vec)
            vectors.append(vec)
        return vectors

    def check_vector(self, index: int, vec: Any) -> None:
        """Scheme-specific checks of one loaded ciphertext."""

    def add(self, loaded: Sequence[list[Any]]) -> bytes:
        """Add loaded payloads ciphertext by ciphertext (in place on the first: no extra copies)."""
        total = loaded[0]
        for other in loaded[1:]:
            for acc, vec in zip(total, other, strict=True):
                acc.add_(vec)
        return frame([vec.serialize() for vec in total])
