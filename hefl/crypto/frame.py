"""Several ciphertexts in one binary body: magic, count, lengths, then the bytes as serialized."""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence

from hefl.errors import ProtocolError

# a framed body as it arrived: bytes, or the bytearray the HTTP layer read it into
# (hefl.node.wire.Body)
Payload = bytes | bytearray
MAGIC = b"HEF1"


def frame(parts: Sequence[bytes]) -> bytes:
    head = MAGIC + struct.pack(f"<I{len(parts)}I", len(parts), *(len(p) for p in parts))
    return b"".join([head, *parts])  # one copy of the ciphertexts, not two


def frame_lengths(payload: Payload, count: int) -> tuple[int, ...]:
    """The part lengths a framed body declares, checked against its size (nothing is copied)."""
    if len(payload) < 8 or payload[:4] != MAGIC:
        raise ProtocolError(f"payload of {len(payload)} bytes is not a framed ciphertext list")
    (found,) = struct.unpack_from("<I", payload, 4)
    if found != count:
        raise ProtocolError(f"payload holds {found} ciphertexts, expected {count}")
    start = 8 + 4 * count
    if len(payload) < start:
        raise ProtocolError("payload ends inside its header")
    lengths: tuple[int, ...] = struct.unpack_from(f"<{count}I", payload, 8)
    if start + sum(lengths) != len(payload):
        raise ProtocolError(
            f"payload is {len(payload)} bytes, its header says {start + sum(lengths)}"
        )
    return lengths


def unframe(payload: Payload, count: int) -> Iterator[bytes]:
    """The `count` parts of a framed body, one at a time (a part is copied out only when asked for:
    a loader never holds a second copy of the whole body); the frame is checked before the first
    part, and anything else than `count` parts is a ProtocolError."""
    lengths = frame_lengths(payload, count)

    def parts() -> Iterator[bytes]:
        at = 8 + 4 * count
        view = memoryview(payload)
        for n in lengths:
            yield bytes(view[at : at + n])
            at += n

    return parts()
