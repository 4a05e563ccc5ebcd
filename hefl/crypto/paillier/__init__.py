"""The Paillier backend (phe, with gmpy2): additively homomorphic big-integer ciphertexts, with
BatchCrypt-style packing (hefl.crypto.encoding.PaillierEncoding).

A ciphertext is c = (1 + m n) r^n mod n^2; adding two multiplies them mod n^2. Clients hold the
private key (the primes p, q); switches and the aggregator get the public key n, which adds but
cannot decrypt. Clients encrypt with the public key: r^n, the costly half, does not depend on the
values, so `precompute` makes it ahead of time.

Importing this package imports phe and gmpy2 (pip install -r requirements-he.txt).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from importlib.metadata import version as _version
from pathlib import Path
from typing import Any

import gmpy2
import numpy as np
from phe import paillier

from hefl.crypto.chunked import ChunkedScheme
from hefl.crypto.encoding import PaillierEncoding, unpack_lanes
from hefl.crypto.keydir import SECRET, key_id, read_secret, write_keys
from hefl.crypto.params import HeParams
from hefl.crypto.scheme import KeyRing, Scheme
from hefl.errors import ConfigError, ProtocolError

__all__ = ["generate", "load_keyless", "load_secret", "make_scheme", "version"]


@dataclass(frozen=True)
class PaillierKeys:
    n: Any  # the public modulus (gmpy2.mpz)
    private: Any = None  # phe's PaillierPrivateKey, clients only


def generate(enc: HeParams, key_dir: Path) -> None:
    public, private = paillier.generate_paillier_keypair(n_length=enc.key_bits)
    secret = json.dumps({"n": str(public.n), "p": str(private.p), "q": str(private.q)})
    write_keys(enc, key_dir, secret.encode(), _public(public.n))


def _public(n: int) -> bytes:
    return json.dumps({"n": str(n)}).encode()


def _decimal(found: object) -> bool:
    return isinstance(found, str) and found.isascii() and found.isdecimal()


def _modulus(found: object, enc: HeParams, where: str) -> int:
    if not _decimal(found):
        raise ConfigError(f"{where}: n is not a decimal integer")
    n = int(str(found))
    if n.bit_length() != enc.key_bits:
        raise ConfigError(
            f"{where}: a {n.bit_length()}-bit key, the config's encryption.key_bits is "
            f"{enc.key_bits}"
        )
    return n


def load_secret(enc: HeParams, key_dir: Path) -> KeyRing:
    data = read_secret(enc, key_dir)
    where = f"encryption.key_dir: {key_dir / SECRET}"
    try:
        held = json.loads(data)
    except ValueError:
        held = None
    # no part of the file in the message: it would be key material
    if not isinstance(held, dict) or not (_decimal(held.get("p")) and _decimal(held.get("q"))):
        raise ConfigError(f"{where}: not a Paillier private key (n, p and q in decimal)")
    p, q = int(held["p"]), int(held["q"])
    n = _modulus(held.get("n"), enc, where)
    if p * q != n:
        raise ConfigError(f"{where}: p x q is not n")
    private = paillier.PaillierPrivateKey(paillier.PaillierPublicKey(n), p, q)
    return KeyRing(PaillierKeys(gmpy2.mpz(n), private), private=True, key_id=key_id(data))


def load_keyless(enc: HeParams, data: bytes) -> KeyRing:
    try:
        held = json.loads(bytes(data))
    except ValueError as exc:
        raise ConfigError(f"push.context: not a Paillier public key: {exc}") from None
    if not isinstance(held, dict) or set(held) != {"n"}:
        found = sorted(held) if isinstance(held, dict) else type(held).__name__
        raise ConfigError(
            f"push.context: a Paillier public key holds n alone, this holds {found}"
            + ("; only clients may hold the private key" if "p" in found else "")
        )
    return KeyRing(PaillierKeys(gmpy2.mpz(_modulus(held["n"], enc, "push.context"))), False)


def make_scheme(enc: HeParams, size: int, keys: KeyRing, seed: int) -> Scheme:
    if enc.scheme != "paillier":
        raise ValueError(f"phe has no scheme {enc.scheme!r}")
    return PaillierScheme(enc, size, keys, seed)


def version() -> str:
    return f"phe {_version('phe')}, gmpy2 {_version('gmpy2')}"


class PaillierScheme(PaillierEncoding, ChunkedScheme):
    """Each ciphertext is 2 x key_bits / 8 bytes, big-endian, on the wire."""

    def __init__(self, enc: HeParams, size: int, keys: KeyRing, seed: int) -> None:
        self.width = 2 * enc.key_bits // 8
        super().__init__(enc, size, keys.private, self.width)
        self.setup_encoding(enc, seed)
        held: PaillierKeys = keys.context
        self.n = held.n
        self.n2 = held.n * held.n
        self.private = held.private

    def encrypt_zero(self, slot_count: int) -> Any:
        """r^n mod n^2 for a random r in 1..n-1: an encryption of 0 (r is a unit: n has no factor
        below 2^(key_bits/2 - 1))."""
        r = gmpy2.mpz(secrets.randbelow(int(self.n) - 1) + 1)
        return gmpy2.powmod(r, self.n, self.n2)

    def add_plain(self, ct: Any, chunk: int) -> Any:
        return (ct * (1 + gmpy2.mpz(chunk) * self.n)) % self.n2

    def encrypt_chunk(self, chunk: int) -> Any:
        return self.add_plain(self.encrypt_zero(0), chunk)

    def dump_part(self, ct: Any) -> bytes:
        return int(ct).to_bytes(self.width, "big")

    def load_part(self, index: int, part: bytes, slot_count: int) -> Any:
        if len(part) != self.width:
            raise ProtocolError(
                f"ciphertext {index} is {len(part)} bytes; a {self.enc.key_bits}-bit key's are "
                f"{self.width}"
            )
        c = gmpy2.mpz(int.from_bytes(part, "big"))
        if not 0 < c < self.n2 or gmpy2.gcd(c, self.n) != 1:
            raise ProtocolError(f"ciphertext {index} is not a ciphertext of this experiment's key")
        return c

    def add_ct(self, acc: Any, ct: Any) -> Any:
        return (acc * ct) % self.n2

    def sub_ct(self, acc: Any, ct: Any) -> Any:
        return (acc * gmpy2.invert(ct, self.n2)) % self.n2

    def decrypt_part(self, ct: Any) -> np.ndarray:
        if self.private is None:  # a switch or the aggregator: the public key alone
            raise ValueError("this paillier context holds no secret_key (p, q): it cannot decrypt")
        m = self.private.raw_decrypt(int(ct))
        return unpack_lanes(m, self.lane, self.slots)
