"""Fixtures (configs, node servers, the shared local runs, key folders) and the test tiers:
markers, and a fast tier that starts no process; how the tests share two workers (pytest-xdist,
`-n 2` in pyproject's addopts). What tests share besides fixtures is in tests/helpers.py."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from blueprints import NodeServer
from tests.helpers import (
    WHEEL_CHECKS,
    Cluster,
    NodeProcess,
    Recorder,
    Run,
    Served,
    only_run,
    run_main,
    running_cluster,
    shared_dir,
    start_wheel_checks,
    tree_config,
    two_level,
    wheel_folder,
)

# The Pythons the tests start (nodes, main.py, scripts) keep their compiled modules in one folder
# outside the checkout, whatever PYTHONDONTWRITEBYTECODE says: each would compile hefl anew
# (0.2 s of CPU a process, hundreds of processes); xdist's workers inherit it from the controller.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
os.environ.setdefault("PYTHONPYCACHEPREFIX", str(Path(tempfile.gettempdir()) / "hefl-tests-pyc"))

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
    "standalone",
    "faulty",
    "finished_cluster",
}
SLOW_TIERS = ("process", "deploy", "root", "network", "lint")


# Two xdist workers share the tests (pyproject's addopts: `-n 2`). These modules go to one
# worker each, whole: their tests share a module-scoped fixture that starts processes (else each
# worker would make it), or, the virtual clusters, check the whole machine's namespaces. In this
# order the workers take them first, then the other tests that start processes, the rest, and
# the package-index checks last: the longest first, so that no worker is left with a long test
# at the end.
ONE_WORKER = (
    "test_deploy.py",
    "test_vcluster.py",
    "test_integrity.py",
    "test_live.py",
    "test_standalone.py",
    "test_dropouts.py",
)


def _rank(item: pytest.Item) -> int:
    if item.path.name in ONE_WORKER:
        return ONE_WORKER.index(item.path.name)
    if item.get_closest_marker("network"):
        return len(ONE_WORKER) + 2
    return len(ONE_WORKER) + (0 if item.get_closest_marker("process") else 1)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With xdist's default `--dist load`: tests go to the workers one by one as they free up, in
    the order collected; those of a module of ONE_WORKER go together, to one worker."""
    if config.getvalue("dist") != "load":
        return None  # another --dist, asked for: xdist's own
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if Path(path).name in ONE_WORKER else nodeid

    return Scheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test on a fixture that starts processes is in the process tier, marked or not; under
    xdist, the longest tests go first."""
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.process)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=_rank)  # stable: collection order within a rank


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (made if missing), among the workers of the session."""
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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

    def forked(*a: Any, **kw: Any) -> None:
        raise AssertionError(
            f"{request.node.nodeid} forks a node process: mark it @pytest.mark.process"
        )

    monkeypatch.setattr(NodeProcess, "start", forked)


def pytest_collection_finish(session: pytest.Session) -> None:
    """The requirements' wheel checks for other Pythons wait on the package index: start them
    now, in the background, when the session will run them (tests/test_wheels.py); under xdist,
    the controller starts them once for both workers (below)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if any(i.name.startswith("test_the_requirements_have_wheels_for") for i in session.items):
        _start_wheels(session.config)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """xdist's controller, once a worker has collected: the wheel checks, started once."""
    if not WHEEL_CHECKS and any("test_the_requirements_have_wheels_for" in i for i in ids):
        _start_wheels(node.config)


def _start_wheels(config: pytest.Config) -> None:
    base = config._tmp_path_factory.getbasetemp()  # the controller's: the workers' shared_dir
    WHEEL_CHECKS.update(start_wheel_checks(wheel_folder(base)))


def pytest_sessionfinish(session: pytest.Session) -> None:
    for proc in WHEEL_CHECKS.values():
        if proc.poll() is None:
            proc.kill()
        proc.wait()


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
    with running_cluster(tmp_path) as made:
        yield made


def _shared_run(factory: pytest.TempPathFactory, name: str, make: Callable[[Path], Run]) -> Run:
    """A shared local run, made once per session by the first worker that asks for it, in a
    folder of `shared_dir`; the other worker waits for it, then reads the same run."""
    shared = shared_dir(factory)
    record = shared / f"run-{name}.json"
    with locked(shared / f"run-{name}.lock"):
        if not record.exists():
            run = make(Path(tempfile.mkdtemp(prefix=f"{name}-", dir=shared)))
            record.write_text(json.dumps(run.to_json()))
        return Run.from_json(json.loads(record.read_text()))


@pytest.fixture(scope="session")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The two-level tree in plaintext (`-v`: the nodes log INFO events)."""

    def make(tmp: Path) -> Run:
        cfg = tmp / "config.json"
        cfg.write_text(json.dumps(two_level()))
        proc = run_main("local", "--config", str(cfg), "--log-dir", str(tmp / "log"), "-v")
        return Run(proc, cfg, only_run(tmp / "log"))

    return _shared_run(tmp_path_factory, "plain", make)


def _encrypted(
    tmp_path_factory: pytest.TempPathFactory, name: str, scheme: str, **more: Any
) -> Run:
    """`more`: other encryption settings (backend, key_bits)."""
    from hefl.crypto import HeParams, generate_keys

    def make(tmp: Path) -> Run:
        raw = two_level()
        raw["encryption"] = {"scheme": scheme, "key_dir": str(tmp / "keys"), **more}
        generate_keys(HeParams(scheme=scheme, **more), tmp / "keys")
        cfg = tmp / "config.json"
        cfg.write_text(json.dumps(raw))
        proc = run_main("local", "--config", str(cfg), "--log-dir", str(tmp / "log"))
        return Run(proc, cfg, only_run(tmp / "log"), tmp / "keys")

    return _shared_run(tmp_path_factory, name, make)


@pytest.fixture(scope="session")
def ckks_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The two-level tree with CKKS, the same seed as `plain_run`."""
    return _encrypted(tmp_path_factory, "ckks", "ckks")


@pytest.fixture(scope="session")
def bfv_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _encrypted(tmp_path_factory, "bfv", "bfv")


def _optional(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install -r requirements-he.txt")


@pytest.fixture(scope="session")
def seal_ckks_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The two-level tree with SEAL-Python's CKKS."""
    _optional("seal", "zstandard")
    return _encrypted(tmp_path_factory, "seal_ckks", "ckks", backend="seal")


@pytest.fixture(scope="session")
def seal_bfv_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    _optional("seal", "zstandard")
    return _encrypted(tmp_path_factory, "seal_bfv", "bfv", backend="seal")


@pytest.fixture(scope="session")
def paillier_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Paillier with a 1024-bit key (2048 by default: a test's key may be smaller)."""
    _optional("phe", "gmpy2")
    return _encrypted(tmp_path_factory, "paillier", "paillier", key_bits=1024)
