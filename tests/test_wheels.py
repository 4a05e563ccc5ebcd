"""The Python range the requirements claim: pip resolves every pin to a binary wheel for 3.12 and
3.13 (only 3.11 runs here). The resolutions wait on the package index, so conftest starts them in
the background once the session's tests are collected (under xdist, once for both workers); this
file runs near the end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import (
    ROOT,
    WHEEL_CHECKS,
    WHEEL_VERSIONS,
    shared_dir,
    start_wheel_checks,
    wheel_check,
    wheel_folder,
)

pytestmark = pytest.mark.network


@pytest.mark.parametrize("version", WHEEL_VERSIONS)
def test_the_requirements_have_wheels_for(
    version: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """pyproject says 3.11 to 3.13; only 3.11 runs here, so pip resolves the pins for the other
    two as binary wheels (a dry run: it reads the index's metadata and downloads no wheel, where
    `pip download` would fetch several GB of CUDA wheels for torch)."""
    folder = wheel_folder(shared_dir(tmp_path_factory))
    if not (folder / version).is_dir():  # not started by conftest (this test chosen alone, say)
        folder = tmp_path
        WHEEL_CHECKS.update(start_wheel_checks(folder))
    code, stderr = wheel_check(folder, version)
    if (
        code != 0
        and re.search(r"(?i)(connection|network is unreachable|name resolution|timed out)", stderr)
        and "No matching distribution" not in stderr
    ):
        pytest.skip(f"no package index reachable: {stderr.strip().splitlines()[-1]}")
    assert code == 0, stderr[-3000:]
    report = json.loads((folder / version / "report.json").read_text())
    names = {i["metadata"]["name"].lower(): i for i in report["install"]}
    tag = "cp" + version.replace(".", "")
    for pin in ("torch", "tenseal", "numpy", "scikit-learn", "matplotlib"):
        url = names[pin]["download_info"]["url"]
        assert f"-{tag}-" in url or "-py3-none-" in url or "abi3" in url, url
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'requires-python = ">=3.11,<3.14"' in pyproject
