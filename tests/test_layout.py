"""The layering the README's module map promises, checked on the source itself."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from hefl.wire import ROUTES
from tests.helpers import ROOT

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
        ("hefl/crypto", r"hefl\.config"),
        ("blueprints", r"torch|tenseal"),
    ],
)
def test_dependencies_run_one_way(where: str, banned: str) -> None:
    offending = {
        str(p.relative_to(ROOT)): sorted(m for m in imports(p) if re.match(rf"({banned})(\.|$)", m))
        for p in sources(where)
    }
    assert {p: m for p, m in offending.items() if m} == {}


def test_no_http_path_literal_outside_the_wire_table() -> None:
    """Routes come from hefl/wire.py everywhere else (the controller, test.py, nodes, bench)."""
    found = []
    for path in sources("hefl", "bench", "main.py", "test.py"):
        if path.name == "wire.py" and path.parent.name == "hefl":
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
    through the training part hefl.host gives it."""
    heavy = r"torch|hefl\.(model|training|data)"
    found = {
        str(p.relative_to(ROOT)): sorted(m for m in imports(p) if re.match(rf"({heavy})(\.|$)", m))
        for p in sources("hefl/nodes")
        if p.name != "local_training.py"
    }
    assert {p: m for p, m in found.items() if m} == {}
