"""A key folder: the files `generate_keys` writes there and what they were made for.

No HE library needed. secret.ctx (mode 600: clients only), keyless.ctx (the parameters without any
key: it can load and add ciphertexts, not decrypt; `agg` pushes it to switches and the aggregator)
and params.json (the parameters' fingerprint and the key id). The HE library's backend writes and
loads the contexts.
"""

from __future__ import annotations

import json
from pathlib import Path

from hefl.crypto.params import HeParams, fingerprint
from hefl.errors import ConfigError

SECRET, KEYLESS, PARAMS = "secret.ctx", "keyless.ctx", "params.json"


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
