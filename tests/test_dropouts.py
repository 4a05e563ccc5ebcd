"""Stragglers and dropouts with real processes on 127.0.0.1: `network.round_deadline_s` and
`aggregator.min_clients`. One faulty run holds both (their protocol, case by case, is in
tests/test_protocol.py, on the in-memory network); each test asserts on a part of it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hefl.address import log_name
from tests.helpers import (
    command_line,
    is_node,
    local_until_round,
    node_logs,
    process_tree,
    tree_config,
    wait_gone,
)

pytestmark = pytest.mark.process

KILLED, PAUSED = "127.0.0.1:102", "127.0.0.1:101"  # under leaf 1 and leaf 0
# rounds enough for the paused client to miss some and contribute again: it may be stopped a
# round or two after round 2 (rounds take 0.2 s until then), and catching up on the results sent
# while it was stopped can take a round more
ROUNDS = 8


def node_pids(parent: int, node: str) -> list[int]:
    """The local node `node` started by `parent`: its gunicorn master and worker."""
    found = [pid for pid in process_tree(parent) if is_node(command_line(pid), node)]
    assert len(found) == 2, f"{len(found)} processes of {node} below {parent}"
    return found


def deadline_config(rounds: int, deadline: float, min_clients: int) -> dict[str, Any]:
    """4 clients under 2 adding switches under the aggregator; rounds of about a second."""
    raw = tree_config(clients=4, leaves=2, spine=False, rounds=rounds)
    raw["training"]["epochs"] = 10
    raw["aggregator"]["min_clients"] = min_clients
    raw["network"] = {"round_deadline_s": deadline}
    return raw


@dataclass
class Faulty:
    """The run: its exit, its output, its run folder."""

    proc: subprocess.Popen[str]
    out: str
    err: str
    exp: Path

    def rows(self) -> list[dict[str, Any]]:
        return json.loads((self.exp / "rounds.json").read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faulty]:
    """`main.py local`, 4 clients, min_clients 2, a 3 s deadline, ROUNDS rounds: once round 2 is
    printed, one client is SIGKILLed (a dropout) and another SIGSTOPped (a straggler) until a
    round line names it missing (a round went on without it), then resumed. The straggler may
    be stopped before or after it sent its update of the round: after, its switch's send of the
    result waits on it (tests/test_protocol.py has that case on its own)."""
    work = tmp_path_factory.mktemp("faulty")
    proc = local_until_round(work, deadline_config(rounds=ROUNDS, deadline=3, min_clients=2), 2)
    assert proc.stdout is not None
    paused = node_pids(proc.pid, PAUSED)
    lines = []
    try:
        for pid in node_pids(proc.pid, KILLED):
            os.kill(pid, signal.SIGKILL)
        for pid in paused:
            os.kill(pid, signal.SIGSTOP)
        for line in proc.stdout:  # past the deadline of a round, however loaded the machine
            lines.append(line)
            if line.startswith("round ") and PAUSED in line:
                break
        for pid in paused:
            with contextlib.suppress(ProcessLookupError):  # the run ended: the tests say why
                os.kill(pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=240)
    finally:
        for pid in paused:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        proc.kill()
    (exp,) = (p for p in (work / "log").iterdir() if not p.name.startswith("."))
    yield Faulty(proc, "".join(lines) + out, err, exp)
    assert wait_gone(str(work)) == []


def test_a_client_killed_mid_run_is_a_dropout_above_min_clients(faulty: Faulty) -> None:
    """SIGKILL of one of 4 clients with min_clients 2: the run completes (exit 0), the rounds
    after it name it missing and average over the clients present, and every other log is
    whole."""
    assert faulty.proc.returncode == 0, faulty.err[-3000:]
    assert f"missing {KILLED}" in faulty.out  # the round lines name it
    rows = faulty.rows()
    assert len(rows) == ROUNDS
    assert rows[-1]["contributors"] == 3 and rows[-1]["missing"] == [KILLED]
    assert rows[0]["contributors"] == 4 and rows[0]["missing"] == []
    record = json.loads((faulty.exp / "run.json").read_text())
    assert record["status"] == "finished"
    agg = json.loads((faulty.exp / log_name("127.0.0.1:1")).read_text())
    last = agg["iteration"][-1]
    assert last["missing"] == [KILLED] and len(last["contributors"]) == 3
    logs = node_logs(faulty.exp)
    assert len(logs) == 7
    assert all(len(log["iteration"]) == ROUNDS for node, log in logs.items() if node != KILLED)


def test_a_straggler_past_the_deadline_rejoins(faulty: Faulty) -> None:
    """A client paused past the round deadline: the round completes without it (named missing),
    its late update gets 422 'round closed', it applies that round's result like everyone else,
    and it contributes to the rounds after."""
    assert faulty.proc.returncode == 0, faulty.err[-3000:]
    rows = faulty.rows()
    missed = [row["round"] for row in rows if PAUSED in row["missing"]]
    assert missed, rows  # at least one round went on without it
    # it rejoined: only the killed one is missing
    assert rows[-1]["missing"] == [KILLED] and rows[-1]["contributors"] == 3
    outputs = [faulty.exp / "stdout" / f"{log_name(n)[:-5]}.out" for n in (PAUSED, "127.0.0.1:10")]
    assert any("round closed" in p.read_text() for p in outputs), outputs
    log = json.loads((faulty.exp / log_name(PAUSED)).read_text())
    assert len(log["iteration"]) == ROUNDS  # it applied each round's result, the missed ones too
