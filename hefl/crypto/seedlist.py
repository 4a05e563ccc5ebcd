"""Sums of seeded ciphertexts as seed lists: c0 summed, c1 left as its contributors' seeds.

A sum of seeded ciphertexts has c1 = the sum of the seeds' expansions, so an adding node can keep
and send the sum of the c0s with the seeds instead of c1 (no key is needed for either), and whoever
needs the ciphertext itself (a node whose children sent different forms, a client decrypting the
global result) expands the seeds. Expanding costs its receiver SHAKE256 per contributor, so a sum
goes as a seed list only while it holds at most `encryption.seed_list_max` seeds; beyond, full.

A seed-list part (inside the usual frame of parts, zstd-compressed where that is smaller, as a
SEAL ciphertext is): the magic `HSL1` (the version in its last byte), the number of seeds k (u32),
k seeds of 64 bytes, then c0 as primes x n little-endian 64-bit residues, each below its prime.
Everything else about the ciphertext (parameter level, NTT form, scale) is the experiment's own
for a fresh ciphertext and is not sent: a receiver builds it from its context.
"""

from __future__ import annotations

import struct
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from hefl.crypto.chunked import ChunkedScheme
from hefl.crypto.frame import Payload, unframe
from hefl.crypto.seeding import MEMBERS, SEED_BYTES, WORDS, Layout, add_mod, sub_mod
from hefl.errors import ProtocolError

MAGIC = b"HSL1"
COUNT = struct.Struct("<I")


@dataclass
class SeedSum:
    """c0 of a sum of seeded ciphertexts, and the seeds whose expansions sum to its c1."""

    c0: np.ndarray  # (primes, n) residues, this sum's own (changed in place)
    seeds: list[bytes]


class SeedLists:
    """Seed-list arithmetic for one experiment: read, check, add, take back and write (none of it
    needs a key; expanding a list into a ciphertext is the library's part)."""

    def __init__(self, members: bytes, primes: list[int], n: int, most: int) -> None:
        """`members`: what every fresh ciphertext of the experiment carries, byte for byte (SEAL's
        Ciphertext members: parms_id, NTT form, size 2, n, primes, scale, correction factor)."""
        self.members = members
        self.q = np.array(primes, dtype=WORDS)[:, None]
        self.n = n
        self.most = most

    def of_seeded(self, index: int, layout: Layout) -> SeedSum:
        """A client's seeded ciphertext as a sum of one, checked as SEAL's loader would."""
        if layout.seed is None or layout.members != self.members:
            mine, theirs = MEMBERS.unpack(self.members), MEMBERS.unpack(layout.members)
            if mine[:5] == theirs[:5] and mine[6] == theirs[6]:  # all but the scale agree
                raise ProtocolError(
                    f"ciphertext {index} has scale {theirs[5]!r}, expected {mine[5]!r}"
                )
            raise ProtocolError(
                f"ciphertext {index} is not a ciphertext of this experiment's parameters"
            )
        return SeedSum(self.residues(index, layout.polys[0]), [layout.seed])

    def read(self, index: int, raw: bytes) -> SeedSum:
        """A seed-list part, checked: its length, its seed count, every residue below its prime."""
        (k,) = COUNT.unpack_from(raw, len(MAGIC)) if len(raw) >= 8 else (0,)
        words = 8 * self.q.size * self.n
        if not 1 <= k <= self.most or len(raw) != len(MAGIC) + COUNT.size + SEED_BYTES * k + words:
            raise ProtocolError(
                f"ciphertext {index}: a seed list of {len(raw)} bytes is not c0 and 1 to "
                f"{self.most} seeds (encryption.seed_list_max) of this experiment"
            )
        at = len(MAGIC) + COUNT.size
        seeds = [raw[at + SEED_BYTES * i : at + SEED_BYTES * (i + 1)] for i in range(k)]
        if len(set(seeds)) != k:
            raise ProtocolError(f"ciphertext {index}: a seed list names one seed twice")
        c0 = np.frombuffer(raw, dtype=WORDS, offset=at + SEED_BYTES * k).reshape(self.q.size, -1)
        return SeedSum(self.residues(index, c0), seeds)

    def residues(self, index: int, c0: np.ndarray) -> np.ndarray:
        if c0.shape != (self.q.size, self.n) or bool((c0 >= self.q).any()):
            raise ProtocolError(f"ciphertext {index} holds a residue at or above its prime")
        return c0.copy()

    def write(self, total: SeedSum) -> bytes:
        words = np.ascontiguousarray(total.c0, dtype=WORDS).tobytes()
        return b"".join([MAGIC, COUNT.pack(len(total.seeds)), *total.seeds, words])

    def fits(self, total: SeedSum, more: SeedSum) -> bool:
        return len(total.seeds) + len(more.seeds) <= self.most

    def add(self, total: SeedSum, more: SeedSum) -> SeedSum:
        """total + more, in place (the caller checked that the seeds fit). A seed the sum holds
        already is refused: seeds are fresh per ciphertext, so it is an update sent twice (another
        client's, replayed). This is a check on what a seed list can show, not replay
        protection: a replay in full form, or into a sum that went full, goes unseen, and a
        replay that arrives first gets the genuine update refused instead (who sent what is the
        identity issue's)."""
        if set(more.seeds) & set(total.seeds):
            raise ProtocolError("repeats a seed the sum holds already (an update sent twice?)")
        total.c0 = add_mod(total.c0, more.c0, self.q)
        total.seeds += more.seeds
        return total

    def take_back(self, total: SeedSum, added: SeedSum) -> SeedSum:
        """total - added, for a part added last (its seeds are the list's last ones)."""
        total.c0 = sub_mod(total.c0, added.c0, self.q)
        del total.seeds[len(total.seeds) - len(added.seeds) :]
        return total


