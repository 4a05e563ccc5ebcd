"""Fixtures (configs, node servers, the shared local runs, key folders) and the test tiers:
markers, and a fast tier that starts no process. What tests share besides fixtures is in
tests/helpers.py."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blueprints import NodeServer
from hefl.local import free_ports
from tests.helpers import (
    WHEEL_CHECKS,
    WHEEL_DIR,
    Cluster,
    Recorder,
    Run,
    Served,
    addressed,
    only_run,
    run_main,
    start_wheel_checks,
    tree_config,
    two_level,
)

# tests that take one of these fixtures start processes (node servers, local runs)
PROCESS_FIXTURES = {
    "cluster",
    "plain_run",
    "ckks_run",
    "bfv_run",
    "seal_ckks_run",
    "seal_bfv_run",
    "paillier_run",
    "ckks_exp",
    "bfv_exp",
    "live",
}
SLOW_TIERS = ("process", "deploy", "root", "network", "lint")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test on a fixture that starts processes is in the process tier, marked or not."""
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.process)


@pytest.fixture(autouse=True)
def _tiers_hold(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The inner-loop tier stays in this process: a test there that starts a Python, main.py,
    a shell script or a playbook fails, naming the marker it lacks."""
    if any(request.node.get_closest_marker(m) for m in SLOW_TIERS):
        return
    real = subprocess.Popen.__init__

    def guarded(self: Any, args: Any, *a: Any, **kw: Any) -> None:
        argv = [str(x) for x in (args if isinstance(args, list | tuple) else [args])]
        first = Path(argv[0]).name if argv else ""
        if (
            first.startswith("python")
            or argv[:1] == [sys.executable]
            or any(x.endswith((".py", ".sh")) or "ansible" in x for x in argv[:3])
        ):
            raise AssertionError(
                f"{request.node.nodeid} starts {' '.join(argv[:3])}: mark it "
                "@pytest.mark.process (or deploy, root, network, lint)"
            )
        real(self, args, *a, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)


def pytest_collection_finish(session: pytest.Session) -> None:
    """The requirements' wheel checks for other Pythons wait on the package index: start them
    now, in the background, when the session will run them (tests/test_wheels.py)."""
    if any(i.name.startswith("test_the_requirements_have_wheels_for") for i in session.items):
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="hefl-wheels-"))
        WHEEL_DIR.append(folder)
        WHEEL_CHECKS.update(start_wheel_checks(folder))


def pytest_sessionfinish(session: pytest.Session) -> None:
    for proc in WHEEL_CHECKS.values():
        if proc.poll() is None:
            proc.kill()
        proc.communicate()  # closes its pipe
    for folder in WHEEL_DIR:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def raw_config() -> dict[str, Any]:
    return tree_config()


@pytest.fixture
def serve_node(tmp_path: Path) -> Iterator[Any]:
    """Factory: a NodeServer over real HTTP, closed after the test."""
    made: list[tuple[Served, NodeServer]] = []

    def make(token: str = "") -> tuple[str, NodeServer]:
        node = NodeServer(tmp_path / "log", token)
        served = Served(node)
        made.append((served, node))
        return served.url, node

    yield make
    for served, node in made:
        served.close()
        if node.node is not None:
            node.node.close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    yield rec
    rec.served.close()


@pytest.fixture(scope="session")
def key_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One key folder per encrypted scheme, made once (default parameters: already small)."""
    from hefl.crypto import HeParams, generate_keys

    dirs = {}
    for name in ("ckks", "bfv"):
        path = tmp_path_factory.mktemp(name)
        generate_keys(HeParams(scheme=name), path)
        dirs[name] = path
    return dirs


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    raw, ids = addressed(free_ports(4), rounds=8)
    made = Cluster(tmp_path, raw, ids, [])
    procs = made.procs
    try:
        for name in ids:
            procs.append(made.start(name, wait=False))
        for name in ids:
            made.wait_for(name)
        yield made
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


@pytest.fixture(scope="session")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The two-level tree in plaintext (`-v`: the nodes log INFO events)."""
    tmp = tmp_path_factory.mktemp("plain")
    cfg = tmp / "config.json"
    cfg.write_text(json.dumps(two_level()))
    proc = run_main("local", "--config", str(cfg), "--log-dir", str(tmp / "log"), "-v")
    return Run(proc, cfg, only_run(tmp / "log"))


def _encrypted(tmp_path_factory: pytest.TempPathFactory, scheme: str, **more: Any) -> Run:
    """`more`: other encryption settings (backend, key_bits)."""
    from hefl.crypto import HeParams, generate_keys

    tmp = tmp_path_factory.mktemp(scheme)
    raw = two_level()
    raw["encryption"] = {"scheme": scheme, "key_dir": str(tmp / "keys"), **more}
    generate_keys(HeParams(scheme=scheme, **more), tmp / "keys")
    cfg = tmp / "config.json"
    cfg.write_text(json.dumps(raw))
    proc = run_main("local", "--config", str(cfg), "--log-dir", str(tmp / "log"))
    return Run(proc, cfg, only_run(tmp / "log"), tmp / "keys")


@pytest.fixture(scope="session")
def ckks_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The two-level tree with CKKS, the same seed as `plain_run`."""
    return _encrypted(tmp_path_factory, "ckks")


@pytest.fixture(scope="session")
def bfv_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _encrypted(tmp_path_factory, "bfv")


def _optional(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install -r requirements-he.txt")


@pytest.fixture(scope="session")
def seal_ckks_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The two-level tree with SEAL-Python's CKKS."""
    _optional("seal", "zstandard")
    return _encrypted(tmp_path_factory, "ckks", backend="seal")


@pytest.fixture(scope="session")
def seal_bfv_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    _optional("seal", "zstandard")
    return _encrypted(tmp_path_factory, "bfv", backend="seal")


@pytest.fixture(scope="session")
def paillier_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Paillier with a 1024-bit key (2048 by default: a test's key may be smaller)."""
    _optional("phe", "gmpy2")
    return _encrypted(tmp_path_factory, "paillier", key_bits=1024)
