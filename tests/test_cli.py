"""The command line: every bad argument is one line on stderr and exit 2, before anything starts."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.helpers import ROOT, run_main

pytestmark = pytest.mark.process


def one_line_exit_2(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert all(w in lines[-1] for w in words), lines[-1]
    assert not proc.stdout
    return lines[-1]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--port", "66001"], ("--port", "must be in 1..65535, got 66001")),
        (["--port", "0"], ("--port", "must be in 1..65535, got 0")),
        (["--port", "-5"], ("--port", "got -5")),
        (["--port", "5k"], ("--port", "'5k' is not a whole number")),
        (["--threads", "0"], ("--threads", "must be in 1..256, got 0")),
        (["--host", "999.1.1.1"], ("--host", "'999.1.1.1' is not an address of this machine")),
    ],
)
def test_a_node_refuses_a_bad_flag_in_one_line(args: list[str], words: tuple[str, ...]) -> None:
    proc = run_main("node", *args, timeout=30)
    line = one_line_exit_2(proc, *words)
    assert line.startswith("main.py node: error:")


def test_a_node_refuses_an_address_it_cannot_listen_on() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_main("node", "--host", "127.0.0.1", "--port", str(port), timeout=30)
    assert one_line_exit_2(proc) == (
        f"main.py node: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert len(proc.stderr.strip().splitlines()) == 1
    # an address that is no interface of this machine's
    proc = run_main("node", "--host", "192.0.2.7", "--port", "5999", timeout=30)
    assert "cannot listen on 192.0.2.7:5999" in one_line_exit_2(proc)


@pytest.mark.parametrize(
    ("script", "args", "words"),
    [
        ("bench/clients.py", ["--per-node", "0"], ("--per-node", "must be at least 1, got 0")),
        ("bench/links.py", ["--rounds", "0"], ("--rounds", "must be at least 1, got 0")),
        ("bench/load.py", ["--senders", "999"], ("--senders", "must be in 1..256, got 999")),
        ("bench/he.py", ["--size", "-1"], ("--size", "must be at least 1, got -1")),
    ],
)
def test_the_benchmarks_refuse_a_bad_number_in_one_line(
    script: str, args: list[str], words: tuple[str, ...]
) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    one_line_exit_2(proc, *words)


def test_vcluster_takes_the_schemes_and_backends_agg_takes() -> None:
    """deploy/vcluster.sh checks --scheme and --backend itself (bash): its choices are agg's."""
    import argparse
    import re

    import main

    sub = next(
        a for a in main._parser()._actions if isinstance(a, argparse._SubParsersAction)
    ).choices["agg"]
    flags = {a.dest: a.choices for a in sub._actions if a.dest in ("scheme", "backend")}
    usage = re.search(r'^USAGE="(.*)"$', (ROOT / "deploy" / "vcluster.sh").read_text(), re.M)
    assert usage
    for dest, choices in flags.items():
        shown = re.search(rf"--{dest} ([a-z|]+)\]", usage.group(1))
        assert shown and shown.group(1).split("|") == list(choices), (dest, usage.group(1))
    for bad in ("--scheme", "--backend"):
        proc = subprocess.run(
            [str(ROOT / "deploy" / "vcluster.sh"), "--config", "config.json", bad, "rot13"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )
        assert proc.returncode == 2 and f"{bad} must be" in proc.stderr, proc.stderr
