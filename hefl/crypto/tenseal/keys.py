"""TenSEAL key material by role: a secret context for clients, a keyless one for everyone else.

The secret context comes from disk only. `generate` writes key_dir/secret.ctx (mode 600: the secret
key of a symmetric context, so clients encrypt with it, 2-3x faster than with a public key and
with less fresh noise; no public, galois or relin keys: nothing needs them), key_dir/keyless.ctx
(parameters only: no key at all) and key_dir/params.json (what they were made for, and the key id).
Loading checks the kind it expects and the parameters.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import tenseal as ts

from hefl.crypto.keydir import PARAMS, SECRET, check_params, key_id, write_keys
from hefl.crypto.params import HeParams, batching_prime, coeffs, fingerprint
from hefl.crypto.scheme import KeyRing
from hefl.errors import ConfigError

log = logging.getLogger(__name__)


def new_context(enc: HeParams, symmetric: bool = True) -> Any:
    """A fresh context (with a new secret key) for these parameters; `symmetric` encrypts with the
    secret key (what clients do) and has no public key."""
    kind = ts.ENCRYPTION_TYPE.SYMMETRIC if symmetric else ts.ENCRYPTION_TYPE.ASYMMETRIC
    if enc.scheme == "ckks":
        ctx = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=enc.poly_modulus_degree,
            coeff_mod_bit_sizes=list(coeffs(enc)),
            encryption_type=kind,
        )
        return with_scale(ctx, enc)
    return ts.context(
        ts.SCHEME_TYPE.BFV,
        poly_modulus_degree=enc.poly_modulus_degree,
        plain_modulus=batching_prime(enc.plain_modulus_bits, enc.poly_modulus_degree),
        coeff_mod_bit_sizes=list(coeffs(enc)),
        encryption_type=kind,
    )


def with_scale(ctx: Any, enc: HeParams) -> Any:
    """A CKKS context encodes at the parameters' scale (a context as loaded has none set)."""
    if enc.scheme == "ckks":
        ctx.global_scale = enc.scale
    return ctx


def context_bytes(ctx: Any, public: bool = False, secret: bool = False) -> bytes:
    """A TenSEAL context serialized with the keys asked for (never galois or relinearization
    keys: adding needs neither, and they would make it 10-40x larger)."""
    return bytes(
        ctx.serialize(
            save_public_key=public,
            save_secret_key=secret,
            save_galois_keys=False,
            save_relin_keys=False,
        )
    )


def keyless_part(ctx: Any) -> bytes:
    """The context with no keys at all: parameters only (about 100 bytes)."""
    return context_bytes(ctx)


def public_key_id(ctx: Any) -> str | None:
    """The id older versions gave a key pair (a hash of its public key); None for a symmetric
    context, which has no public key."""
    try:
        blob = context_bytes(ctx, public=True)
        ctx.public_key()
    except ValueError:
        return None
    return hashlib.sha256(blob).hexdigest()[:16]


def generate(enc: HeParams, key_dir: Path) -> None:
    """Write an experiment's key material; the folder and the secret file are its owner's only."""
    ctx = new_context(enc)
    secret = context_bytes(ctx, secret=True)
    write_keys(enc, key_dir, secret, keyless_part(ctx))


def load_secret(enc: HeParams, key_dir: Path) -> KeyRing:
    """A client's context, from its key folder; refuses a file without a secret key."""
    made_id = check_params(enc, key_dir)
    try:
        secret = (key_dir / SECRET).read_bytes()
        ctx = ts.context_from(secret)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"encryption.key_dir: cannot load {key_dir / SECRET}: {exc}") from None
    if not ctx.is_private():
        raise ConfigError(f"encryption.key_dir: {key_dir / SECRET} holds no secret key")
    found = key_id(secret)
    if made_id and found != made_id:
        if made_id != public_key_id(ctx):
            raise ConfigError(
                f"encryption.key_dir: {key_dir / SECRET} is key {found}, "
                f"{key_dir / PARAMS} says {made_id}; copy both from the same ./seal.sh run"
            )
        # an older seal.sh's key pair: it works as it is, encrypting with its public key
        log.warning(
            "%s was made by an older ./seal.sh: clients encrypt with its public key, 2-3x "
            "slower than with the secret key, and send full ciphertexts (never seeded); run "
            "./seal.sh again for symmetric encryption",
            key_dir / SECRET,
        )
        found = made_id
    return KeyRing(with_scale(ctx, enc), private=True, key_id=found)


def load_keyless(enc: HeParams, data: bytes) -> KeyRing:
    """A switch's or the aggregator's context from pushed bytes; refuses any with a secret key."""
    try:
        ctx = ts.context_from(data)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"push.context: not a TenSEAL context: {exc}") from None
    if ctx.is_private():
        raise ConfigError("push.context: holds a secret key; only clients may have one")
    # once, at configure time
    expected = list(new_context(enc).seal_context().data.first_parms_id())
    if list(ctx.seal_context().data.first_parms_id()) != expected:
        raise ConfigError(
            f"push.context: made for other parameters than the config's {fingerprint(enc)}"
        )
    return KeyRing(with_scale(ctx, enc), private=False)
