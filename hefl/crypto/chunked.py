"""What every HE scheme here shares: an update as ceil(size / slots) ciphertexts in one framed body,
loaded, checked and added one ciphertext at a time, and encrypted in two halves.

A backend (tenseal/, seal/, paillier/) implements the ciphertext primitives (encrypt a chunk,
encrypt zero, add a plaintext, load and check one part, dump it, add, subtract, decrypt); an
encoding (hefl.crypto.encoding: ckks, bfv) turns an update into chunks and a decrypted sum back
into values. Encryption in two halves: an encryption of zero does not depend on the values, so
`precompute` makes one per ciphertext ahead of time (a client runs it while it waits for the global
result), and `encrypt` then only encodes the values and adds them to it (plaintext addition: the
result is an encryption of the values with the zero's fresh randomness, as if encrypted at once).
Each encryption of zero is used once; what is not ready is encrypted at once as usual.
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, Protocol

import numpy as np

from hefl.crypto.frame import Payload, frame, frame_head, frame_lengths, frame_part, unframe
from hefl.crypto.frame import stream as frame_stream
from hefl.crypto.params import HeParams, slots
from hefl.errors import ProtocolError


class Pool(Protocol):
    """Worker processes that turn chunks into serialized ciphertexts (a backend may have one)."""

    def encrypt(self, chunks: list[Any]) -> list[bytes]: ...

    def close(self) -> None: ...


class ChunkedScheme(ABC):
    """A subclass (an encoding and a backend) sets `name` and implements the abstract methods."""

    name: str
    zero: float  # the zero value of a slot (0.0 for ckks, 0 for integer encodings)

    def __init__(self, enc: HeParams, size: int, private: bool, part_bytes: int) -> None:
        """`part_bytes`: the most bytes one serialized ciphertext can have."""
        self.enc = enc
        self.size = size
        self.can_decrypt = private
        self.slots = slots(enc)
        self.chunks = math.ceil(size / self.slots)
        self._zeros: list[Any] = []  # encryptions of zero for chunks 0, 1, ... of the next update
        self._zeros_lock = threading.Lock()
        self.precomputed = 0  # how many ciphertexts of the last update used one
        self.adding_s = 0.0  # seconds spent adding ciphertexts (not loading them), ever
        # seconds `stream` spent encrypting and serializing, ever (the sender times them apart)
        self.streamed_s = [0.0, 0.0]
        self._pool: Pool | None = None
        self.part_limit = part_bytes  # no part is read further than this (not even its form)
        self.max_payload_bytes = self.chunks * part_bytes + 8 + 4 * self.chunks

    # the encoding's part (hefl.crypto.encoding)

    @abstractmethod
    def encode(self, values: np.ndarray, rng: np.random.Generator | None) -> list[Any]:
        """An update as one chunk per ciphertext (what `encrypt_chunk` takes)."""

    @abstractmethod
    def decode(self, parts: list[np.ndarray], contributors: int) -> np.ndarray:
        """The sum of `contributors` updates from each ciphertext's decrypted slots."""

    def slot_count(self, values: int) -> int:
        """Slots a ciphertext of `values` values fills."""
        return values

    # the backend's part

    @abstractmethod
    def encrypt_chunk(self, chunk: Any) -> Any: ...

    @abstractmethod
    def encrypt_zero(self, slot_count: int) -> Any: ...

    @abstractmethod
    def add_plain(self, ct: Any, chunk: Any) -> Any:
        """`ct` (an encryption of zero) with `chunk` added: may change `ct` in place."""

    @abstractmethod
    def load_part(self, index: int, part: bytes, slot_count: int) -> Any:
        """One ciphertext from its bytes, checked to belong to this experiment (ProtocolError)."""

    @abstractmethod
    def dump_part(self, ct: Any) -> bytes: ...

    @abstractmethod
    def add_ct(self, acc: Any, ct: Any) -> Any:
        """acc + ct, as a new ciphertext: `acc` is as it was if adding fails (a sum that is no
        ciphertext: SEAL refuses a transparent one, what adding an update's negation makes)."""

    @abstractmethod
    def sub_ct(self, acc: Any, ct: Any) -> Any:
        """acc - ct: may change `acc` in place."""

    @abstractmethod
    def decrypt_part(self, ct: Any) -> np.ndarray:
        """A ciphertext's slots (at least as many as it was made with)."""

    # the scheme interface (hefl.crypto.scheme.Scheme)

    def encrypt(self, values: np.ndarray) -> bytes:
        return self.serialize(self.encrypt_parts(values))

    def encrypt_parts(
        self, values: np.ndarray, rng: np.random.Generator | None = None
    ) -> list[Any]:
        if values.shape != (self.size,):
            raise ValueError(f"update has shape {values.shape}, expected ({self.size},)")
        return self.encrypt_chunks(self.encode(values, rng))

    def encrypt_chunks(self, chunks: list[Any]) -> list[Any]:
        """The ciphertexts of `chunks`: added to precomputed encryptions of zero where there are
        some, else encrypted here, or in worker processes when there are several chunks each
        (those come back serialized already: `serialize` takes them as they are)."""
        zeros = self._take_zeros(len(chunks))
        if not zeros and self._pool is not None and len(chunks) >= 2 * self.enc.processes:
            return list(self._pool.encrypt(chunks))
        return [self._encrypt_at(i, chunk, zeros) for i, chunk in enumerate(chunks)]

    def _take_zeros(self, chunks: int) -> list[Any]:
        """The precomputed encryptions of zero, for an update of `chunks` ciphertexts (taken: the
        next update's are made anew)."""
        with self._zeros_lock:
            zeros, self._zeros = self._zeros, []
        self.precomputed = min(len(zeros), chunks)
        return zeros

    def _encrypt_at(self, index: int, chunk: Any, zeros: list[Any]) -> Any:
        """Ciphertext `index`: its precomputed encryption of zero plus the chunk (used once), or
        encrypted at once."""
        if index < len(zeros):
            ct = self.add_plain(zeros[index], chunk)
            zeros[index] = None
            return ct
        return self.encrypt_chunk(chunk)

    def precompute(self, stop: Callable[[], bool]) -> int:
        """Make encryptions of zero for the next update's first ciphertexts, one at a time, until
        there is one for each (at most `precompute_window`) or `stop()` says to stop; return how
        many were made. Only a client can (it holds the key); with worker processes nothing is
        made (they encrypt at once)."""
        if not self.can_decrypt or self._pool is not None:
            return 0
        lengths = [self.slot_count(n) for n in self.chunk_lengths()]
        made = 0
        while not stop():
            with self._zeros_lock:
                batch = self._zeros
                index = len(batch)
            if index >= min(self.chunks, self.enc.precompute_window):
                break
            zero = self.encrypt_zero(lengths[index])
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
        """Values in each ciphertext."""
        return [min(self.slots, self.size - i * self.slots) for i in range(self.chunks)]

    def form(self, payload: Payload) -> str | None:
        """The form of the payload's first part (a payload has one form); None if it is not a
        frame of this scheme's parts (the message is refused elsewhere, with its reason). A body
        read as it arrived tells the first part it read, if any."""
        if not isinstance(payload, bytes | bytearray):
            first = getattr(payload, "first_part", None)
        else:
            try:
                first = next(iter(unframe(payload, self.chunks)), None)
            except ProtocolError:
                return None
        if first is None or len(first) > self.part_limit:
            return None
        return self.part_form(first)

    def part_form(self, part: bytes) -> str | None:
        """A part's form: a backend that sends seeded ciphertexts tells them apart."""
        return "full"

    def check(self, payload: Payload) -> None:
        """The payload's shape only: a frame of the right number of ciphertexts, none empty or
        oversized (a body still arriving is read to its end, into its spool)."""
        if not isinstance(payload, bytes | bytearray):
            for i, part in enumerate(unframe(payload, self.chunks, self.part_limit)):
                if not part:
                    raise ProtocolError(f"ciphertext {i} is empty")
            return
        if len(payload) > self.max_payload_bytes or 0 in frame_lengths(payload, self.chunks):
            raise ProtocolError(
                f"payload of {len(payload)} bytes is not {self.chunks} ciphertexts "
                f"of this experiment"
            )

    def verify(self, payload: Payload) -> None:
        """Deserialize and check every ciphertext of a payload, holding one at a time."""
        for _ in self._parts(payload):
            pass

    def check_sum(self, payload: Payload, contributors: int) -> None:
        """Ciphertexts cannot be looked into: their values are checked by the clients that
        decrypt the sum (see hefl.node.nodes.client)."""
        return None

    def load(self, payload: Payload) -> list[Any]:
        """Deserialize and check every ciphertext of a payload."""
        return list(self._parts(payload))

    def load_into(self, total: list[Any] | None, payload: Payload) -> list[Any]:
        """Load a payload and add it into `total` one ciphertext at a time (a node never holds a
        second loaded update); a ciphertext that fails its checks takes back what this payload had
        added (ciphertext addition is exact modular arithmetic: subtracting restores every bit)."""
        if total is None:
            return self.load(payload)
        added = 0
        try:
            for ct in self._parts(payload):
                started = time.monotonic()
                try:
                    total[added] = self.add_ct(total[added], ct)
                except ProtocolError as exc:  # what adding refuses (a seed the sum holds)
                    raise ProtocolError(f"ciphertext {added} {exc}") from None
                self.adding_s += time.monotonic() - started
                added += 1
        except BaseException as exc:
            for i, ct in zip(range(added), self._parts(payload), strict=False):
                total[i] = self.sub_ct(total[i], ct)
            if isinstance(exc, (ValueError, RuntimeError, TypeError)) and not isinstance(
                exc, ProtocolError
            ):
                raise ProtocolError(f"ciphertext {added} cannot be added: {exc}") from None
            raise
        return total

    def _parts(self, payload: Payload) -> Iterator[Any]:
        """The payload's ciphertexts, each deserialized and checked as it is asked for (a part
        longer than a ciphertext of this experiment is refused before it is read)."""
        for i, (part, want) in enumerate(
            zip(unframe(payload, self.chunks, self.part_limit), self.chunk_lengths(), strict=True)
        ):
            yield self.load_part(i, part, self.slot_count(want))

    def add_into(self, total: list[Any] | None, loaded: list[Any]) -> list[Any]:
        """Add ciphertext by ciphertext: the first update loaded becomes the total."""
        if total is None:
            return loaded
        started = time.monotonic()
        for i, ct in enumerate(loaded):
            total[i] = self.add_ct(total[i], ct)
        self.adding_s += time.monotonic() - started
        return total

    def serialize(self, total: list[Any]) -> bytes:
        return frame([self._dumped(ct) for ct in total])

    def _dumped(self, ct: Any) -> bytes:
        return ct if isinstance(ct, bytes) else self.dump_part(ct)

    def write(self, total: list[Any], out: BinaryIO) -> None:
        """`serialize` into a file, one ciphertext at a time (never the whole payload in memory);
        each ciphertext of `total` is dropped once written (the total is not used again)."""
        out.write(frame_head(len(total)))
        for i, ct in enumerate(total):
            part = self._dumped(ct)
            total[i] = None
            out.write(frame_part(part))
            out.write(part)

    def stream(self, values: np.ndarray, rng: np.random.Generator | None = None) -> Iterator[bytes]:
        """An update encrypted and serialized one ciphertext at a time as it is sent (a framed
        body's pieces: hefl.crypto.frame.stream); a fresh call encrypts again."""
        if values.shape != (self.size,):
            raise ValueError(f"update has shape {values.shape}, expected ({self.size},)")
        chunks = self.encode(values, rng)
        zeros = self._take_zeros(len(chunks))

        def parts() -> Iterator[bytes]:
            for i in range(len(chunks)):
                started = time.monotonic()
                ct = self._encrypt_at(i, chunks[i], zeros)
                chunks[i] = None
                middle = time.monotonic()
                part = self.dump_part(ct)
                del ct
                self.streamed_s[0] += middle - started
                self.streamed_s[1] += time.monotonic() - middle
                yield part

        return frame_stream(parts(), len(chunks))

    def decrypt(self, loaded: list[Any], contributors: int) -> np.ndarray:
        parts = [
            self.decrypt_part(ct)[: self.slot_count(n)]
            for ct, n in zip(loaded, self.chunk_lengths(), strict=True)
        ]
        return self.decode(parts, contributors)
