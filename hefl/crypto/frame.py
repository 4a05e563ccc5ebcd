"""Several ciphertexts in one binary body: magic and count, then each part as its length and its
bytes (as serialized). A part's length comes just before it, so a sender writes each part as it is
made (no table of lengths up front: a zstd part's size is known only once it is packed) and a
receiver reads each part as it arrives, checking its length against the most a part may have before
it reads a byte of it. On the wire such a body goes chunked (its total is not known in advance);
8 + 4 x count bytes of framing, as many as a table would take."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

from hefl.errors import ProtocolError

MAGIC = b"HEF2"
HEAD = struct.Struct("<4sI")  # magic, count
LENGTH = struct.Struct("<I")  # before each part
NO_LIMIT = (1 << 32) - 1


class PartSource(Protocol):
    """A body that is read as it arrives (hefl.node.body.Incoming): its parts, one at a time; a
    second pass reads again what the first one read (from a spool on disk)."""

    def parts(self, count: int, limit: int = NO_LIMIT) -> Iterator[bytes]: ...

    def __len__(self) -> int: ...


# a framed body: bytes in memory, the bytearray the HTTP layer read, or a body still arriving
Payload = bytes | bytearray | PartSource


def frame_head(count: int) -> bytes:
    return HEAD.pack(MAGIC, count)


def frame_part(part: bytes) -> bytes:
    """A part's length prefix (the part follows it)."""
    return LENGTH.pack(len(part))


def frame(parts: Sequence[bytes]) -> bytes:
    out = [frame_head(len(parts))]
    for p in parts:
        out += (frame_part(p), p)
    return b"".join(out)


def frame_lengths(payload: bytes | bytearray, count: int) -> tuple[int, ...]:
    """The part lengths of a framed body in memory, checked against its size (nothing copied)."""
    return tuple(n for _, n in _spans(payload, count))


def _spans(payload: bytes | bytearray, count: int) -> list[tuple[int, int]]:
    """(start, length) of each part of a framed body in memory; anything else is a ProtocolError."""
    if len(payload) < HEAD.size or payload[:4] != MAGIC:
        raise ProtocolError(f"payload of {len(payload)} bytes is not a framed ciphertext list")
    (found,) = struct.unpack_from("<I", payload, 4)
    if found != count:
        raise ProtocolError(f"payload holds {found} ciphertexts, expected {count}")
    at, spans = HEAD.size, []
    for i in range(count):
        if at + LENGTH.size > len(payload):
            raise ProtocolError(f"payload ends before ciphertext {i}'s length")
        (n,) = LENGTH.unpack_from(payload, at)
        at += LENGTH.size
        if at + n > len(payload):
            raise ProtocolError(
                f"payload ends inside ciphertext {i} ({len(payload) - at} of its {n} bytes)"
            )
        spans.append((at, n))
        at += n
    if at != len(payload):
        raise ProtocolError(f"payload has {len(payload) - at} bytes after its {count} ciphertexts")
    return spans


def unframe(payload: Payload, count: int, limit: int = NO_LIMIT) -> Iterator[bytes]:
    """The `count` parts of a framed body, one at a time (a part is copied out only when asked for:
    a loader never holds a second copy of the whole body). In memory the frame is checked before
    the first part; a body still arriving is checked part by part as it is read. A part longer
    than `limit`, or anything else than `count` parts, is a ProtocolError."""
    if not isinstance(payload, bytes | bytearray):
        return payload.parts(count, limit)
    spans = _spans(payload, count)
    for i, (_, n) in enumerate(spans):
        _check_length(i, n, limit)

    def parts() -> Iterator[bytes]:
        view = memoryview(payload)
        for at, n in spans:
            yield bytes(view[at : at + n])

    return parts()


def read_parts(read: Callable[[int], bytes], count: int, limit: int = NO_LIMIT) -> Iterator[bytes]:
    """The parts of a framed body read from a stream (`read(n)` gives up to n bytes, fewer only at
    its end): each length is checked against `limit` before the part is read, and the stream must
    end after the last part."""
    head = _exactly(read, HEAD.size, "the frame's head")
    if head[:4] != MAGIC:
        raise ProtocolError("body is not a framed ciphertext list")
    (found,) = struct.unpack_from("<I", head, 4)
    if found != count:
        raise ProtocolError(f"payload holds {found} ciphertexts, expected {count}")
    for i in range(count):
        (n,) = LENGTH.unpack(_exactly(read, LENGTH.size, f"ciphertext {i}'s length"))
        _check_length(i, n, limit)
        yield _exactly(read, n, f"ciphertext {i}")
    if read(1):
        raise ProtocolError(f"payload has bytes after its {count} ciphertexts")


def _check_length(index: int, n: int, limit: int) -> None:
    if n > limit:  # before any parsing: a ciphertext of this experiment cannot be larger
        raise ProtocolError(
            f"ciphertext {index} is {n} bytes, a ciphertext of this experiment has at most {limit}"
        )


def _exactly(read: Callable[[int], bytes], n: int, what: str) -> bytes:
    got = read(n)
    if len(got) == n:
        return got
    pieces, have = [got], len(got)
    while have < n and (more := read(n - have)):
        pieces.append(more)
        have += len(more)
    if have < n:
        raise ProtocolError(f"body ends inside {what} ({have} of its {n} bytes came)")
    return b"".join(pieces)


def stream(parts: Iterable[bytes], count: int) -> Iterator[bytes]:
    """A framed body as pieces to send as they are made: the head, then each part's length and
    the part (`parts` must give `count` of them)."""
    yield frame_head(count)
    made = 0
    for p in parts:
        yield frame_part(p)
        yield p
        made += 1
    if made != count:
        raise ValueError(f"{made} parts made, the frame says {count}")
