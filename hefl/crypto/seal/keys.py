"""SEAL-Python key material by role: the secret key for clients, the parameters for everyone else.

`generate` writes key_dir/secret.ctx (mode 600: the encryption parameters and the secret key, in
one frame; clients encrypt with the secret key, as with TenSEAL), key_dir/keyless.ctx (the
encryption parameters alone: no key at all) and key_dir/params.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import seal

from hefl.crypto.frame import MAGIC, frame, unframe
from hefl.crypto.keydir import SECRET, key_id, read_secret, write_keys
from hefl.crypto.params import HeParams, batching_prime, coeffs, fingerprint
from hefl.crypto.scheme import KeyRing
from hefl.errors import ConfigError, ProtocolError


@dataclass(frozen=True)
class SealKeys:
    """What a node holds: the context, and on clients the secret key."""

    parms: Any  # seal.EncryptionParameters
    context: Any  # seal.SEALContext
    secret: Any = None  # seal.SecretKey, clients only


def _kind(enc: HeParams) -> Any:
    return seal.scheme_type.ckks if enc.scheme == "ckks" else seal.scheme_type.bfv


def parameters(enc: HeParams) -> Any:
    """SEAL's encryption parameters for the config's (the primes as TenSEAL makes them)."""
    n = enc.poly_modulus_degree
    parms = seal.EncryptionParameters(_kind(enc))
    parms.set_poly_modulus_degree(n)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(n, list(coeffs(enc))))
    if enc.scheme == "bfv":
        parms.set_plain_modulus(batching_prime(enc.plain_modulus_bits, n))
    return parms


def context(parms: Any) -> Any:
    ctx = seal.SEALContext(parms, True, seal.sec_level_type.tc128)
    if not ctx.parameters_set():
        found = ctx.parameter_error_message()
        raise ConfigError(f"encryption: SEAL refuses the parameters: {found}")
    return ctx


def generate(enc: HeParams, key_dir: Path) -> None:
    parms = parameters(enc)
    ctx = context(parms)
    secret = seal.KeyGenerator(ctx).secret_key()
    blob = bytes(parms.to_bytes(seal.compr_mode_type.none))
    write_keys(enc, key_dir, frame([blob, bytes(secret.to_string())]), blob)


def _same(parms: Any, enc: HeParams) -> bool:
    return list(context(parms).first_parms_id()) == list(context(parameters(enc)).first_parms_id())


def load_secret(enc: HeParams, key_dir: Path) -> KeyRing:
    data = read_secret(enc, key_dir)
    try:
        blob, secret = unframe(data, 2)
        parms = seal.EncryptionParameters(_kind(enc))
        parms.load_bytes(blob)
        ctx = context(parms)
        key = ctx.from_secret_str(secret)
    except (ProtocolError, ValueError, RuntimeError, TypeError) as exc:
        raise ConfigError(f"encryption.key_dir: cannot load {key_dir / SECRET}: {exc}") from None
    if not _same(parms, enc):
        raise ConfigError(f"encryption.key_dir: {key_dir / SECRET} holds other parameters")
    return KeyRing(SealKeys(parms, ctx, key), private=True, key_id=key_id(data))


def load_keyless(enc: HeParams, data: bytes) -> KeyRing:
    if data[:4] == MAGIC:
        raise ConfigError("push.context: holds a secret key; only clients may have one")
    try:
        parms = seal.EncryptionParameters(_kind(enc))
        parms.load_bytes(bytes(data))
        ctx = context(parms)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ConfigError(f"push.context: not SEAL encryption parameters: {exc}") from None
    if bytes(parms.to_bytes(seal.compr_mode_type.none)) != bytes(data):
        raise ConfigError("push.context: holds more than SEAL encryption parameters")
    if not _same(parms, enc):
        raise ConfigError(
            f"push.context: made for other parameters than the config's {fingerprint(enc)}"
        )
    return KeyRing(SealKeys(parms, ctx), private=False)
