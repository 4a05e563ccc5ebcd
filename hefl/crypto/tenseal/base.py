"""The TenSEAL base of ckks and bfv: an update as ceil(size / slots) ciphertext vectors in one
framed body.
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from hefl.crypto.frame import Payload, frame, frame_lengths, unframe
from hefl.crypto.params import HeParams, coeffs, slots
from hefl.crypto.scheme import KeyRing
from hefl.errors import ProtocolError

if TYPE_CHECKING:
    from hefl.crypto.tenseal.pool import EncryptPool


class TensealScheme(ABC):
    """Chunked at the slot count (one call per ciphertext: no TenSEAL 'does not fit' warning).
    A subclass sets `name`, `make` (TenSEAL's encrypting constructor) and `zero` (its zero value),
    and implements `encrypt` and `decrypt`.

    Encryption in two halves: an encryption of zero does not depend on the values, so `precompute`
    makes one per ciphertext ahead of time (a client runs it while it waits for the global result),
    and `encrypt` then only encodes the values and adds them to it (plaintext addition: the result
    is an encryption of the values with the zero's fresh noise, as if encrypted at once). Each
    encryption of zero is used once; what is not ready is encrypted at once as usual."""

    name: str
    make: Callable[[Any, list[Any]], Any]
    zero: float

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
        self._zeros: list[Any] = []  # encryptions of zero for chunks 0, 1, ... of the next update
        self._zeros_lock = threading.Lock()
        self.precomputed = 0  # how many ciphertexts of the last update used one
        self.adding_s = 0.0  # seconds spent adding ciphertexts (not loading them), ever
        self._pool: EncryptPool | None = None
        if keys.private and enc.processes > 1:
            from hefl.crypto.tenseal.pool import EncryptPool

            self._pool = EncryptPool(self.ctx, enc)
        data_primes = len(coeffs(enc)) - 1  # only the data primes reach the wire
        # 64-bit words before SEAL's compression
        per_ct = 2 * enc.poly_modulus_degree * 8 * data_primes + 4096
        self.max_payload_bytes = self.chunks * per_ct + 8 + 4 * self.chunks

    @abstractmethod
    def decrypt(self, loaded: list[Any], contributors: int) -> np.ndarray: ...

    def encrypt(self, values: np.ndarray) -> bytes:
        return self.serialize(self.encrypt_parts(values))

    @abstractmethod
    def encrypt_parts(
        self, values: np.ndarray, rng: np.random.Generator | None = None
    ) -> list[Any]: ...

    def encrypt_chunks(self, chunks: list[np.ndarray]) -> list[Any]:
        """The ciphertexts of `chunks`: added to precomputed encryptions of zero where there are
        some, else encrypted here, or in worker processes when there are several chunks each
        (those come back serialized already: `serialize` takes them as they are)."""
        with self._zeros_lock:
            zeros, self._zeros = self._zeros, []
        self.precomputed = min(len(zeros), len(chunks))
        if not zeros and self._pool is not None and len(chunks) >= 2 * self.enc.processes:
            return list(self._pool.encrypt(chunks))
        parts = []
        for i, chunk in enumerate(chunks):
            if i < len(zeros):
                vec = zeros[i]
                zeros[i] = None  # used once
                # TenSEAL's C++ vector takes the list as it is (the Python `add_` first builds a
                # PlainTensor: 3x slower for bfv)
                vec.data.add_plain_(chunk.tolist())
            else:
                vec = self.make(self.ctx, chunk.tolist())
            parts.append(vec)
        return parts

    def precompute(self, stop: Callable[[], bool]) -> int:
        """Make encryptions of zero for the next update's ciphertexts, one at a time, until there
        is one for each or `stop()` says to stop; return how many were made. Only a client can
        (it holds the key); with worker processes nothing is made (they encrypt at once)."""
        if not self.can_decrypt or self._pool is not None:
            return 0
        lengths = [self.slot_count(n) for n in self.chunk_lengths()]
        made = 0
        while not stop():
            with self._zeros_lock:
                batch = self._zeros
                index = len(batch)
            if index >= self.chunks:
                break
            zero = self.make(self.ctx, [self.zero] * lengths[index])
            with self._zeros_lock:
                # `encrypt` may have taken the batch meanwhile: this zero was for another one
                if self._zeros is batch and len(batch) == index:
                    batch.append(zero)
                    made += 1
        return made

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def chunk_lengths(self) -> list[int]:
        """Vector length of each ciphertext (values for CKKS, slots for BFV)."""
        return [min(self.slots, self.size - i * self.slots) for i in range(self.chunks)]

    def slot_count(self, values: int) -> int:
        return values

    def check(self, payload: Payload) -> None:
        """The payload's shape only: a frame of the right number of ciphertexts, none empty or
        oversized."""
        if len(payload) > self.max_payload_bytes or 0 in frame_lengths(payload, self.chunks):
            raise ProtocolError(
                f"payload of {len(payload)} bytes is not {self.chunks} ciphertexts "
                f"of this experiment"
            )

    def check_sum(self, payload: Payload, contributors: int) -> None:
        """Ciphertexts cannot be looked into: their values are checked by the clients that
        decrypt the sum (see hefl.nodes.client)."""
        return None

    def load(self, payload: Payload) -> list[Any]:
        """Deserialize and check every ciphertext of a payload in this node's context."""
        return list(self._vectors(payload))

    def load_into(self, total: list[Any] | None, payload: Payload) -> list[Any]:
        """Load a payload and add it into `total` one ciphertext at a time (a node never holds a
        second loaded update); a ciphertext that fails its checks takes back what this payload had
        added (ciphertext addition is exact modular arithmetic: subtracting restores every bit)."""
        if total is None:
            return self.load(payload)
        added = 0
        try:
            for acc, vec in zip(total, self._vectors(payload), strict=True):
                started = time.monotonic()
                acc.add_(vec)
                self.adding_s += time.monotonic() - started
                added += 1
        except BaseException:
            for acc, vec in zip(total[:added], self._vectors(payload), strict=False):
                acc.sub_(vec)
            raise
        return total

    def _vectors(self, payload: Payload) -> Iterator[Any]:
        """The payload's ciphertexts, each deserialized and checked as it is asked for."""
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
            yield vec

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
        started = time.monotonic()
        for acc, vec in zip(total, loaded, strict=True):
            acc.add_(vec)
        self.adding_s += time.monotonic() - started
        return total

    def serialize(self, total: list[Any]) -> bytes:
        return frame([vec if isinstance(vec, bytes) else vec.serialize() for vec in total])
