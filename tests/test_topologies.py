"""`main.py topology` (hefl/control/topologies.py): configs for trees of any size that the config
parser takes as they are, with the shape asked for; config.json's own tree among them."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from hefl.config import parse_config
from hefl.control.topologies import Shape, least_depth, topology
from hefl.errors import ConfigError
from tests.helpers import ROOT, run_main

BASE = json.loads((ROOT / "config.json").read_text())


def without_ip(others: dict[str, Any]) -> dict[str, Any]:
    return {node: {k: v for k, v in entry.items() if k != "ip"} for node, entry in others.items()}


def test_config_json_is_8_clients_fanout_2_depth_2() -> None:
    raw = topology(Shape(clients=8, fanout=2, depth=2), BASE)
    assert without_ip(raw["others"]) == without_ip(BASE["others"])
    assert raw["aggregator"] == BASE["aggregator"]


def depth_of(raw: dict[str, Any], node: str) -> int:
    """Switches between a node and the aggregator."""
    hops, at = 0, raw["others"][node]["send"]
    while at != raw["aggregator"]["ip"]:
        hops, at = hops + 1, raw["others"][at]["send"]
    return hops


GRID = [
    Shape(n, k, d, forwarding, j, local)
    for n, k, j, forwarding, local in itertools.product(
        (1, 2, 5, 8, 33, 100), (2, 3, 4), (1, 3), (False, True), (False, True)
    )
    for d in (least_depth(-(-n // j), k), least_depth(-(-n // j), k) + 1)
]


def test_every_tree_of_a_grid_parses_with_its_shape() -> None:
    """288 trees: 1 to 100 clients, fan-out 2 to 4, the fewest levels and one more, 1 or 3
    clients a node, adding or forwarding, on 10.10.x.y or 127.0.0.1."""
    for shape in GRID:
        check_shape(shape)


def check_shape(shape: Shape) -> None:
    raw = topology(shape, BASE)
    cfg = parse_config(json.loads(json.dumps(raw)))  # as written and read back
    assert len(cfg.tree.clients()) == shape.clients, shape
    clients = [n for n, e in raw["others"].items() if e["type"] == "client"]
    switches = [n for n, e in raw["others"].items() if e["type"] == "switch"]
    assert len(clients) == shape.client_nodes, shape
    assert {depth_of(raw, c) for c in clients} == {shape.depth}, shape  # every leaf as deep
    assert all(0 < len(raw["others"][s]["receive"]) <= shape.fanout for s in switches), shape
    top = [n for n, e in raw["others"].items() if e["send"] == raw["aggregator"]["ip"]]
    assert 0 < len(top) <= shape.fanout, shape
    assert {raw["others"][s]["dumb"] for s in switches} <= {shape.forwarding}, shape
    hosted = sum(raw["others"][c].get("clients", 1) for c in clients)
    assert hosted == shape.clients, shape
    local = [n.startswith("127.0.0.1:") for n in [*clients, *switches]]
    assert set(local) == {shape.local}, shape


def test_a_tree_that_cannot_be_built_is_refused_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match="need --depth 3 or more"):
        topology(Shape(clients=100, fanout=4, depth=1), BASE)
    with pytest.raises(ConfigError, match="--fanout 1 takes one client node"):
        topology(Shape(clients=2, fanout=1, depth=3), BASE)
    assert topology(Shape(clients=1, fanout=1, depth=2), BASE)["others"]  # a chain of one
    # the fewest levels of a fan-out of 1 (no --depth): found at once, and refused by name
    depth = least_depth(4, 1)
    with pytest.raises(ConfigError, match="--fanout 1 takes one client node"):
        topology(Shape(clients=4, fanout=1, depth=depth), BASE)


@pytest.mark.process
def test_a_written_tree_runs_and_an_existing_file_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "tree.json"
    made = run_main(
        "topology",
        "--clients",
        "6",
        "--fanout",
        "3",
        "--depth",
        "1",
        "--per-node",
        "2",
        "--local",
        "--out",
        str(out),
    )
    assert made.returncode == 0, made.stderr
    assert "6 clients on 3 nodes, 1 adding switch" in made.stdout
    again = run_main("topology", "--clients", "4", "--out", str(out))
    assert again.returncode == 1 and "exists" in again.stderr
    raw = json.loads(out.read_text())
    raw["aggregator"]["iteration"] = 2
    out.write_text(json.dumps(raw))
    run = run_main("local", "--config", str(out), "--log-dir", str(tmp_path / "log"))
    assert run.returncode == 0, run.stderr[-2000:]
    assert sum(line.startswith("round ") for line in run.stdout.splitlines()) == 2
