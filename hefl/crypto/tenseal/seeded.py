"""TenSEAL's ckks and bfv with seeded ciphertexts: clients send each fresh vector seeded
(hefl/crypto/tenseal/seeder.py), and adders keep sums of seeded updates as seed lists (c0 and the
contributors' seeds, hefl/crypto/seedlist.py) while they hold at most encryption.seed_list_max
seeds, as SEAL-Python's backend does (hefl/crypto/seal/schemes.py).

A seeded part is kept as c0 and its seed without expanding it, checked as strictly as TenSEAL's
loader and `check_vector` check a full one (one ciphertext, the right slot count, the members of a
fresh ciphertext of this experiment byte for byte, every residue below its prime). A seed list is
turned into a TenSEAL vector with TenSEAL's own loader: c0 with the first seed, zeros with the
others, each in SEAL's seeded layout inside a vector message, then added. Sums past the limit, and
sums of children of both forms, go full in every part (a payload has one form).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal as ts

from hefl.crypto.encoding import BfvEncoding, CkksEncoding
from hefl.crypto.params import HeParams
from hefl.crypto.scheme import KeyRing
from hefl.crypto.seeding import HEAD_BYTES, Layout, dump, fresh_members, parse, seeded_head
from hefl.crypto.seedlist import COUNT, ListedScheme, SeedLists, SeedSum
from hefl.crypto.seedlist import MAGIC as LIST_MAGIC
from hefl.crypto.tenseal.base import TensealScheme
from hefl.crypto.tenseal.keys import context_bytes
from hefl.crypto.tenseal.packing import inflate, inflate_head
from hefl.crypto.tenseal.proto import Vector, context_version, read_vector, write_vector
from hefl.crypto.tenseal.seeder import Loader, SeededVector, Seeder, data_primes, symmetric
from hefl.crypto.zstd import ZSTD_MAGIC, unzstd, zstd_head
from hefl.crypto.zstd import zstd_if_smaller as packed
from hefl.errors import ProtocolError


@dataclass
class VectorSum(SeedSum):
    """A seed list of one vector: its slot count is the vector's (a seed-list part carries none:
    the receiver knows it from the chunk's place)."""

    slots: int = 0


class Expander:
    """Seed lists into TenSEAL vectors, with TenSEAL's own loader (no key needed)."""

    def __init__(self, ctx: Any, loader: Loader, members: bytes, scale: float | None) -> None:
        self.ctx = ctx
        self.loader = loader
        self.members = members
        self.scale = scale
        self.version = context_version(context_bytes(ctx))  # what this TenSEAL's SEAL loads

    def expand(self, total: VectorSum) -> Any:
        """The vector itself: the loader expands each seed (c0 with the first, zeros with the
        others), and the pieces are added."""
        vector = self.load(total.c0, total.seeds[0], total.slots)
        zeros = np.zeros_like(total.c0)
        for seed in total.seeds[1:]:
            vector.add_(self.load(zeros, seed, total.slots))
        return vector

    def load(self, c0: np.ndarray, seed: bytes, slots: int) -> Any:
        seeded = dump(Layout(self.version, self.members, c0[None], seed))
        return self.loader(self.ctx, write_vector(Vector((slots,), (seeded,), self.scale)))


