"""Run a node under gunicorn: one worker (node state lives in its memory), several threads."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from blueprints import NodeServer
from hefl.address import Address


class _NodeApplication(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any], log_dir: Path, token: str) -> None:
        self.options = options
        self.log_dir = log_dir
        self.token = token
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> NodeServer:
        return NodeServer(self.log_dir, self.token)  # built in the worker, not in the master


def return_large_buffers(threshold: int = 1 << 20) -> bool:
    """Make glibc hand every buffer of `threshold` bytes or more back to the system when freed.

    By default glibc raises its mmap threshold up to 32 MiB after freeing a large buffer, so later
    bodies and payloads (24 MB for a 1M-parameter CKKS update) come from the heap and stay resident
    after use: an adding switch of 4 children peaked at 347 MB instead of 238 MB. False where the C
    library has no `mallopt` (not glibc): nothing changes there."""
    try:
        libc = ctypes.CDLL(None)
        m_mmap_threshold = -3  # glibc's malloc.h
        return bool(libc.mallopt(m_mmap_threshold, threshold))
    except (OSError, AttributeError):
        return False


def serve(host: str, port: int, log_dir: Path, token: str, threads: int = 8) -> None:
    """Serve until SIGTERM/SIGINT; never needs a terminal."""
    return_large_buffers()  # before gunicorn forks its worker, which inherits the setting
    options = {
        "bind": Address(host.strip("[]"), port).netloc(port),  # an IPv6 host in brackets
        "workers": 1,
        "worker_class": "gthread",
        "threads": threads,
        "timeout": 120,
        "graceful_timeout": 5,
        "loglevel": "warning",
        "accesslog": None,
        # one shared ~/.gunicorn/gunicorn.ctl would clash between local nodes
        "control_socket_disable": True,
    }
    _NodeApplication(options, log_dir, token).run()
