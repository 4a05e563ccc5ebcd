"""SEAL-Python's ckks and bfv: SEAL ciphertexts, one per chunk, sent with zstd on top.

SEAL-Python's SEAL is built without compression (a CKKS 4096 ciphertext of 2,048 values is 64 KiB,
32 B/value, where TenSEAL's zstd-compressed one is 24): each ciphertext goes on the wire compressed
with zstd where that is smaller (CKKS: 40-bit residues in 64-bit words), as it is where not (BFV's
60-bit residues do not compress). A receiver tells the two apart by their magic numbers. A client's
fresh ciphertexts are seeded (hefl.crypto.seal.seeded: c0 and the seed of c1, half the bytes) unless
`encryption.seeded` is false; sums are full.
"""

from __future__ import annotations

import struct
from abc import abstractmethod
from typing import Any

import numpy as np
import seal

from hefl.crypto.encoding import BfvEncoding, CkksEncoding, check_seal_ciphertext
from hefl.crypto.params import HeParams, coeffs, seeded_uplink
from hefl.crypto.scheme import KeyRing
from hefl.crypto.seal.keys import SealKeys
from hefl.crypto.seal.seeded import Expander, SeededCiphertext, Seeder
from hefl.crypto.seeding import HEAD_BYTES, SEED_BYTES, fresh_members, parse, seeded_head
from hefl.crypto.seedlist import COUNT, ListedScheme, SeedLists, SeedSum
from hefl.crypto.seedlist import MAGIC as LIST_MAGIC
from hefl.crypto.zstd import ZSTD_MAGIC, unzstd, zstd_head, zstd_if_smaller
from hefl.errors import ProtocolError

SEAL_MAGIC = b"\x5e\xa1"  # SEALHeader.magic, little-endian


