"""Local mode's node processes, forked from its own process: the modules every node imports are
loaded once, in `main.py local`, and each node starts as a copy-on-write copy of it instead of a
fresh interpreter that imports them again (an idle node cost 1.3 s of CPU that way, a client 3 s
more for torch; forked, about 0.1 s)."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

NodeMain = Callable[[list[str]], int]  # `main.py ARGV` run in this process; its exit status


class Forked:
    """A forked node process, with the part of `subprocess.Popen` local mode uses."""

    def __init__(self, pid: int, args: list[str]) -> None:
        self.pid = pid
        self.args = args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """Its exit status (negative: the signal that ended it), or None while it runs."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: its status is lost
                self.returncode = 255
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            time.sleep(0.01)
        return code

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def can_fork() -> bool:
    """Forking is safe only from a process with no other Python thread (one might hold a lock the
    copy would wait on forever); native threads of numpy's BLAS handle fork themselves."""
    return hasattr(os, "fork") and threading.active_count() == 1


STOPS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}  # the controller's; a node's are its own


def fork_node(node_main: NodeMain, command: list[str], out: Path, env: dict[str, str]) -> Forked:
    """Run `command` (`python main.py node ...`) as `node_main(command[2:])` in a forked copy of
    this process: in its own process group (as `Popen(process_group=0)`), with `env` as its
    environment, its output in `out` (opened here: a file it cannot make is this process's
    OSError), and only its standard streams open (as Popen's close_fds)."""
    sink = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        sys.stdout.flush()  # what is buffered here would otherwise be written twice
        sys.stderr.flush()
        # a signal in the fork's window waits until each side has its own handlers
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
        try:
            pid = os.fork()
            if pid == 0:
                _become_node(node_main, command, sink, env)
            with contextlib.suppress(OSError):  # the child does it too: whichever runs first
                os.setpgid(pid, pid)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    finally:
        os.close(sink)
    return Forked(pid, command)


def _become_node(
    node_main: NodeMain, command: list[str], sink: int, env: dict[str, str]
) -> NoReturn:
    """The forked side: never returns into the code that forked it (that is the controller)."""
    code = 1
    try:
        os.setpgid(0, 0)
        for signum in STOPS:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)
        null = os.open(os.devnull, os.O_RDONLY)
        for fd, to in ((null, 0), (sink, 1), (sink, 2)):
            os.dup2(fd, to)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the controller's files are not the node's
        if hasattr(sys.stdout, "reconfigure"):
            sys.stdout.reconfigure(line_buffering=True)  # as PYTHONUNBUFFERED would
        os.environ.clear()
        os.environ.update(env)
        sys.argv = command[1:]  # what gunicorn re-executes on SIGUSR2: this node, not the run
        _set_title(" ".join(command))
        code = node_main(command[2:])
    except SystemExit as exc:  # as the interpreter takes it
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        # an interpreter's exit, less the teardown of every module: threads joined (request
        # threads, a process pool's manager), then the atexit handlers, then the streams
        join_threads = threading._shutdown  # type: ignore[attr-defined]
        for step in (join_threads, atexit._run_exitfuncs, sys.stdout.flush, sys.stderr.flush):
            with contextlib.suppress(BaseException):
                step()
        os._exit(code)


def _set_title(title: str) -> None:
    """What ps shows for this process until gunicorn names it (else the controller's command)."""
    try:
        from setproctitle import setproctitle
    except ImportError:
        return
    setproctitle(title)
