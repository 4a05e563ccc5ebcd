"""TenSEAL's messages read and written without protobuf: the wire format as far as TenSEAL's
vectors and contexts use it, a vector's fields, and what a context holds that seeding needs.

A serialized CKKSVector or BFVVector is field 1 `sizes` (packed uint32, slots per ciphertext),
field 2 `ciphertexts` (repeated bytes: SEAL's `Ciphertext::save`) and, CKKS only, field 3 `scale`
(a double). A context (TenSEALContextProto) is field 1 the encryption parameters (SEAL's save,
whose header carries the version TenSEAL's SEAL writes and loads), field 3 the private context,
whose field 1 is SEAL's SecretKey save. Everything read from a peer is read strictly: a message
that is not exactly this is a ProtocolError in one line, never an IndexError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hefl.crypto.seeding import HEADER, MAGIC
from hefl.errors import ProtocolError

VARINT, FIXED64, BYTES, FIXED32 = 0, 1, 2, 5  # the wire types TenSEAL's messages use
SIZES, CIPHERTEXTS, SCALE = 1, 2, 3  # a vector's fields
PARAMETERS, PRIVATE, SECRET_KEY = 1, 3, 1  # a context's, and its private context's
DOUBLE = struct.Struct("<d")

Field = tuple[int, int, int | bytes]  # number, wire type, value (an int for varints)


def read_varint(raw: bytes, at: int) -> tuple[int, int]:
    """The varint at `at` and where it ends (at most 10 bytes: a 64-bit value)."""
    value = 0
    for shift in range(0, 70, 7):
        if at >= len(raw):
            raise ProtocolError("the message ends inside a varint")
        byte = raw[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
    raise ProtocolError("a varint runs past 10 bytes")


def read_fields(raw: bytes) -> list[Field]:
    """Every field of a message, in order; wire types other than TenSEAL's are refused."""
    fields: list[Field] = []
    at = 0
    while at < len(raw):
        key, at = read_varint(raw, at)
        number, kind = key >> 3, key & 7
        if number == 0:
            raise ProtocolError("a field numbered 0")
        value, at = _read_value(raw, at, kind)
        fields.append((number, kind, value))
    return fields


def _read_value(raw: bytes, at: int, kind: int) -> tuple[int | bytes, int]:
    if kind == VARINT:
        return read_varint(raw, at)
    if kind == BYTES:
        width, at = read_varint(raw, at)
    elif kind in (FIXED64, FIXED32):
        width = 8 if kind == FIXED64 else 4
    else:
        raise ProtocolError(f"wire type {kind} is none TenSEAL writes")
    if at + width > len(raw):
        raise ProtocolError("a field runs past the end of the message")
    return raw[at : at + width], at + width


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(number: int, kind: int, value: int | bytes) -> bytes:
    """One field as protobuf writes it (bytes are length-prefixed, fixed widths as they are)."""
    key = varint(number << 3 | kind)
    if isinstance(value, int):
        return key + varint(value)
    return key + (varint(len(value)) + value if kind == BYTES else value)


# ------------------------------------------------------------------- TenSEAL's vectors


@dataclass(frozen=True)
class Vector:
    """A serialized TenSEAL vector's fields."""

    sizes: tuple[int, ...]  # slots per ciphertext
    ciphertexts: tuple[bytes, ...]  # SEAL's Ciphertext::save, each
    scale: float | None  # CKKS's; None for BFV


def read_vector(raw: bytes, ckks: bool) -> Vector:
    """A CKKSVector's (or BFVVector's) fields; a field of another number or type is refused."""
    sizes: list[int] = []
    ciphertexts: list[bytes] = []
    scale = None
    for number, kind, value in read_fields(raw):
        if (number, kind) == (SIZES, BYTES) and isinstance(value, bytes):
            sizes += _packed(value)
        elif (number, kind) == (SIZES, VARINT) and isinstance(value, int):
            sizes.append(value)
        elif (number, kind) == (CIPHERTEXTS, BYTES) and isinstance(value, bytes):
            ciphertexts.append(value)
        elif (number, kind) == (SCALE, FIXED64) and ckks and isinstance(value, bytes):
            (scale,) = DOUBLE.unpack(value)
        else:
            which = "CKKS" if ckks else "BFV"
            raise ProtocolError(f"field {number} (wire type {kind}) is not a {which} vector's")
    return Vector(tuple(sizes), tuple(ciphertexts), scale)


def _packed(raw: bytes) -> list[int]:
    """A packed repeated varint field's values."""
    values, at = [], 0
    while at < len(raw):
        value, at = read_varint(raw, at)
        values.append(value)
    return values


def write_vector(vector: Vector) -> bytes:
    """The bytes TenSEAL writes for these fields (its loaders read them back)."""
    parts = [field(SIZES, BYTES, b"".join(varint(s) for s in vector.sizes))]
    parts += [field(CIPHERTEXTS, BYTES, ct) for ct in vector.ciphertexts]
    if vector.scale is not None:
        parts.append(field(SCALE, FIXED64, DOUBLE.pack(vector.scale)))
    return b"".join(parts)


# ------------------------------------------------------------------- TenSEAL's contexts


def only(fields: list[Field], number: int, what: str) -> bytes:
    """The one bytes field of this number (a context of our own: a ValueError if not one)."""
    found = [v for n, k, v in fields if n == number and k == BYTES and isinstance(v, bytes)]
    if len(found) != 1:
        raise ValueError(f"the TenSEAL context holds {len(found)} {what}, expected 1")
    return found[0]


def context_secret(raw: bytes) -> bytes:
    """SEAL's save of the secret key a serialized context holds (compressed as SEAL wrote it)."""
    private = only(read_fields(raw), PRIVATE, "private contexts")
    return only(read_fields(private), SECRET_KEY, "secret keys")


def context_version(raw: bytes) -> tuple[int, int]:
    """The SEAL version (major, minor) a serialized context's parameters were written with:
    what this TenSEAL's SEAL writes, and the only one it loads."""
    parameters = only(read_fields(raw), PARAMETERS, "parameter sets")
    if len(parameters) < HEADER.size or HEADER.unpack_from(parameters)[0] != MAGIC:
        raise ValueError("the TenSEAL context's parameters are not a SEAL object")
    _, _, major, minor, _, _, _ = HEADER.unpack_from(parameters)
    return major, minor