class SeededScheme(ListedScheme, TensealScheme):
    """A TenSEAL scheme whose clients send seeded vectors and whose adders add seed lists."""

    def __init__(self, enc: HeParams, size: int, keys: KeyRing, loader: Loader) -> None:
        super().__init__(enc, size, keys, loader)
        self.ckks = enc.scheme == "ckks"
        mine = keys.private and symmetric(self.ctx)  # an older key folder's go full
        self.seeder = Seeder(self.ctx, enc, loader) if mine else None
        primes, n = data_primes(enc), enc.poly_modulus_degree
        scale = enc.scale if self.ckks else 1.0
        members = fresh_members(self.parms_id, self.ckks, n, len(primes), scale)
        self.lists = SeedLists(members, primes, n, enc.seed_list_max)
        self.expander = Expander(self.ctx, loader, members, enc.scale if self.ckks else None)

    # the client's part

    def encrypt_chunk(self, chunk: np.ndarray) -> Any:
        return self.seeded(super().encrypt_chunk(chunk))

    def encrypt_zero(self, slot_count: int) -> Any:
        zero = self.seeded(super().encrypt_zero(slot_count))
        if isinstance(zero, SeededVector):
            zero.load()  # now, off the critical path: adding the values to it needs it
        return zero

    def seeded(self, vector: Any) -> Any:
        return vector if self.seeder is None else self.seeder.seed(vector)  # a fresh seed

    def add_plain(self, ct: Any, chunk: np.ndarray) -> Any:
        if not isinstance(ct, SeededVector):
            return super().add_plain(ct, chunk)
        ct.add_plain(chunk.tolist())  # into a seeded zero: c0 changes, c1 stays the seed's
        return ct

    def decrypt_part(self, ct: Any) -> np.ndarray:
        return super().decrypt_part(self.full(ct))

    # both forms

    def full(self, ct: Any) -> Any:
        """The TenSEAL vector itself: a client's seeded one holds it; a seed list is expanded."""
        if isinstance(ct, SeededVector):
            return ct.vector
        if isinstance(ct, VectorSum):
            return self.expander.expand(ct)
        return ct

    def listed(self, ct: Any) -> VectorSum | None:
        """`ct` as a seed list where seed lists are in use and it is seeded, else None."""
        if self.lists.most == 0:
            return None
        if isinstance(ct, SeededVector):
            message = read_vector(ct.dump(), self.ckks)
            return self.of_seeded(0, self.layout(0, message.ciphertexts[0]), message.sizes[0])
        return ct if isinstance(ct, VectorSum) else None

    def of_seeded(self, index: int, layout: Layout, slots: int) -> VectorSum:
        one = self.lists.of_seeded(index, layout)
        return VectorSum(one.c0, one.seeds, slots)

    def dump_part(self, ct: Any) -> bytes:
        if isinstance(ct, SeededVector):
            return ct.dump()
        if isinstance(ct, VectorSum):
            return packed(self.lists.write(ct))
        return super().dump_part(ct)

    # the adders' part

    def add_ct(self, acc: Any, ct: Any) -> Any:
        mine, more = self.listed(acc), self.listed(ct)
        if mine is not None and more is not None and self.lists.fits(mine, more):
            return self.lists.add(mine, more)
        # a sum of seeded vectors in full: its c1 is the sum of the seeds' expansions
        return self.full(acc).add(self.full(ct))

    def sub_ct(self, acc: Any, ct: Any) -> Any:
        if isinstance(acc, VectorSum) and isinstance(ct, VectorSum):
            return self.lists.take_back(acc, ct)
        return self.full(acc).sub(self.full(ct))  # a new vector: a client's own stays as it is

    # loading

    def load_part(self, index: int, part: bytes, slot_count: int) -> Any:
        if self.lists.most == 0:
            return super().load_part(index, part, slot_count)  # TenSEAL expands seeded ones
        if part[:4] in (ZSTD_MAGIC, LIST_MAGIC):
            return self.read_list(index, part, slot_count)
        message = self.vector(index, part, slot_count)
        layout = self.layout(index, message.ciphertexts[0])
        if layout.seed is None:  # a full one: TenSEAL loads and checks it, as ever
            return super().load_part(index, part, slot_count)
        return self.of_seeded(index, layout, slot_count)  # kept as c0 and its seed

    def read_list(self, index: int, part: bytes, slot_count: int) -> VectorSum:
        """A seed-list part (zstd-compressed or not), checked (hefl.crypto.seedlist)."""
        raw = part
        if part[:4] == ZSTD_MAGIC:
            try:
                raw = unzstd(part, self.part_bytes)
            except ProtocolError as exc:
                raise ProtocolError(f"ciphertext {index} {exc}") from None
        if raw[:4] != LIST_MAGIC:
            raise ProtocolError(f"ciphertext {index} is neither a TenSEAL vector nor a seed list")
        one = self.lists.read(index, raw)
        return VectorSum(one.c0, one.seeds, slot_count)

    def vector(self, index: int, part: bytes, slot_count: int) -> Vector:
        """A vector message's fields, checked as `load_part` and `check_vector` check a loaded
        vector: one ciphertext, `slot_count` slots, CKKS's scale."""
        try:
            message = read_vector(part, self.ckks)
        except ProtocolError as exc:
            raise ProtocolError(f"ciphertext {index} is not a TenSEAL vector: {exc}") from None
        count = len(message.ciphertexts)
        if count != 1:
            raise ProtocolError(f"ciphertext {index} holds {count} SEAL ciphertexts, expected 1")
        if message.sizes != (slot_count,):
            found = sum(message.sizes)
            raise ProtocolError(f"ciphertext {index} holds {found} slots, expected {slot_count}")
        scale, want = message.scale, self.enc.scale
        if self.ckks and not (scale is not None and abs(scale - want) <= 1e-6 * want):
            raise ProtocolError(
                f"ciphertext {index} has scale {scale!r}, expected 2^{self.enc.scale_bits}"
            )
        return message

    def layout(self, index: int, saved: bytes) -> Layout:
        """A SEAL ciphertext's bytes taken apart, in the one version this TenSEAL loads."""
        try:
            raw = inflate(saved, self.part_bytes)
        except ProtocolError as exc:
            raise ProtocolError(f"ciphertext {index} {exc}") from None
        try:
            layout = parse(raw)
        except ProtocolError as exc:
            raise ProtocolError(f"ciphertext {index}: {exc}") from None
        if layout.version != self.expander.version:
            raise ProtocolError(
                f"ciphertext {index} is SEAL {layout.version[0]}.{layout.version[1]}'s, this "
                f"TenSEAL loads {self.expander.version[0]}.{self.expander.version[1]} only"
            )
        return layout

    def part_shape(self, part: bytes) -> tuple[str, int] | None:
        """From the part's first bytes (zstd is unpacked only that far)."""
        try:
            if part[:4] == ZSTD_MAGIC:
                part = zstd_head(part, len(LIST_MAGIC) + COUNT.size)
            if part[:4] == LIST_MAGIC:
                return "seed_list", COUNT.unpack_from(part, len(LIST_MAGIC))[0]
            (saved,) = read_vector(part, self.ckks).ciphertexts
            seeded = seeded_head(inflate_head(saved, HEAD_BYTES))
            return ("seeded", 1) if seeded else ("full", 0)
        except (ValueError, struct.error):  # ProtocolError included
            return None


class SeededCkks(CkksEncoding, SeededScheme):
    make = staticmethod(ts.ckks_vector)

    def __init__(self, enc: HeParams, size: int, keys: KeyRing) -> None:
        super().__init__(enc, size, keys, ts.ckks_vector_from)


class SeededBfv(BfvEncoding, SeededScheme):
    make = staticmethod(ts.bfv_vector)

    def __init__(self, enc: HeParams, size: int, keys: KeyRing, seed: int) -> None:
        super().__init__(enc, size, keys, ts.bfv_vector_from)
        self.setup_encoding(enc, seed)
