"""The TenSEAL backend's ciphertext primitives: TenSEAL vectors (one SEAL ciphertext each), loaded
and checked one at a time; the encodings mix in on top (ckks.py, bfv.py), and seeded.py makes the
fresh ones seeded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from hefl.crypto.chunked import ChunkedScheme
from hefl.crypto.encoding import check_seal_ciphertext
from hefl.crypto.params import HeParams, coeffs, seeded_uplink
from hefl.crypto.scheme import KeyRing
from hefl.crypto.seeding import SEED_BYTES
from hefl.errors import ProtocolError


def seeded_here(enc: HeParams) -> bool:
    """Whether fresh ciphertexts go seeded and sums as seed lists (encryption.seeded)."""
    return seeded_uplink(enc)


def part_bytes(enc: HeParams) -> int:
    """The most bytes one part has unpacked: a full ciphertext of the data primes in 64-bit words
    with TenSEAL's and SEAL's headers, or a seed list of encryption.seed_list_max seeds."""
    words = enc.poly_modulus_degree * 8 * max(len(coeffs(enc)) - 1, 1)
    return max(2 * words + 4096, 8 + SEED_BYTES * enc.seed_list_max + words)


class TensealScheme(ChunkedScheme):
    """Chunked at the slot count (one call per ciphertext: no TenSEAL 'does not fit' warning).
    A subclass sets `make` (TenSEAL's encrypting constructor) and `zero` (its zero value)."""

    make: Callable[[Any, list[Any]], Any]

    def __init__(
        self, enc: HeParams, size: int, keys: KeyRing, loader: Callable[[Any, bytes], Any]
    ) -> None:
        self.part_bytes = part_bytes(enc)  # before SEAL's compression
        super().__init__(enc, size, keys.private, self.part_bytes)
        self.ctx = keys.context
        self._loader = loader
        self.parms_id = list(self.ctx.seal_context().data.first_parms_id())
        if keys.private and enc.processes > 1:
            from hefl.crypto.tenseal.pool import EncryptPool

            self._pool = EncryptPool(self.ctx, enc)

    def encrypt_chunk(self, chunk: np.ndarray) -> Any:
        return self.make(self.ctx, chunk.tolist())

    def encrypt_zero(self, slot_count: int) -> Any:
        return self.make(self.ctx, [self.zero] * slot_count)

    def add_plain(self, ct: Any, chunk: np.ndarray) -> Any:
        # TenSEAL's C++ vector takes the list as it is (the Python `add_` first builds a
        # PlainTensor: 3x slower for bfv)
        ct.data.add_plain_(chunk.tolist())
        return ct

    def dump_part(self, ct: Any) -> bytes:
        return bytes(ct.serialize())

    def add_ct(self, acc: Any, ct: Any) -> Any:
        return acc.add(ct)

    def sub_ct(self, acc: Any, ct: Any) -> Any:
        acc.sub_(ct)
        return acc

    def decrypt_part(self, ct: Any) -> np.ndarray:
        return np.asarray(ct.decrypt())

    def load_part(self, index: int, part: bytes, slot_count: int) -> Any:
        try:
            vec = self._loader(self.ctx, part)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise ProtocolError(
                f"ciphertext {index} does not load in this experiment's context: {exc}"
            ) from None
        try:
            if vec.size() != slot_count:
                raise ProtocolError(
                    f"ciphertext {index} holds {vec.size()} slots, expected {slot_count}"
                )
            self.check_vector(index, vec)
        except (ValueError, RuntimeError, TypeError, AttributeError) as exc:
            if isinstance(exc, ProtocolError):
                raise
            raise ProtocolError(f"ciphertext {index} cannot be checked: {exc}") from None
        return vec

    def check_vector(self, index: int, vec: Any) -> None:
        """One fresh-shaped ciphertext of this context per vector: anything else (no ciphertext,
        two, another parameter level, NTT form flipped) would make TenSEAL fail, or crash, when
        adding."""
        cts = vec.ciphertext()
        if len(cts) != 1:
            raise ProtocolError(f"ciphertext {index} holds {len(cts)} SEAL ciphertexts, expected 1")
        check_seal_ciphertext(index, cts[0], self.parms_id, self.enc)
