"""The experiment's shared credential: every state-changing request carries it in X-Hefl-Token."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger(__name__)
DEFAULT_TOKEN = Path("keys/token")


def read_token(path: Path, warn: bool = True) -> str:
    """$HEFL_TOKEN, else the token file, else "" (a node without one accepts anyone and says so)."""
    token = os.environ.get("HEFL_TOKEN") or (path.read_text().strip() if path.is_file() else "")
    if not token and warn:
        log.warning(
            "no credential (%s missing, HEFL_TOKEN unset): any host that reaches this port can "
            "configure the node; run `python main.py token` and copy the file to every node",
            path,
        )
    return token


def create_token(path: Path) -> bool:
    """Write a new random credential (mode 600) unless the file exists; True if written."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(24) + "\n")
    return True


def read_key(token: str, experiment: str) -> str:
    """The live page's read-only credential of one run, derived from the experiment's credential
    and the run's id: it opens that run's page and /status (GET) on the aggregator and nothing
    else, so the address `agg` and `local` print, and the browser cookie it sets, never carry the
    credential that configures nodes, and a run's line opens no later run's page."""
    message = f"hefl live page: read only: {experiment}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()[:32]
