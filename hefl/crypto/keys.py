"""Key material by role: a secret context for clients (from disk only), a keyless one for everyone else.

`generate` writes key_dir/secret.ctx (mode 600: secret and public key, no galois or relin keys, which
addition never needs), key_dir/public.ctx (parameters only: it can load and add, not decrypt) and
key_dir/params.json (what they were made for). Loading checks the kind it expects and the parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tenseal as ts

from hefl.config import EncryptionConfig
from hefl.crypto.params import batching_prime, coeffs, fingerprint
from hefl.errors import ConfigError

SECRET, PUBLIC, PARAMS = "secret.ctx", "public.ctx", "params.json"


@dataclass(frozen=True)
class KeyRing:
    """The TenSEAL context one node works with; `private` only on clients."""

    context: Any  # tenseal.Context
    private: bool
    key_id: str = ""  # clients: which key pair (all clients of an experiment must agree)


def new_context(enc: EncryptionConfig) -> Any:
    """A fresh context (with a new secret key) for the config's parameters."""
    if enc.scheme == "ckks":
        ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=enc.poly_modulus_degree,
                         coeff_mod_bit_sizes=list(coeffs(enc)))
        ctx.global_scale = 2.0**enc.scale_bits
        return ctx
    return ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=enc.poly_modulus_degree,
                      plain_modulus=batching_prime(enc.plain_modulus_bits, enc.poly_modulus_degree),
                      coeff_mod_bit_sizes=list(coeffs(enc)))


def public_part(ctx: Any) -> bytes:
    """The context with no keys at all: parameters only (about 100 bytes)."""
    return bytes(ctx.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=False,
                               save_relin_keys=False))


def key_id(ctx: Any) -> str:
    """Names a key pair (a hash of its public key): clients of one experiment must agree on it."""
    blob = ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
    return hashlib.sha256(blob).hexdigest()[:16]


def generate(enc: EncryptionConfig, key_dir: Path) -> None:
    """Write an experiment's key material; the folder and the secret file are its owner's only."""
    ctx = new_context(enc)
    key_dir.mkdir(parents=True, exist_ok=True)
    key_dir.chmod(0o700)
    secret = ctx.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
    path = key_dir / SECRET
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secret)
    (key_dir / PUBLIC).write_bytes(public_part(ctx))
    (key_dir / PARAMS).write_text(json.dumps({**fingerprint(enc), "key_id": key_id(ctx)}, indent=1) + "\n")


def _check_params(enc: EncryptionConfig, key_dir: Path) -> str:
    """Refuse keys made for other parameters; return the key id they were made with."""
    try:
        made_for = json.loads((key_dir / PARAMS).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"encryption.key_dir: no readable {key_dir / PARAMS} ({exc}); run ./seal.sh") from None
    made_id = str(made_for.pop("key_id", ""))
    if made_for != fingerprint(enc):
        raise ConfigError(f"encryption: the keys in {key_dir} were made for {made_for}, the config asks for "
                          f"{fingerprint(enc)}; run ./seal.sh for this config")
    return made_id


def load_secret(enc: EncryptionConfig) -> KeyRing:
    """A client's context, from its key folder; refuses a file without a secret key."""
    key_dir = Path(enc.key_dir)
    made_id = _check_params(enc, key_dir)
    try:
        ctx = ts.context_from((key_dir / SECRET).read_bytes())
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"encryption.key_dir: cannot load {key_dir / SECRET}: {exc}") from None
    if not ctx.is_private():
        raise ConfigError(f"encryption.key_dir: {key_dir / SECRET} holds no secret key")
    if enc.scheme == "ckks":
        ctx.global_scale = 2.0**enc.scale_bits
    found = key_id(ctx)
    if made_id and found != made_id:
        raise ConfigError(f"encryption.key_dir: {key_dir / SECRET} is key {found}, {key_dir / PARAMS} says {made_id}; "
                          "copy both from the same ./seal.sh run")
    return KeyRing(ctx, private=True, key_id=found)


def read_public(enc: EncryptionConfig) -> bytes:
    """What `agg` pushes to switches and the aggregator: the keyless context from the key folder."""
    key_dir = Path(enc.key_dir)
    _check_params(enc, key_dir)
    try:
        return (key_dir / PUBLIC).read_bytes()
    except OSError as exc:
        raise ConfigError(f"encryption.key_dir: cannot read {key_dir / PUBLIC}: {exc.strerror}; run ./seal.sh") from None


def load_public(enc: EncryptionConfig, data: bytes) -> KeyRing:
    """A switch's or the aggregator's context from the pushed bytes; refuses anything with a secret key."""
    try:
        ctx = ts.context_from(data)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"push.context: not a TenSEAL context: {exc}") from None
    if ctx.is_private():
        raise ConfigError("push.context: holds a secret key; only clients may have one")
    expected = list(new_context(enc).seal_context().data.first_parms_id())  # once, at configure time
    if list(ctx.seal_context().data.first_parms_id()) != expected:
        raise ConfigError(f"push.context: made for other parameters than the config's {fingerprint(enc)}")
    if enc.scheme == "ckks":
        ctx.global_scale = 2.0**enc.scale_bits
    return KeyRing(ctx, private=False)
