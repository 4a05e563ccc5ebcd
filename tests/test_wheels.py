"""The Python range the requirements claim: pip resolves every pin to a binary wheel for 3.12 and
3.13 (only 3.11 runs here). The resolutions wait on the package index, so conftest starts them in
the background once the session's tests are collected; this file runs near the end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT, WHEEL_CHECKS, WHEEL_DIR, WHEEL_VERSIONS, start_wheel_checks

pytestmark = pytest.mark.network


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
