"""A controller that outlives its terminal: `main.py agg --detach` runs it in a session of its own
(an ssh drop's SIGHUP does not reach it), writing what it prints to <run>/controller.log, and
`main.py follow` shows that output as it comes, from any terminal, or takes the run over when its
controller is gone (killed): the rounds run on the nodes, not in the controller."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hefl.errors import HeflError
from hefl.records import LogFormatError, RunRecord
from hefl.results.report import controller_gone

LOG = "controller.log"  # what a detached controller prints, in its run folder
POLL_S = 0.3


def detach(argv: list[str], log_dir: Path, experiment: str) -> int:
    """Start `main.py agg ARGV` for `experiment` in a new session, its output in the run's
    controller.log; returns its pid once it wrote its run.json (or exited first: an error)."""
    run = log_dir / experiment
    run.mkdir(parents=True, exist_ok=True)
    log = run / LOG
    with open(log, "ab") as out, open(os.devnull, "rb") as devnull:
        child = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve().parents[2] / "main.py"), *argv],
            stdin=devnull,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # no terminal: the terminal's SIGHUP and Ctrl-C pass it by
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    while child.poll() is None and not (run / "run.json").is_file():
        time.sleep(0.1)
    if child.poll() is not None and not (run / "run.json").is_file():
        said = log.read_text(errors="replace").strip().splitlines()
        raise HeflError(
            f"the detached controller exited at once ({child.returncode}): "
            f"{said[-1] if said else 'no output'}"
        )
    return child.pid


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


def follow(run: Path, take_over: Callable[[], int], out: Callable[[str], None] = print) -> int:
    """Show what the run's controller prints (its controller.log) until the run ends; when its
    controller is gone, `take_over` (this process becomes the controller) and return its code.
    0: the run finished; 1: it failed. Ctrl-C stops the following only."""
    log = run / LOG
    at = 0
    while True:
        record = read_record(run)
        if log.is_file():
            with open(log, "rb") as fh:
                fh.seek(at)
                chunk = fh.read()
            whole = chunk[: chunk.rfind(b"\n") + 1]  # whole lines only: the rest comes next time
            at += len(whole)
            for line in whole.decode(errors="replace").splitlines():
                out(line)
        if record.status != "running":
            if at == 0 or not log.is_file() or log.stat().st_size <= at:
                out(f"{run.name}: {record.status}" + (f": {record.error}" if record.error else ""))
                return 0 if record.status == "finished" else 1
        elif gone := controller_gone(record):
            out(f"{run.name}: {gone}")
            return take_over()
        elif not log.is_file():
            raise HeflError(
                f"{run.name} runs, with its controller (pid {record.controller_pid}) in another "
                "terminal, not detached: its output is there (`main.py agg --detach` writes it "
                f"to {run.name}/{LOG})"
            )
        time.sleep(POLL_S)