class ListedScheme(ChunkedScheme):
    """A chunked scheme whose totals may hold seed lists: after every load or add (and after a
    refused payload was taken back) a total whose parts went full some but not all (seeds beyond
    seed_list_max, or children of both forms) is made full in every part, so that a payload has
    one form. A backend mixes it in before its own scheme class and says how to go full."""

    lists: Any  # the backend's SeedLists (SEAL-Python's: None where seed lists are off)

    @abstractmethod
    def full(self, ct: Any) -> Any:
        """The library's ciphertext itself: a seed list expanded, a seeded one as it is held."""

    @abstractmethod
    def part_shape(self, part: bytes) -> tuple[str, int] | None:
        """A part's form and how many seeds it carries, from its first bytes (None: unreadable)."""

    def part_form(self, part: bytes) -> str | None:
        shape = self.part_shape(part)
        return None if shape is None else shape[0]

    def load_into(self, total: list[Any] | None, payload: Payload) -> list[Any]:
        """As ChunkedScheme's; a sum of seed lists that this payload makes full (too many seeds,
        or a full payload) is built beside it, so that a refused payload leaves the seed lists as
        they were (not merely their values)."""
        if total is None or not isinstance(total[0], SeedSum) or self.stays_listed(total, payload):
            return self.load_one_form(total, payload)
        total[:] = self.load_one_form([self.full(t) for t in total], payload)
        return total

    def stays_listed(self, total: list[Any], payload: Payload) -> bool:
        """Whether adding the payload keeps the sum a seed list (by its first part's head)."""
        try:  # at most one part is read (a body still arriving: from the wire, into its spool)
            first = next(iter(unframe(payload, self.chunks, self.part_limit)), b"")
        except ProtocolError:
            first = b""  # refused with its reason when it loads
        shape = self.part_shape(first) if first else None
        seeds = shape[1] if shape is not None else 0
        most = self.lists.most if self.lists is not None else 0
        return 0 < seeds and len(total[0].seeds) + seeds <= most

    def load_one_form(self, total: list[Any] | None, payload: Payload) -> list[Any]:
        try:
            return self.one_form(super().load_into(total, payload))
        except BaseException:
            if total is not None:
                self.one_form(total)  # a refused payload's parts were taken back: of one form
            raise

    def add_into(self, total: list[Any] | None, loaded: list[Any]) -> list[Any]:
        return self.one_form(super().add_into(total, loaded))

    def one_form(self, total: list[Any]) -> list[Any]:
        listed = [isinstance(t, SeedSum) for t in total]
        if any(listed) and not all(listed):
            total[:] = [self.full(t) for t in total]
        return total
