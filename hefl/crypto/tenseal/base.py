"""The TenSEAL base of ckks and bfv: an update as ceil(size / slots) ciphertext vectors in one
framed body.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from hefl.crypto.frame import frame, frame_lengths, unframe
from hefl.crypto.params import HeParams, coeffs, slots
from hefl.crypto.scheme import KeyRing
from hefl.errors import ProtocolError

if TYPE_CHECKING:
    from hefl.crypto.tenseal.pool import EncryptPool


class TensealScheme(ABC):
    """Chunked at the slot count (one call per ciphertext: no TenSEAL 'does not fit' warning).
    A subclass sets `name` and implements `encrypt` and `decrypt`."""

    name: str

    def __init__(
        self, enc: HeParams, size: int, keys: KeyRing, loader: Callable[[Any, bytes], Any]
    ) -> None:
        self.enc = enc
        self.size = size
        self.ctx = keys.context
        self.can_decrypt = keys.private
        self.slots = slots(enc)
        self.chunks = math.ceil(size / self.slots)
        self._loader = loader
        self.ntt = enc.scheme == "ckks"  # SEAL keeps CKKS ciphertexts in NTT form, BFV ones not
        self.parms_id = list(self.ctx.seal_context().data.first_parms_id())
        self._pool: EncryptPool | None = None
        if keys.private and enc.processes > 1:
            from hefl.crypto.tenseal.pool import EncryptPool

            self._pool = EncryptPool(self.ctx, enc)
        data_primes = len(coeffs(enc)) - 1  # only the data primes reach the wire
        # 64-bit words before SEAL's compression
        per_ct = 2 * enc.poly_modulus_degree * 8 * data_primes + 4096
        self.max_payload_bytes = self.chunks * per_ct + 8 + 4 * self.chunks

    @abstractmethod
    def encrypt(self, values: np.ndarray) -> bytes: ...

    @abstractmethod
    def decrypt(self, loaded: list[Any], contributors: int) -> np.ndarray: ...

    def encrypt_chunks(
        self, chunks: list[np.ndarray], make: Callable[[Any, list[Any]], Any]
    ) -> bytes:
        """Serialized ciphertexts of `chunks`, in worker processes when there are several
        chunks each."""
        if self._pool is not None and len(chunks) >= 2 * self.enc.processes:
            return frame(self._pool.encrypt(chunks))
        return frame([make(self.ctx, chunk.tolist()).serialize() for chunk in chunks])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def chunk_lengths(self) -> list[int]:
        """Vector length of each ciphertext (values for CKKS, slots for BFV)."""
        return [min(self.slots, self.size - i * self.slots) for i in range(self.chunks)]

    def slot_count(self, values: int) -> int:
        return values

    def check(self, payload: bytes) -> None:
        """The payload's shape only: a frame of the right number of ciphertexts, none empty or
        oversized."""
        if len(payload) > self.max_payload_bytes or 0 in frame_lengths(payload, self.chunks):
            raise ProtocolError(
                f"payload of {len(payload)} bytes is not {self.chunks} ciphertexts "
                f"of this experiment"
            )

    def load(self, payload: bytes) -> list[Any]:
        """Deserialize and check every ciphertext of a payload in this node's context."""
        vectors = []
        for i, (part, want) in enumerate(
            zip(unframe(payload, self.chunks), self.chunk_lengths(), strict=True)
        ):
            try:
                vec = self._loader(self.ctx, part)
            except (ValueError, RuntimeError, TypeError) as exc:
                raise ProtocolError(
                    f"ciphertext {i} does not load in this experiment's context: {exc}"
                ) from None
            try:
                if vec.size() != self.slot_count(want):
                    raise ProtocolError(
                        f"ciphertext {i} holds {vec.size()} slots, expected {self.slot_count(want)}"
                    )
                self.check_vector(i, vec)
            except (ValueError, RuntimeError, TypeError, AttributeError) as exc:
                if isinstance(exc, ProtocolError):
                    raise
                raise ProtocolError(f"ciphertext {i} cannot be checked: {exc}") from None
            vectors.append(vec)
        return vectors

    def check_vector(self, index: int, vec: Any) -> None:
        """One fresh-shaped ciphertext of this context per vector: anything else (no ciphertext,
        two, another parameter level, NTT form flipped) would make TenSEAL fail, or crash, when
        adding."""
        cts = vec.ciphertext()
        if len(cts) != 1:
            raise ProtocolError(f"ciphertext {index} holds {len(cts)} SEAL ciphertexts, expected 1")
        ct = cts[0]
        if (
            ct.size() != 2
            or ct.is_transparent()
            or ct.is_ntt_form() != self.ntt
            or list(ct.parms_id()) != self.parms_id
        ):
            raise ProtocolError(
                f"ciphertext {index} is not a ciphertext of this experiment's parameters"
            )
        self.check_scale(index, ct)

    def check_scale(self, index: int, ct: Any) -> None:
        """CKKS checks that the scale is the configured one; a BFV ciphertext has none."""
        return None

    def add_into(self, total: list[Any] | None, loaded: list[Any]) -> list[Any]:
        """Add ciphertext by ciphertext, in place: the first update loaded becomes the total."""
        if total is None:
            return loaded
        for acc, vec in zip(total, loaded, strict=True):
            acc.add_(vec)
        return total

    def serialize(self, total: list[Any]) -> bytes:
        return frame([vec.serialize() for vec in total])
