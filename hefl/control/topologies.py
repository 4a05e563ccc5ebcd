"""Configs for a tree of any size: N logical clients on nodes of j clients each, under switch levels
of fan-out k, adding or forwarding, addressed on CloudLab's experiment network (10.10.x.y) or on
127.0.0.1 ports (`main.py topology`). Pure: the experiment's other sections come from a base config.

Nodes are numbered as in config.json: the client nodes first, then the switches level by level from
the leaves up, then the aggregator, the root. Depth is the number of switch levels between the
clients and the aggregator (0: clients send to the aggregator); every switch, and the aggregator,
takes at most k children, the last of a level the rest.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from hefl.errors import ConfigError

LOCAL_PORT = 6001  # the first port of a --local tree (nodes take consecutive ones)


@dataclass(frozen=True)
class Shape:
    """The tree `main.py topology` is asked for."""

    clients: int  # logical clients in all
    fanout: int  # the most children a switch or the aggregator takes
    depth: int  # switch levels between the clients and the aggregator
    forwarding: bool = False  # switches forward each update (dumb) instead of adding
    per_node: int = 1  # logical clients a client node hosts
    local: bool = False  # 127.0.0.1 ports instead of 10.10.x.y
    first_port: int = LOCAL_PORT  # with `local`: node 0's port (the others take the next ones)

    @property
    def client_nodes(self) -> int:
        return math.ceil(self.clients / self.per_node)


def least_depth(nodes: int, fanout: int) -> int:
    """The fewest switch levels that bring `nodes` client nodes under one aggregator (a fan-out
    of 1 brings only one: `check` says so)."""
    if fanout < 2:
        return 0
    depth, top = 0, nodes
    while top > fanout:
        top, depth = math.ceil(top / fanout), depth + 1
    return depth


def check(shape: Shape) -> None:
    """One line naming the flag, for a tree that cannot be built."""
    if shape.clients < 1 or shape.per_node < 1 or shape.depth < 0 or shape.fanout < 1:
        raise ConfigError("topology: --clients, --fanout and --per-node take 1 or more, --depth 0")
    if shape.fanout == 1 and shape.client_nodes > 1:
        raise ConfigError(
            f"topology: --fanout 1 takes one client node, not {shape.client_nodes}: raise "
            "--fanout or --per-node"
        )
    if shape.local and not 1 <= shape.first_port <= 65535 - shape.client_nodes * 2:
        raise ConfigError(f"topology: --first-port {shape.first_port} leaves no room for the tree")
    need = least_depth(shape.client_nodes, shape.fanout)
    if shape.depth < need:
        raise ConfigError(
            f"topology: {shape.client_nodes} client nodes with --fanout {shape.fanout} need "
            f"--depth {need} or more (the aggregator takes at most {shape.fanout} children)"
        )


def address(number: int, local: bool, first_port: int = LOCAL_PORT) -> str:
    """Node `number` (from 0): 10.10.1.1, 10.10.1.2, ... (254 a third octet), or a local port."""
    if local:
        return f"127.0.0.1:{first_port + number}"
    return f"10.10.{1 + number // 254}.{1 + number % 254}"


def levels(shape: Shape) -> list[list[int]]:
    """Node numbers by level, clients first, each level's nodes grouped k to a parent."""
    made = [list(range(shape.client_nodes))]
    for _ in range(shape.depth):
        below = made[-1]
        start = below[-1] + 1
        made.append([start + i for i in range(math.ceil(len(below) / shape.fanout))])
    return made


def topology(shape: Shape, base: dict[str, Any]) -> dict[str, Any]:
    """`base` (a raw config: its experiment sections) with this tree's nodes and aggregator."""
    check(shape)
    tiers = levels(shape)
    root = tiers[-1][-1] + 1
    name = {n: address(n, shape.local, shape.first_port) for tier in tiers for n in tier} | {
        root: address(root, shape.local, shape.first_port)
    }
    parent = {}
    for below, above in zip(tiers, [*tiers[1:], [root]], strict=True):
        for i, node in enumerate(below):  # k to a parent; the top level all to the root
            parent[node] = root if above == [root] else above[i // shape.fanout]
    raw = copy.deepcopy(base)
    raw["others"] = {name[n]: client(shape, n, name[parent[n]]) for n in tiers[0]}
    for tier in tiers[1:]:
        for n in tier:
            kids = [name[c] for c, p in parent.items() if p == n]
            raw["others"][name[n]] = {
                "type": "switch",
                "receive": kids,
                "send": name[parent[n]],
                "dumb": shape.forwarding,
            }
    raw["aggregator"] = {**raw.get("aggregator", {}), "ip": name[root]}
    return raw


def client(shape: Shape, n: int, parent: str) -> dict[str, Any]:
    """Client node `n`: its slice of the logical clients (the last node takes the rest)."""
    first = n * shape.per_node
    entry: dict[str, Any] = {
        "type": "client",
        "client_number": shape.clients,
        "index": first,
        "send": parent,
    }
    hosted = min(shape.per_node, shape.clients - first)
    if hosted > 1:
        entry["clients"] = hosted
    return entry
