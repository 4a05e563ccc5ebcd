"""SEAL-Python's ckks and bfv: SEAL ciphertexts, one per chunk, sent with zstd on top.

SEAL-Python's SEAL is built without compression (a CKKS 4096 ciphertext of 2,048 values is 64 KiB,
32 B/value, where TenSEAL's zstd-compressed one is 24): each ciphertext goes on the wire compressed
with zstd where that is smaller (CKKS: 40-bit residues in 64-bit words), as it is where not (BFV's
60-bit residues do not compress). A receiver tells the two apart by their magic numbers. A client's
fresh ciphertexts are seeded (hefl.crypto.seal.seeded: c0 and the seed of c1, half the bytes) unless
`encryption.seeded` is false; sums are full.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np
import seal
import zstandard

from hefl.crypto.chunked import ChunkedScheme
from hefl.crypto.encoding import BfvEncoding, CkksEncoding, check_seal_ciphertext
from hefl.crypto.params import HeParams, coeffs, seeded_uplink
from hefl.crypto.scheme import KeyRing
from hefl.crypto.seal.keys import SealKeys
from hefl.crypto.seal.seeded import SeededCiphertext, Seeder
from hefl.errors import ProtocolError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
SEAL_MAGIC = b"\x5e\xa1"  # SEALHeader.magic, little-endian
ZSTD_LEVEL = 3


class SealScheme(ChunkedScheme):
    def __init__(self, enc: HeParams, size: int, keys: KeyRing) -> None:
        data_primes = len(coeffs(enc)) - 1
        self.raw_bytes = (
            2 * enc.poly_modulus_degree * 8 * data_primes + 1024
        )  # and SEAL's header, parms_id, scale
        super().__init__(enc, size, keys.private, self.raw_bytes)
        mine: SealKeys = keys.context
        self.ctx = mine.context
        self.parms_id = list(self.ctx.first_parms_id())
        self.evaluator = seal.Evaluator(self.ctx)
        self.encryptor = self.decryptor = self.seeder = None
        if mine.secret is not None:
            self.encryptor = seal.Encryptor(self.ctx, mine.secret)
            self.decryptor = seal.Decryptor(self.ctx, mine.secret)
            if seeded_uplink(enc):
                self.seeder = Seeder(self.ctx, mine.secret)

    @abstractmethod
    def plain(self, chunk: np.ndarray) -> Any:
        """A chunk encoded as a SEAL plaintext."""

    def decrypting(self) -> Any:
        """SEAL's decryptor: a node without the secret key (a switch, the aggregator) has none."""
        if self.decryptor is None:
            raise ValueError(f"this {self.name} context holds no secret_key: it cannot decrypt")
        return self.decryptor

    def encrypt_chunk(self, chunk: np.ndarray) -> Any:
        if self.encryptor is None:
            raise ValueError(f"this {self.name} context holds no secret_key: it cannot encrypt")
        ct = self.encryptor.encrypt_symmetric(self.plain(chunk))
        return ct if self.seeder is None else self.seeder.seed(ct)  # a fresh seed each time

    def encrypt_zero(self, slot_count: int) -> Any:
        return self.encrypt_chunk(np.zeros(slot_count, dtype=type(self.zero)))

    def add_plain(self, ct: Any, chunk: np.ndarray) -> Any:
        # into a seeded zero too: adding a plaintext changes c0 alone, c1 stays the seed's
        self.evaluator.add_plain_inplace(held(ct), self.plain(chunk))
        return ct

    def dump_part(self, ct: Any) -> bytes:
        if isinstance(ct, SeededCiphertext):
            raw = ct.dump()
        else:
            raw = bytes(ct.to_string(seal.compr_mode_type.none))
        # a (de)compressor per call: zstandard's are not thread-safe, and a client may load two
        # rounds' global results at once
        packed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw)
        return packed if len(packed) < len(raw) else raw

    def add_ct(self, acc: Any, ct: Any) -> Any:
        # a sum of seeded ciphertexts is a full one: its c1 is the sum of the seeds' expansions
        return self.evaluator.add(held(acc), held(ct))

    def sub_ct(self, acc: Any, ct: Any) -> Any:
        acc = held(acc)
        self.evaluator.sub_inplace(acc, held(ct))
        return acc

    def unzip(self, index: int, part: bytes) -> bytes:
        """A part as SEAL wrote it: zstd-compressed ones are decompressed, never beyond the size a
        ciphertext of these parameters has."""
        if part[:4] != ZSTD_MAGIC:
            return part
        try:
            size = zstandard.frame_content_size(part)
            if not 0 < size <= self.raw_bytes:
                raise ProtocolError(
                    f"ciphertext {index} unpacks to {size} bytes, a ciphertext of this "
                    f"experiment has at most {self.raw_bytes}"
                )
            unzip = zstandard.ZstdDecompressor()
            return bytes(unzip.decompress(part, max_output_size=self.raw_bytes))
        except zstandard.ZstdError as exc:
            raise ProtocolError(f"ciphertext {index} is not a zstd frame: {exc}") from None

    def load_part(self, index: int, part: bytes, slot_count: int) -> Any:
        raw = self.unzip(index, part)
        if raw[:2] != SEAL_MAGIC:
            raise ProtocolError(f"ciphertext {index} is not a SEAL ciphertext")
        ct = seal.Ciphertext()
        try:
            ct.load_bytes(self.ctx, raw)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise ProtocolError(
                f"ciphertext {index} does not load in this experiment's context: {exc}"
            ) from None
        check_seal_ciphertext(index, ct, self.parms_id, self.enc)
        return ct


def held(ct: Any) -> Any:
    """The SEAL ciphertext itself, of a seeded one too (a client's own, not yet serialized)."""
    return ct.ct if isinstance(ct, SeededCiphertext) else ct


class SealCkks(CkksEncoding, SealScheme):
    def __init__(self, enc: HeParams, size: int, keys: KeyRing) -> None:
        super().__init__(enc, size, keys)
        self.encoder = seal.CKKSEncoder(self.ctx)

    def plain(self, chunk: np.ndarray) -> Any:
        return self.encoder.encode(np.ascontiguousarray(chunk, dtype=np.float64), self.enc.scale)

    def decrypt_part(self, ct: Any) -> np.ndarray:
        return np.asarray(self.encoder.decode(self.decrypting().decrypt(held(ct))))


class SealBfv(BfvEncoding, SealScheme):
    def __init__(self, enc: HeParams, size: int, keys: KeyRing, seed: int) -> None:
        super().__init__(enc, size, keys)
        self.setup_encoding(enc, seed)
        self.encoder = seal.BatchEncoder(self.ctx)

    def plain(self, chunk: np.ndarray) -> Any:
        return self.encoder.encode(np.ascontiguousarray(chunk, dtype=np.int64))

    def decrypt_part(self, ct: Any) -> np.ndarray:
        plain = self.decrypting().decrypt(held(ct))
        return np.asarray(self.encoder.decode(plain), dtype=np.int64)
