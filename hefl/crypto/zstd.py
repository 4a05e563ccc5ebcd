"""zstd frames on the wire, never unpacked beyond a bound (a zstd bomb is refused before it is
unpacked): parts that are sent compressed where that is smaller (SEAL-Python's ciphertexts, seed
lists), and peeks at a part's first bytes for its form. Errors are ProtocolErrors to be prefixed
with the part they are about ("ciphertext 3 ...")."""

from __future__ import annotations

import zstandard

from hefl.errors import ProtocolError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
LEVEL = 3  # zstd's default, SEAL's too


def unzstd(data: bytes, limit: int) -> bytes:
    """One zstd frame's content, which must declare its size, at most `limit` bytes (SEAL and
    zstandard both declare it); zstd then never writes past it."""
    try:
        size = zstandard.frame_content_size(data)
        if not 0 < size <= limit:
            raise ProtocolError(f"unpacks to {size} bytes, a part here has at most {limit}")
        # a decompressor per call: zstandard's are not thread-safe
        return bytes(zstandard.ZstdDecompressor().decompress(data, max_output_size=limit))
    except zstandard.ZstdError as exc:
        raise ProtocolError(f"is not a zstd frame: {exc}") from None


def zstd_head(data: bytes, count: int) -> bytes:
    """The first `count` bytes a zstd frame unpacks to, unpacking no further."""
    try:
        return bytes(zstandard.ZstdDecompressor().stream_reader(data).read(count))
    except zstandard.ZstdError as exc:
        raise ProtocolError(f"is not a zstd frame: {exc}") from None


def zstd_if_smaller(raw: bytes) -> bytes:
    """`raw` as a zstd frame where that is smaller (residues below 2^40 in 64-bit words), else as
    it is (60-bit residues do not compress)."""
    packed = zstandard.ZstdCompressor(level=LEVEL).compress(raw)  # one per call, as above
    return packed if len(packed) < len(raw) else raw
