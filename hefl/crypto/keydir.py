"""A key folder: the files `generate_keys` writes there and what they were made for.

No HE library needed. secret.ctx (mode 600: clients only), keyless.ctx (the parameters without any
key: it can load and add ciphertexts, not decrypt; `agg` pushes it to switches and the aggregator)
and params.json (the parameters' fingerprint and the key id). The HE library's backend writes and
loads the contexts.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from hefl.crypto.params import HeParams, fingerprint
from hefl.errors import ConfigError

SECRET, KEYLESS, PARAMS = "secret.ctx", "keyless.ctx", "params.json"


def key_id(secret: bytes) -> str:
    """Names a secret key: a hash of the secret file as `generate_keys` wrote it (clients of one
    experiment must agree on it). Two independent keys get different ids, and no one without the
    secret file can compute it; the hash reveals nothing of the key."""
    return hashlib.sha256(b"hefl key id\0" + secret).hexdigest()[:16]


def write_keys(enc: HeParams, key_dir: Path, secret: bytes, keyless: bytes) -> None:
    """Write an experiment's key files; the folder and the secret file are its owner's only."""
    key_dir.mkdir(parents=True, exist_ok=True)
    key_dir.chmod(0o700)
    path = key_dir / SECRET
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secret)
    (key_dir / KEYLESS).write_bytes(keyless)
    write_params(enc, key_dir, key_id(secret))


def read_secret(enc: HeParams, key_dir: Path) -> bytes:
    """A client's secret file, after checking it was made for these parameters and is the key
    params.json names."""
    made_id = check_params(enc, key_dir)
    try:
        secret = (key_dir / SECRET).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"encryption.key_dir: cannot read {key_dir / SECRET}: {exc.strerror}; run ./seal.sh"
        ) from None
    if made_id and key_id(secret) != made_id:
        raise ConfigError(
            f"encryption.key_dir: {key_dir / SECRET} is key {key_id(secret)}, "
            f"{key_dir / PARAMS} says {made_id}; copy both from the same ./seal.sh run"
        )
    return secret


def write_params(enc: HeParams, key_dir: Path, key_id: str) -> None:
    (key_dir / PARAMS).write_text(
        json.dumps({**fingerprint(enc), "key_id": key_id}, indent=1) + "\n"
    )


def _made_for(key_dir: Path) -> dict[str, object]:
    made_for = json.loads((key_dir / PARAMS).read_text())
    if not isinstance(made_for, dict):
        raise ValueError("not a JSON object")
    return made_for


def check_params(enc: HeParams, key_dir: Path) -> str:
    """Refuse keys made for other parameters; return the key id they were made with."""
    try:
        made_for = _made_for(key_dir)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"encryption.key_dir: no readable {key_dir / PARAMS} ({exc}); run ./seal.sh"
        ) from None
    made_id = str(made_for.pop("key_id", ""))
    if made_for != fingerprint(enc):
        raise ConfigError(
            f"encryption: the keys in {key_dir} were made for {made_for}, the config asks for "
            f"{fingerprint(enc)}; run ./seal.sh for this config"
        )
    return made_id


def keys_match(enc: HeParams, key_dir: Path) -> bool:
    """Whether `key_dir` holds a secret context made for these parameters (local mode reuses it)."""
    try:
        made_for = _made_for(key_dir)
    except (OSError, ValueError):
        return False
    made_for.pop("key_id", None)  # names the key pair; the parameters are the rest
    return made_for == fingerprint(enc) and (key_dir / SECRET).is_file()


def read_keyless(enc: HeParams, key_dir: Path) -> bytes:
    """What `agg` pushes to switches and the aggregator: the keyless context from the key folder."""
    check_params(enc, key_dir)
    try:
        return (key_dir / KEYLESS).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"encryption.key_dir: cannot read {key_dir / KEYLESS}: {exc.strerror}; run ./seal.sh"
        ) from None
