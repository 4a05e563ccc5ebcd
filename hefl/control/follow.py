"""A controller that outlives its terminal: `main.py agg --detach` runs it in a session of its own
(an ssh drop's SIGHUP does not reach it), writing what it prints to <run>/controller.log, and
`main.py follow` shows that output as it comes, from any terminal, and has a detached controller
take the run over when its controller is gone (killed): the rounds run on the nodes, not in the
controller."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hefl.errors import HeflError
from hefl.records import LogFormatError, RunRecord
from hefl.results.report import controller_gone

LOG = "controller.log"  # what a detached controller prints, in its run folder
LOCK = ".controller.lock"  # held by the process that took a run over
POLL_S = 0.3


def spawn(argv: list[str], run: Path) -> subprocess.Popen[bytes]:
    """`main.py ARGV` in a session of its own (no terminal: its SIGHUP and Ctrl-C pass it by),
    its output appended to the run's controller.log (mode 600: it holds the live page's key)."""
    run.mkdir(parents=True, exist_ok=True)
    out = os.open(run / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        with open(os.devnull, "rb") as devnull:
            return subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve().parents[2] / "main.py"), *argv],
                stdin=devnull,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
    finally:
        os.close(out)


def detach(argv: list[str], log_dir: Path, experiment: str) -> int:
    """Start `main.py agg ARGV` for `experiment` detached (`spawn`); returns its pid once it wrote
    its run.json (or exited first: an error)."""
    run = log_dir / experiment
    child = spawn(argv, run)
    while child.poll() is None and not (run / "run.json").is_file():
        time.sleep(0.1)
    if child.poll() is not None and not (run / "run.json").is_file():
        said = (run / LOG).read_text(errors="replace").strip().splitlines()
        raise HeflError(
            f"the detached controller exited at once ({child.returncode}): "
            f"{said[-1] if said else 'no output'}"
        )
    return child.pid


@contextmanager
def controlling(run: Path) -> Iterator[bool]:
    """Whether this process may take the run over: it holds the run's take-over lock (flock,
    released when it exits, however it exits); a second `follow` gets False."""
    fd = os.open(run / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def latest_run(log_dir: Path) -> Path:
    """The run under log_dir that started last (its run.json's `started`)."""
    best: tuple[str, Path] | None = None
    for run in log_dir.iterdir() if log_dir.is_dir() else ():
        try:
            record = RunRecord.from_json(json.loads((run / "run.json").read_text()))
        except (OSError, ValueError, LogFormatError):
            continue
        key = (record.started or "", run)
        if best is None or key > best:
            best = key
    if best is None:
        raise HeflError(f"no run under {log_dir}")
    return best[1]


def read_record(run: Path) -> RunRecord:
    try:
        return RunRecord.from_json(json.loads((run / "run.json").read_text()))
    except (OSError, ValueError, LogFormatError) as exc:
        raise HeflError(f"{run}: not a run folder ({exc})") from None


def follow(
    run: Path, take_over: list[str], out: Callable[[str], None] = print, wait_s: float = 60.0
) -> int:
    """Show what the run's controller prints (its controller.log) until the run ends; when its
    controller is gone, start a detached one that takes it over (`main.py ARGV`, TAKE_OVER) and
    show its output too. 0: the run finished; 1: it failed (or no controller took it over within
    `wait_s`). Ctrl-C stops the following only."""
    log = run / LOG
    at = 0
    spawned: float | None = None
    while True:
        record = read_record(run)
        ended = record.status != "running"
        if log.is_file():
            with open(log, "rb") as fh:
                fh.seek(at)
                chunk = fh.read()
            # whole lines only while the run goes on (the rest comes next time); all at the end
            whole = chunk if ended else chunk[: chunk.rfind(b"\n") + 1]
            at += len(whole)
            for line in whole.decode(errors="replace").splitlines():
                out(line)
        if ended:
            out(f"{run.name}: {record.status}" + (f": {record.error}" if record.error else ""))
            return 0 if record.status == "finished" else 1
        gone = controller_gone(record)
        if gone and spawned is None:
            out(f"{run.name}: {gone}; a detached controller takes it over")
            spawn(take_over, run)
            spawned = time.monotonic()
        elif gone and spawned is not None and time.monotonic() - spawned > wait_s:
            raise HeflError(
                f"{run.name}: no controller took it over within {wait_s:g}s: see the end of "
                f"{run / LOG}"
            )
        elif not gone and not log.is_file():
            raise HeflError(
                f"{run.name} runs, with its controller (pid {record.controller_pid}) in another "
                "terminal, not detached: its output is there (`main.py agg --detach` writes it "
                f"to {run.name}/{LOG})"
            )
        time.sleep(POLL_S)
