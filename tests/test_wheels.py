"""The Python range the requirements claim: pip resolves every pin to a binary wheel for 3.12 and
3.13 (only 3.11 runs here). The resolutions wait on the package index, so conftest starts them in
the background once the session's tests are collected; this file runs near the end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.network

BIN = Path(sys.executable).parent


WHEEL_VERSIONS = ("3.12", "3.13")


def start_wheel_checks(folder: Path) -> dict[str, subprocess.Popen[str]]:
    """pip's dry-run resolution of requirements.txt as binary wheels for each of WHEEL_VERSIONS,
    in the background: conftest starts them when the session's tests are collected (they wait on
    the package index, not on this machine), and the test below reads their answers."""
    procs = {}
    for version in WHEEL_VERSIONS:
        out = folder / version
        out.mkdir(parents=True, exist_ok=True)
        procs[version] = subprocess.Popen(
            [
                str(BIN / "pip"),
                "install",
                "--dry-run",
                "--ignore-installed",
                "--only-binary=:all:",
                "--python-version",
                version,
                "--target",
                str(out / "t"),
                "--report",
                str(out / "report.json"),
                "-r",
                str(ROOT / "requirements.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    return procs


WHEEL_CHECKS: dict[str, subprocess.Popen[str]] = {}
WHEEL_DIR: list[Path] = []


@pytest.mark.parametrize("version", WHEEL_VERSIONS)
def test_the_requirements_have_wheels_for(version: str, tmp_path: Path) -> None:
    """pyproject says 3.11 to 3.13; only 3.11 runs here, so pip resolves the pins for the other
    two as binary wheels (a dry run: it reads the index's metadata and downloads no wheel, where
    `pip download` would fetch several GB of CUDA wheels for torch)."""
    if version not in WHEEL_CHECKS:  # not started by conftest (this test chosen alone, say)
        WHEEL_DIR.append(tmp_path)
        WHEEL_CHECKS.update(start_wheel_checks(tmp_path))
    proc = WHEEL_CHECKS[version]
    _, stderr = proc.communicate(timeout=600)
    if (
        proc.returncode != 0
        and re.search(r"(?i)(connection|network is unreachable|name resolution|timed out)", stderr)
        and "No matching distribution" not in stderr
    ):
        pytest.skip(f"no package index reachable: {stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, stderr[-3000:]
    report = json.loads((WHEEL_DIR[0] / version / "report.json").read_text())
    names = {i["metadata"]["name"].lower(): i for i in report["install"]}
    tag = "cp" + version.replace(".", "")
    for pin in ("torch", "tenseal", "numpy", "scikit-learn", "matplotlib"):
        url = names[pin]["download_info"]["url"]
        assert f"-{tag}-" in url or "-py3-none-" in url or "abi3" in url, url
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'requires-python = ">=3.11,<3.14"' in pyproject
