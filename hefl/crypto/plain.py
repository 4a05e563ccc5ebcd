"""The `none` scheme: float32 values, little-endian, summed in float64 at every adding node."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

import numpy as np

from hefl.crypto.frame import Payload
from hefl.errors import ProtocolError

WIRE = np.dtype("<f4")
BLOCK = 1 << 20  # bytes of values a body still arriving is read and checked in


class PlainScheme:
    """Plaintext baseline on the very same path as the encrypted schemes."""

    name = "none"
    can_decrypt = True
    precomputed = 0
    adding_s = 0.0  # seconds spent adding (not loading), ever

    def __init__(self, size: int, clip: float | None = None) -> None:
        self.size = size
        self.clip = clip  # None: values are only checked to be finite
        self.max_payload_bytes = size * WIRE.itemsize  # every payload has exactly this many bytes

    def encrypt(self, values: np.ndarray) -> bytes:
        return self.serialize(self.encrypt_parts(values))

    def encrypt_parts(
        self, values: np.ndarray, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """The values as they go on the wire (float32), still in memory."""
        if values.shape != (self.size,):
            raise ValueError(f"update has shape {values.shape}, expected ({self.size},)")
        return values.astype(WIRE)

    def form(self, payload: Payload) -> str | None:
        return None  # plaintext: no ciphertext form

    def precompute(self, stop: Callable[[], bool]) -> int:
        """Nothing to do ahead: converting floats is all `encrypt` does."""
        return 0

    def check(self, payload: Payload) -> None:
        if not isinstance(payload, bytes | bytearray):
            for _ in self._blocks(payload):  # read to its end (into its spool), sizes checked
                pass
            return
        if len(payload) != self.max_payload_bytes:
            raise ProtocolError(
                f"payload is {len(payload)} bytes, expected {self.max_payload_bytes} "
                f"({self.size} float32 values)"
            )

    def _blocks(self, payload: Payload) -> Iterator[np.ndarray]:
        """The payload's values in blocks (a body still arriving: as it is read, of fixed size)."""
        if isinstance(payload, bytes | bytearray):
            self.check(payload)
            yield np.frombuffer(payload, dtype=WIRE)
            return
        blocks = payload.blocks(self.max_payload_bytes, BLOCK)  # type: ignore[attr-defined]
        for block in blocks:
            yield np.frombuffer(block, dtype=WIRE)

    def check_sum(self, payload: Payload, contributors: int) -> None:
        """The values of a sum of `contributors` clipped updates are finite and within
        contributors x clip (float32 rounding aside): an adder refuses anything else before adding
        it, so that NaN or a huge value cannot spoil the round for every client."""
        bad, top = 0, 0.0
        for values in self._blocks(payload):
            bad += int(np.count_nonzero(~np.isfinite(values)))
            if not bad and values.size:
                top = max(top, float(np.max(np.abs(values))))
        if bad:
            raise ProtocolError(f"payload holds {bad} non-finite values")
        if self.clip is not None:
            bound = contributors * self.clip * (1 + 1e-6)
            if top > bound:
                raise ProtocolError(
                    f"payload holds a value of magnitude {top:.6g}, beyond {contributors} "
                    f"client(s) x clip {self.clip:g}"
                )

    def load(self, payload: Payload) -> np.ndarray:
        if isinstance(payload, bytes | bytearray):
            self.check(payload)
            return np.frombuffer(payload, dtype=WIRE)
        return np.concatenate(list(self._blocks(payload)))

    def add_into(self, total: np.ndarray | None, loaded: np.ndarray) -> np.ndarray:
        """A float64 running total: float64 holds the sum of a few float32 values exactly (unless
        their magnitudes differ by more than 2^29), so the result does not depend on the order
        updates arrive in, as a float32 running sum of three or more would."""
        if total is None:
            return loaded.astype(np.float64)
        started = time.monotonic()
        total += loaded
        self.adding_s += time.monotonic() - started
        return total

    def load_into(self, total: np.ndarray | None, payload: Payload) -> np.ndarray:
        """Load (check the size: all or nothing) and add into the float64 total. A body still
        arriving is read to its end first (each block checked as it comes, into its spool), then
        added block by block from the spool: nothing is added unless all of it came."""
        if isinstance(payload, bytes | bytearray):
            return self.add_into(total, self.load(payload))
        if not getattr(payload, "done", False) or len(payload) != self.max_payload_bytes:
            self.check(payload)  # else read whole already (check_sum): the size is right
        if total is None:
            total = np.zeros(self.size, dtype=np.float64)
        at = 0
        for values in self._blocks(payload):
            started = time.monotonic()
            total[at : at + values.size] += values
            self.adding_s += time.monotonic() - started
            at += values.size
        return total

    def serialize(self, total: np.ndarray) -> bytes:
        return total.astype(WIRE).tobytes()

    def write(self, total: np.ndarray, out: BinaryIO) -> None:
        """`serialize` into a file, a block at a time."""
        step = BLOCK // WIRE.itemsize
        for at in range(0, total.size, step):
            out.write(total[at : at + step].astype(WIRE).tobytes())

    def verify(self, payload: Payload) -> None:
        """Every value of the payload is read: the size is all that is checked."""
        self.check(payload)

    def decrypt(self, loaded: np.ndarray, contributors: int) -> np.ndarray:
        return loaded.astype(np.float64)

    def close(self) -> None:
        """Nothing to release."""
