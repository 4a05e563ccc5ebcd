"""SEAL's compressed objects and zstd parts, never unpacked beyond a bound (a zstd bomb is refused
before it is unpacked).

TenSEAL's SEAL saves an object as a 16-byte SEALHeader (its compression mode: zstd, 2) and one zstd
frame of everything after the header; `inflate` makes it the uncompressed object SEAL would save
with compression none (mode 0, the size fixed), which hefl/crypto/seeding.py reads, and `deflate`
does the reverse. TenSEAL's SEAL loads both modes. (Plain zstd frames: hefl/crypto/zstd.py.)
"""

from __future__ import annotations

import zstandard

from hefl.crypto.seeding import HEADER, MAGIC
from hefl.crypto.zstd import LEVEL, unzstd, zstd_head
from hefl.errors import ProtocolError

NONE, ZSTD = 0, 2  # seal::compr_mode_type


def _header(obj: bytes) -> tuple[int, int, int]:
    """A SEAL object's (major, minor, compression mode), its header checked against its size."""
    if len(obj) < HEADER.size:
        raise ProtocolError(f"a SEAL object of {len(obj)} bytes has no header")
    magic, size, major, minor, mode, reserved, total = HEADER.unpack_from(obj)
    if magic != MAGIC or size != HEADER.size or reserved or total != len(obj) or major != 4:
        raise ProtocolError("is not a SEAL 4 object, or its header does not match its size")
    return major, minor, mode


def inflate(obj: bytes, limit: int) -> bytes:
    """A SEAL object (compression none or zstd) as SEAL saves it uncompressed, at most `limit`
    bytes."""
    major, minor, mode = _header(obj)
    if mode == NONE:
        if len(obj) > limit:
            raise ProtocolError(f"is {len(obj)} bytes, a part here has at most {limit}")
        return obj
    if mode != ZSTD:
        raise ProtocolError(f"is saved with SEAL compression mode {mode}, not zstd (2) or none (0)")
    body = unzstd(obj[HEADER.size :], limit - HEADER.size)
    return HEADER.pack(MAGIC, HEADER.size, major, minor, NONE, 0, HEADER.size + len(body)) + body


def inflate_head(obj: bytes, count: int) -> bytes:
    """The first `count` bytes of `inflate(obj)`, unpacking no further."""
    major, minor, mode = _header(obj)
    if mode == NONE:
        return obj[:count]
    if mode != ZSTD:
        raise ProtocolError(f"is saved with SEAL compression mode {mode}, not zstd (2) or none (0)")
    body = zstd_head(obj[HEADER.size :], count - HEADER.size)
    return HEADER.pack(MAGIC, HEADER.size, major, minor, NONE, 0, 0) + body


def deflate(obj: bytes) -> bytes:
    """An uncompressed SEAL object saved with zstd where that is smaller, as SEAL would."""
    major, minor, _ = _header(obj)
    body = zstandard.ZstdCompressor(level=LEVEL).compress(obj[HEADER.size :])
    if HEADER.size + len(body) >= len(obj):
        return obj
    return HEADER.pack(MAGIC, HEADER.size, major, minor, ZSTD, 0, HEADER.size + len(body)) + body