class SealScheme(ListedScheme):
    def __init__(self, enc: HeParams, size: int, keys: KeyRing) -> None:
        primes = len(coeffs(enc)) - 1  # at the data level
        full = 2 * enc.poly_modulus_degree * 8 * primes + 1024  # and SEAL's header, scale...
        listed = 8 + SEED_BYTES * enc.seed_list_max + enc.poly_modulus_degree * 8 * primes
        self.raw_bytes = max(full, listed)
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
        # sums of seeded ciphertexts kept as seed lists (no key needed)
        self.lists = self.expander = None
        if seeded_uplink(enc) and enc.seed_list_max > 0:
            first = self.ctx.first_context_data().parms()
            moduli = [m.value() for m in first.coeff_modulus()]
            n = first.poly_modulus_degree()
            scale = enc.scale if enc.scheme == "ckks" else 1.0
            members = fresh_members(self.parms_id, enc.scheme == "ckks", n, len(moduli), scale)
            self.lists = SeedLists(members, moduli, n, enc.seed_list_max)
            self.expander = Expander(self.ctx, members)

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
        self.evaluator.add_plain_inplace(self.full(ct), self.plain(chunk))
        return ct

    def full(self, ct: Any) -> Any:
        """The SEAL ciphertext itself: a client's seeded one holds it; a seed list is expanded."""
        if isinstance(ct, SeededCiphertext):
            return ct.ct
        if isinstance(ct, SeedSum):
            assert self.expander is not None  # only made where seed lists are in use
            return self.expander.expand(ct)
        return ct

    def listed(self, ct: Any) -> SeedSum | None:
        """`ct` as a seed list where seed lists are in use and it is seeded, else None."""
        if self.lists is None:
            return None
        if isinstance(ct, SeededCiphertext):
            one: SeedSum = self.lists.of_seeded(0, parse(ct.dump()))
            return one
        return ct if isinstance(ct, SeedSum) else None

    def dump_part(self, ct: Any) -> bytes:
        if isinstance(ct, SeededCiphertext):
            raw = ct.dump()
        elif isinstance(ct, SeedSum):
            assert self.lists is not None
            raw = self.lists.write(ct)
        else:
            raw = bytes(ct.to_string(seal.compr_mode_type.none))
        return zstd_if_smaller(raw)

    def add_ct(self, acc: Any, ct: Any) -> Any:
        mine, more = self.listed(acc), self.listed(ct)
        if self.lists is not None and mine is not None and more is not None:
            if self.lists.fits(mine, more):
                return self.lists.add(mine, more)
        # a sum of seeded ciphertexts in full: its c1 is the sum of the seeds' expansions
        return self.evaluator.add(self.full(acc), self.full(ct))

    def sub_ct(self, acc: Any, ct: Any) -> Any:
        if self.lists is not None and isinstance(acc, SeedSum) and isinstance(ct, SeedSum):
            return self.lists.take_back(acc, ct)
        acc = self.full(acc)
        self.evaluator.sub_inplace(acc, self.full(ct))
        return acc

    def part_shape(self, part: bytes) -> tuple[str, int] | None:
        """From the part's first bytes (a zstd frame is unpacked only that far)."""
        try:
            head = zstd_head(part, HEAD_BYTES) if part[:4] == ZSTD_MAGIC else part[:HEAD_BYTES]
            if head[:4] == LIST_MAGIC:
                return "seed_list", COUNT.unpack_from(head, len(LIST_MAGIC))[0]
            return ("seeded", 1) if seeded_head(head) else ("full", 0)
        except (ProtocolError, struct.error):
            return None

    def unzip(self, index: int, part: bytes) -> bytes:
        """A part as SEAL (or a seed list) wrote it: zstd-compressed ones are decompressed, never
        beyond the size a part of these parameters has."""
        if part[:4] != ZSTD_MAGIC:
            return part
        try:
            return unzstd(part, self.raw_bytes)
        except ProtocolError as exc:
            raise ProtocolError(f"ciphertext {index} {exc}") from None

    def load_part(self, index: int, part: bytes, slot_count: int) -> Any:
        raw = self.unzip(index, part)
        if self.lists is not None and raw[:4] == LIST_MAGIC:
            return self.lists.read(index, raw)
        if raw[:2] != SEAL_MAGIC:
            raise ProtocolError(f"ciphertext {index} is not a SEAL ciphertext")
        if self.lists is not None:
            try:
                layout = parse(raw)
            except ProtocolError as exc:
                raise ProtocolError(f"ciphertext {index}: {exc}") from None
            if layout.seed is not None:  # kept as c0 and its seed: nothing is expanded
                return self.lists.of_seeded(index, layout)
        ct = seal.Ciphertext()
        try:
            ct.load_bytes(self.ctx, raw)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise ProtocolError(
                f"ciphertext {index} does not load in this experiment's context: {exc}"
            ) from None
        check_seal_ciphertext(index, ct, self.parms_id, self.enc)
        return ct


class SealCkks(CkksEncoding, SealScheme):
    def __init__(self, enc: HeParams, size: int, keys: KeyRing) -> None:
        super().__init__(enc, size, keys)
        self.encoder = seal.CKKSEncoder(self.ctx)

    def plain(self, chunk: np.ndarray) -> Any:
        return self.encoder.encode(np.ascontiguousarray(chunk, dtype=np.float64), self.enc.scale)

    def decrypt_part(self, ct: Any) -> np.ndarray:
        return np.asarray(self.encoder.decode(self.decrypting().decrypt(self.full(ct))))


class SealBfv(BfvEncoding, SealScheme):
    def __init__(self, enc: HeParams, size: int, keys: KeyRing, seed: int) -> None:
        super().__init__(enc, size, keys)
        self.setup_encoding(enc, seed)
        self.encoder = seal.BatchEncoder(self.ctx)

    def plain(self, chunk: np.ndarray) -> Any:
        return self.encoder.encode(np.ascontiguousarray(chunk, dtype=np.int64))

    def decrypt_part(self, ct: Any) -> np.ndarray:
        plain = self.decrypting().decrypt(self.full(ct))
        return np.asarray(self.encoder.decode(plain), dtype=np.int64)
