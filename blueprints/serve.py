"""Run a node under gunicorn: one worker (node state lives in its memory), several threads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from blueprints import NodeServer
from blueprints.worker import NodeWorker
from hefl.address import Address


class _NodeApplication(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any], log_dir: Path, token: str, listen: str) -> None:
        self.options = options
        self.log_dir = log_dir
        self.token = token
        self.listen = listen
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> NodeServer:
        # built in the worker, not in the master: a worker that restarts rejoins here
        return NodeServer(self.log_dir, self.token, self.listen)


def serve(
    host: str,
    port: int,
    log_dir: Path,
    token: str,
    threads: int = 8,
    title: str = "main.py node",
    rejoin: bool = True,
) -> None:
    """Serve until SIGTERM/SIGINT; never needs a terminal. `ps` shows the two processes as
    `gunicorn: master [TITLE]` and `gunicorn: worker [TITLE]` (setproctitle, requirements.txt).
    `rejoin`: a client keeps what it needs to take up its experiment after a restart, under
    log_dir/.rejoin (hefl/node/rejoin.py)."""
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
    listen = f"{host.strip('[]')}:{port}" if rejoin else ""
    _NodeApplication(options, log_dir, token, listen).run()
