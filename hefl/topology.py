"""Checks that the nodes of a config form one tree of clients and switches under the aggregator."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from hefl.errors import ConfigError

MAX_CLIENTS = (
    16_384  # logical clients of one experiment: the envelope's client mask holds this many
)

if TYPE_CHECKING:
    from hefl.config import NodeConfig


def check_topology(nodes: Mapping[str, NodeConfig], root: str) -> None:
    """Raise a one-line ConfigError for the first way the nodes fail to form a tree under `root`."""
    _check_sends(nodes, root)
    _check_paths(nodes, root)
    _check_receives(nodes)
    _check_clients(nodes)


def first_hops(nodes: Mapping[str, NodeConfig], node_id: str) -> dict[str, str]:
    """For each node below `node_id`, the child of `node_id` its updates arrive through (a dumb
    switch forwards its children's updates unchanged, under their own sender id)."""
    hops = {}
    for start in nodes:
        prev, current = start, start
        while current != node_id and nodes[current].send in nodes:
            prev, current = current, nodes[current].send
        if current == node_id and start != node_id:
            hops[start] = prev
    return hops


def _check_sends(nodes: Mapping[str, NodeConfig], root: str) -> None:
    for node in nodes.values():
        path = f"others[{node.id!r}].send"
        if node.type == "aggregator":
            continue
        if not node.send:
            raise ConfigError(
                f"{path}: missing: every {node.type} sends to a switch or the aggregator"
            )
        if node.send not in nodes:
            raise ConfigError(f"{path}: {node.send!r} is not a node of this experiment")
        if nodes[node.send].type == "client":
            raise ConfigError(
                f"{path}: {node.send!r} is a client; send to a switch or the aggregator"
            )
        if node.send == node.id:
            raise ConfigError(f"{path}: a node cannot send to itself")
    if not any(n.send == root for n in nodes.values()):
        raise ConfigError(f"aggregator.ip: no node sends to the aggregator {root!r}")


def _check_paths(nodes: Mapping[str, NodeConfig], root: str) -> None:
    """Every send chain must end at the aggregator without visiting a node twice."""
    for node in nodes.values():
        seen = [node.id]
        current = node
        while current.id != root:
            if current.type == "aggregator":
                raise ConfigError(
                    f"others[{node.id!r}]: its path ends at {current.id!r}, "
                    f"not at the aggregator {root!r}"
                )
            nxt = current.send
            if nxt in seen:
                cycle = " -> ".join([*seen[seen.index(nxt) :], nxt])
                raise ConfigError(f"others[{node.id!r}].send: cycle {cycle}")
            seen.append(nxt)
            current = nodes[nxt]


def _check_receives(nodes: Mapping[str, NodeConfig]) -> None:
    for node in nodes.values():
        if node.type != "switch":
            continue
        path = f"others[{node.id!r}].receive"
        children = [n.id for n in nodes.values() if n.send == node.id]
        for child in node.receive:
            if child not in nodes:
                raise ConfigError(f"{path}: {child!r} is not a node of this experiment")
        if len(set(node.receive)) != len(node.receive):
            raise ConfigError(f"{path}: lists a node twice")
        if set(node.receive) != set(children):
            raise ConfigError(
                f"{path}: {sorted(node.receive)} disagrees with the nodes that send to it "
                f"{sorted(children)}"
            )
        if not children:
            raise ConfigError(f"{path}: a switch needs at least one child")


def _check_clients(nodes: Mapping[str, NodeConfig]) -> None:
    """Every client slice 0 .. client_number - 1 is taken by exactly one logical client: a node
    takes slices index .. index + clients - 1."""
    clients = [n for n in nodes.values() if n.type == "client"]
    if not clients:
        raise ConfigError("others: an experiment needs at least one client")
    logical = sum(n.clients for n in clients)
    if logical > MAX_CLIENTS:  # before any slice is looked at
        raise ConfigError(
            f"others: {logical} clients in all; an experiment holds at most {MAX_CLIENTS} "
            "(the envelope's client mask)"
        )
    seen: dict[int, str] = {}
    for node in clients:
        path = f"others[{node.id!r}]"
        if node.client_number != clients[0].client_number:
            first = clients[0]
            raise ConfigError(
                f"{path}.client_number: {node.client_number} differs from "
                f"{first.client_number} of {first.id!r}"
            )
        last = node.index + node.clients - 1
        if not 0 <= node.index <= last < node.client_number:
            what = (
                f"{node.index}"
                if node.clients == 1
                else f"{node.index} with {node.clients} clients (slices {node.index}..{last})"
            )
            raise ConfigError(
                f"{path}.index: {what} is not in 0..{node.client_number - 1} (client_number)"
            )
        for i in range(node.index, last + 1):
            if i in seen:
                found = (
                    f"{i} is also the index" if node.clients == 1 else f"slice {i} is also a slice"
                )
                raise ConfigError(f"{path}.index: {found} of {seen[i]!r}")
            seen[i] = node.id
    if logical != clients[0].client_number:
        hosted = f"{logical} clients" if logical == len(clients) else f"{logical} logical clients"
        raise ConfigError(
            f"others: client_number is {clients[0].client_number} but the config has {hosted}"
        )
