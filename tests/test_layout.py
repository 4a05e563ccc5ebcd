"""The layering the README's module map promises, checked on the source itself."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hefl.node.wire import ROUTES
from tests.helpers import ROOT, NodeProcess

# every route's path but the page's "/" (too common a string to search for)
PATHS = {route.path.split("<")[0].rstrip("/") for route in ROUTES.values()} - {""}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def sources(*parts: str) -> list[Path]:
    return sorted(
        p
        for part in parts
        for p in ([ROOT / part] if part.endswith(".py") else (ROOT / part).rglob("*.py"))
    )


@pytest.mark.parametrize(
    ("where", "banned"),
    [
        ("hefl", r"flask|werkzeug|blueprints"),
        ("hefl/crypto", r"hefl\.(config|node|control|results)"),
        # the three lives of hefl: results read files, nodes never drive an experiment
        ("hefl/results", r"hefl\.(node|control)"),
        ("hefl/node", r"hefl\.control"),
        # what every package shares never reaches into one of them
        (
            "hefl/records.py|hefl/files.py|hefl/config.py|hefl/topology.py|hefl/schema.py",
            r"hefl\.(node|control|results)",
        ),
        ("blueprints", r"torch|tenseal"),
    ],
)
def test_dependencies_run_one_way(where: str, banned: str) -> None:
    offending = {
        str(p.relative_to(ROOT)): sorted(m for m in imports(p) if re.match(rf"({banned})(\.|$)", m))
        for p in sources(*where.split("|"))
    }
    assert offending, f"no source under {where}"
    assert {p: m for p, m in offending.items() if m} == {}


def test_no_http_path_literal_outside_the_wire_table() -> None:
    """Routes come from hefl/node/wire.py everywhere else (the controller, test.py, nodes,
    bench)."""
    found = []
    for path in sources("hefl", "bench", "main.py", "test.py"):
        if path == ROOT / "hefl" / "node" / "wire.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if any(node.value == p or node.value.startswith(p + "/") for p in PATHS):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert found == []


def test_no_test_module_imports_another() -> None:
    """What tests share lives in tests/helpers.py and tests/memnet.py (fixtures in conftest.py):
    a test module imported by another would run its own module-level marks and fixtures twice."""
    found = {
        p.name: sorted(m for m in imports(p) if re.match(r"tests\.(test_|conftest)", m))
        for p in sources("tests")
    }
    assert {name: mods for name, mods in found.items() if mods} == {}


def test_only_the_training_part_of_a_node_holds_torch() -> None:
    """ClientNode is protocol only: torch (and the data and model modules that need it) come in
    through the training part hefl.node.host gives it."""
    heavy = r"torch|hefl\.(model|training|data)"
    found = {
        str(p.relative_to(ROOT)): sorted(m for m in imports(p) if re.match(rf"({heavy})(\.|$)", m))
        for p in sources("hefl/node")
        if p.name != "local_training.py"
    }
    assert "hefl/node/nodes/client.py" in found and len(found) > 10
    assert {p: m for p, m in found.items() if m} == {}


def _fields(cls: type, seen: set[type]) -> set[str]:
    """Every field name of a dataclass and of the dataclasses its fields hold, recursively."""
    import dataclasses
    import typing

    if cls in seen or not dataclasses.is_dataclass(cls):
        return set()
    seen.add(cls)
    names = set()
    for f in dataclasses.fields(cls):
        names.add(f.name)
        hint = typing.get_type_hints(cls)[f.name]
        for tp in (hint, *typing.get_args(hint)):
            for inner in (tp, *typing.get_args(tp)):
                if isinstance(inner, type):
                    names |= _fields(inner, seen)
    return names


def record_keys() -> set[str]:
    """The keys of node logs, rounds.json and summary.json (hefl/records.py's dataclasses), less
    those that also name a config field or a key of /health and /status (the same word in
    another contract: `round`, `rounds`, `clients`, `scheme`, ...)."""
    import dataclasses

    from hefl import records
    from hefl.config import ExperimentConfig

    keys: set[str] = set()
    for value in vars(records).values():
        if isinstance(value, type) and dataclasses.is_dataclass(value):
            keys |= _fields(value, set())
    status = {
        "state",
        "role",
        "node",
        "experiment",
        "round",
        "scheme",
        "can_decrypt",
        "key_id",
        "error",
        "phase",
        "samples",
        "clients",
        "credential",
        "machine",
        "code",
        "rounds",
        "rounds_planned",
        "topology",
        "nodes",
        "missing",
        "text",
    }
    # the same words as keys of other files: deploy's settings (`dir`), Ansible's inventory groups
    # (`switches`), the config push body (`config`), a machine's description (`versions`)
    other = {"dir", "switches", "config", "versions"}
    return keys - _fields(ExperimentConfig, set()) - status - other - set(records.ROLES)


def key_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants used as keys: `x["k"]`, `x.get("k")`/pop/setdefault, `{"k": ...}`,
    `"k" in x`."""
    found = []
    for node in ast.walk(tree):
        candidates: list[ast.expr | None] = []
        if isinstance(node, ast.Subscript):
            candidates.append(node.slice)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("get", "pop", "setdefault") and node.args:
                candidates.append(node.args[0])
        elif isinstance(node, ast.Dict):
            candidates.extend(node.keys)
        elif isinstance(node, ast.Compare) and isinstance(node.ops[0], ast.In | ast.NotIn):
            candidates.append(node.left)
        for c in candidates:
            if isinstance(c, ast.Constant) and isinstance(c.value, str):
                found.append((c.lineno, c.value))
    return found


def test_no_log_or_summary_key_as_a_literal_outside_the_records_module() -> None:
    """Node-log, rounds.json and summary.json keys are spelled once, in hefl/records.py: every
    writer and reader goes through its dataclasses. The line this draws: keys in key position
    (subscripts, get/pop/setdefault, dict displays, `in`); not getattr strings, f-strings or
    keyword arguments (RunLog checks those it is given against the records), nor the words
    record_keys exempts; page.html is checked by the test below."""
    keys = record_keys()
    assert {"accuracy", "critical_path", "byte_send", "bytes_on_wire", "test_samples"} <= keys
    found = [
        f"{path.relative_to(ROOT)}:{line} {value!r}"
        for path in sources("hefl", "blueprints", "bench", "main.py", "test.py")
        if path != ROOT / "hefl" / "records.py"
        for line, value in key_literals(ast.parse(path.read_text()))
        if value in keys
    ]
    assert found == []


def used_paths() -> dict[str, str]:
    """Every `hefl.*` dotted path named outside hefl/ (deploy's playbooks and scripts, bench,
    main.py, test.py, the READMEs), with where it is first named."""
    found: dict[str, str] = {}
    files = [p for p in (ROOT / "deploy").rglob("*") if p.is_file()]
    files += [*sources("bench", "main.py", "test.py"), ROOT / "README.md", ROOT / "seal.sh"]
    for path in files:
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for match in re.finditer(r"\bhefl(?:\.[A-Za-z_][A-Za-z0-9_]*)+", text):
            line = text.count("\n", 0, match.start()) + 1
            found.setdefault(match.group(0), f"{path.relative_to(ROOT)}:{line}")
    return found


def test_every_hefl_path_used_outside_hefl_imports() -> None:
    """A module moved inside hefl/ cannot silently break the deploy tier, a bench or the README:
    every dotted path they name is a module, or a name in one."""
    import importlib

    paths = used_paths()
    assert any(p.startswith("hefl.crypto") for p in paths) and len(paths) > 10
    broken = []
    for path, where in sorted(paths.items()):
        try:
            importlib.import_module(path)
        except ModuleNotFoundError:
            parent, _, name = path.rpartition(".")
            try:
                if not hasattr(importlib.import_module(parent), name):
                    broken.append(f"{where} {path}")
            except ModuleNotFoundError:
                broken.append(f"{where} {path}")
    assert broken == []


def test_the_live_page_reads_only_keys_a_round_row_has() -> None:
    """page.html (JavaScript, outside the literal check) reads /status's round rows: every key
    it reads of a row (`r.KEY`, `last.KEY`) is a field of records.RoundRow."""
    from hefl.records import RoundRow

    page = (ROOT / "blueprints" / "page.html").read_text()
    read = set(re.findall(r"\b(?:r|last)\.([a-z_]+)\b", page)) - {"ok", "json", "status"}
    assert {"accuracy", "client_byte_send", "aggregator_received"} <= read
    assert read <= set(RoundRow.keys())


def test_the_inner_loop_tier_starts_no_process(tmp_path: Path) -> None:
    """conftest's guard: a test with no slow-tier marker that starts a Python or forks a node
    fails, naming the marker it lacks."""
    with pytest.raises(AssertionError, match="mark it @pytest.mark.process"):
        subprocess.Popen([sys.executable, "-c", "pass"])
    with pytest.raises(AssertionError, match="forks a node process: mark it @pytest.mark.process"):
        NodeProcess.start(["node"], tmp_path / "node.err", {})


def test_every_key_of_the_files_a_run_writes_is_in_a_readme_table() -> None:
    """A node log, rounds.json, summary.json and run.json: every field of their records is named
    in a row of one of the README's tables (where a reader looks up what a figure means)."""
    import dataclasses

    import hefl.records as records

    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("|")]
    named = {
        word
        for row in rows
        for quoted in re.findall(r"`([^`]+)`", row)
        for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", quoted)
    }
    kinds = [
        records.NodeLog,
        records.RoundRecord,
        records.LinkBytes,
        records.Message,
        records.ClientFigures,
        records.HostedClient,
        records.RoundRow,
        records.RunSummary,
        records.RoundSummary,
        records.Totals,
        records.NotCompleted,
        records.CriticalPath,
        records.HeError,
        records.RoleBytes,
        records.NodeBytes,
        records.RunRecord,
        records.RunNode,
    ]
    missing = {
        kind.__name__: [f.name for f in dataclasses.fields(kind) if f.name not in named]
        for kind in kinds
    }
    assert {k: v for k, v in missing.items() if v} == {}
