"""Run a node under gunicorn: one worker (node state lives in its memory), several threads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from blueprints import NodeServer
from blueprints.worker import NodeWorker
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


def serve(
    host: str, port: int, log_dir: Path, token: str, threads: int = 8, title: str = "main.py node"
) -> None:
    """Serve until SIGTERM/SIGINT; never needs a terminal. `ps` shows the two processes as
    `gunicorn: master [TITLE]` and `gunicorn: worker [TITLE]` (setproctitle, requirements.txt)."""
    options = {
        "bind": Address(host.strip("[]"), port).netloc(port),  # an IPv6 host in brackets
        "workers": 1,
        "worker_class": NodeWorker,  # gthread that reads request heads before a thread takes them
        "threads": threads,
        # no worker timeout: a node busy for minutes (long training, a paused process resumed)
        # keeps its worker and so its state; the controller names a node that stops answering
        "timeout": 0,
        "graceful_timeout": 5,
        "loglevel": "warning",
        "accesslog": None,
        # one shared ~/.gunicorn/gunicorn.ctl would clash between local nodes
        "control_socket_disable": True,
        "proc_name": title,
    }
    _NodeApplication(options, log_dir, token).run()
