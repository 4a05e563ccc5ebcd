"""Live progress: the aggregator's /status and page during a real local run, guarded by the
credential (header, or the cookie its address sets); the console's progress line on a terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers import ROOT, tree_config

TOKEN_HEADER = "X-Hefl-Token"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def slow_config(rounds: int) -> dict[str, Any]:
    """Two clients under one switch, rounds of about a second (more epochs), so that a browser
    can watch them come in."""
    raw = tree_config(clients=2, leaves=1, spine=False, rounds=rounds)
    raw["training"]["epochs"] = 30
    return raw


class LocalRun:
    """`main.py local` in the background on a terminal (a pty), its output read as it comes."""

    def __init__(self, work: Path, rounds: int) -> None:
        (work / "config.json").write_text(json.dumps(slow_config(rounds)))
        leader, follower = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "local", "--log-dir", "log"],
            cwd=work,
            stdout=follower,
            stderr=subprocess.STDOUT,
        )
        os.close(follower)
        self.leader = leader
        self.raw = b""  # everything it wrote, progress lines included
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.leader, 65536)
            except OSError:  # the other end closed
                break
            if not chunk:
                break
            self.raw += chunk

    @property
    def lines(self) -> list[str]:
        """The lines as a reader of the terminal sees them: a progress line, once cleared, is
        gone."""
        text = self.raw.decode(errors="replace")
        return [line.split("\r\x1b[K")[-1].rstrip("\r") for line in text.split("\n")]

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if m := re.search(pattern, line):
                    return m
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.2)
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines[-30:]))

    def finish(self, timeout: float = 240) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        if self.leader >= 0:
            os.close(self.leader)
            self.leader = -1
        return code


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Any:
    run = LocalRun(tmp_path_factory.mktemp("live"), rounds=8)
    m = run.wait_for(r"^live: (http://127\.0\.0\.1:\d+)/\?token=(\S+)")
    yield run, m.group(1), m.group(2)
    if run.proc.poll() is None:
        run.proc.terminate()
    run.finish()


def test_status_and_page_need_the_credential(live: Any) -> None:
    run, base, token = live
    assert requests.get(base + "/status", timeout=5).status_code == 401
    assert requests.get(base + "/", timeout=5).status_code == 401
    assert requests.get(base + "/?token=wrong", timeout=5).status_code == 401
    # the address sets an HttpOnly cookie and sends the browser on without the token in it
    resp = requests.get(f"{base}/?token={token}", timeout=5, allow_redirects=False)
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/")
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    jar = {"hefl_token": token}
    page = requests.get(base + "/", cookies=jar, timeout=5)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert "<script>" in page.text and "src=" not in page.text  # all in the page: no CDN
    status = requests.get(base + "/status", cookies=jar, timeout=5).json()
    assert status["rounds_planned"] == 8 and status["experiment"]
    assert {n["role"] for n in status["topology"]} == {"client", "switch"}
    # the cookie reads; it never writes: a state-changing request needs the header
    assert requests.post(base + "/start", cookies=jar, timeout=5).status_code == 401
    assert requests.get(f"{base}/health", timeout=5).json().keys() == {"state", "role"}
    # the printed key only reads: it is not the credential, not even for a GET in the header
    header = requests.get(base + "/status", headers={TOKEN_HEADER: token}, timeout=5)
    assert header.status_code == 401
    assert requests.get(base + "/rounds", cookies=jar, timeout=5).status_code in (401, 404)
    # a wrong key in the address is refused even with a good cookie (it would replace it)
    assert requests.get(f"{base}/?token=x{token}", cookies=jar, timeout=5).status_code == 401
    # /status takes the key in its address too, as the README says (a script, curl)
    by_address = requests.get(f"{base}/status?token={token}", timeout=5)
    assert by_address.status_code == 200 and by_address.json()["experiment"] == status["experiment"]
    assert requests.get(f"{base}/status?token=x{token}", cookies=jar, timeout=5).status_code == 401
    # and it still opens nothing else, in the address or not
    assert requests.post(f"{base}/start?token={token}", timeout=5).status_code == 401
    experiment = status["experiment"]
    assert requests.get(f"{base}/log/{experiment}?token={token}", timeout=5).status_code == 401
    assert requests.get(f"{base}/health?token={token}", timeout=5).json().keys() == {
        "state",
        "role",
    }


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt install chromium)")
def test_the_page_charts_the_rounds_as_they_come(live: Any, tmp_path: Path) -> None:
    run, base, token = live
    assert CHROMIUM is not None

    def browse(*extra: str) -> str:
        done = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--virtual-time-budget=3000",
                *extra,
                f"{base}/?token={token}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    def points(dom: str) -> int:
        chart = dom.split('id="accuracy"', 1)[1].split("</svg>", 1)[0]
        return chart.count('class="point"')

    run.wait_for(r"^round\s+2/8")
    first = points(browse("--dump-dom"))
    run.wait_for(r"^round\s+5/8")
    dom = browse("--dump-dom")
    assert points(dom) > first >= 1
    assert "127.0.0.1" in dom.split('id="topology"', 1)[1]  # the tree, with its nodes
    shot = tmp_path / "live.png"
    browse(f"--screenshot={shot}", "--window-size=1000,700")
    assert shot.read_bytes()[:4] == b"\x89PNG"
    out = ROOT / "log"
    if os.environ.get("HEFL_KEEP_SCREENSHOT"):
        out.mkdir(exist_ok=True)
        shutil.copy(shot, out / "live-page.png")


def test_the_run_finishes_with_round_lines_and_a_progress_line_between(live: Any) -> None:
    run, _, _ = live
    assert run.finish() == 0, "\n".join(run.lines[-20:])
    rounds = [line for line in run.lines if line.startswith("round ")]
    assert len(rounds) == 8
    assert re.match(r"round   8/8  accuracy \d\.\d{4}  .*aggregator got \S+ \S+ ", rounds[-1])
    # on a terminal: a progress line, redrawn in place under the round lines
    text = run.raw.decode(errors="replace")
    assert re.search(r"\r\x1b\[K\[[#.]{20}\] round \d+/8  clients: \w+ \d.* ETA \d+ s", text)
