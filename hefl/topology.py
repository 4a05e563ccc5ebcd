"""Checks that the nodes of a config form one tree of clients and switches under the aggregator."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from hefl.errors import ConfigError
from hefl.schema import MAX_CLIENTS


class NodeConfig(Protocol):
    """What the checks read of a node's config (hefl.config.NodeConfig)."""

    @property
    def id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def send(self) -> str: ...
    @property
    def receive(self) -> tuple[str, ...]: ...
    @property
    def index(self) -> int: ...
    @property
    def clients(self) -> int: ...
    @property
    def client_number(self) -> int: ...
    @property
    def dumb(self) -> bool: ...
    @property
    def local_sum(self) -> bool: ...


@dataclass(frozen=True)
class LogicalClient:
    """One client of FedAvg: its own slice, seeds and update. A client node hosts one or more;
    a node hosting k has clients `<node>#0` .. `<node>#k-1` (one: the node's own address)."""

    id: str
    node: str
    index: int  # its slice index (and the key of its seeds)


def logical_ids(node: NodeConfig) -> tuple[str, ...]:
    """The ids of the logical clients a client node hosts, in slice order."""
    if node.clients == 1:
        return (node.id,)
    return tuple(f"{node.id}#{j}" for j in range(node.clients))


class Tree:
    """The experiment's tree of nodes under the aggregator (`root`), as check_topology accepted
    it, and the logical clients its client nodes host: every question about who is where."""

    def __init__(self, nodes: Mapping[str, NodeConfig], root: str) -> None:
        self.nodes = nodes
        self.root = root
        found = [
            LogicalClient(lid, n.id, n.index + j)
            for n in nodes.values()
            if n.type == "client"
            for j, lid in enumerate(logical_ids(n))
        ]
        ordered = sorted(found, key=lambda c: c.index)
        # every logical client by id, in slice order; and by slice index
        self.logical: Mapping[str, LogicalClient] = {c.id: c for c in ordered}
        self.by_index: Mapping[int, str] = {c.index: c.id for c in ordered}

    def children(self, node_id: str) -> tuple[str, ...]:
        """Direct children of a node, in config order."""
        return tuple(n.id for n in self.nodes.values() if n.send == node_id)

    def clients(self) -> tuple[str, ...]:
        """Every (logical) client, ordered by slice index: what FedAvg, masks, min_clients and the
        headroom count. A node hosting one client is that client."""
        return tuple(self.logical)

    def client_nodes(self) -> tuple[str, ...]:
        """Every client node (process), ordered by slice index."""
        found = [n for n in self.nodes.values() if n.type == "client"]
        return tuple(n.id for n in sorted(found, key=lambda n: n.index))

    def hosted(self, node_id: str) -> tuple[str, ...]:
        """The logical clients a client node hosts, in slice order."""
        return logical_ids(self.nodes[node_id])

    def node_of(self, client: str) -> str:
        """The node a logical client runs on."""
        return self.logical[client].node

    def mask(self, clients: Iterable[str]) -> int:
        """A set of clients as a bit mask: bit i is the client of slice index i."""
        out = 0
        for c in clients:
            out |= 1 << self.logical[c].index
        return out

    def members(self, mask: int) -> tuple[str, ...]:
        """The clients of a bit mask, by slice index (in time linear in the mask's length: it can
        hold 16,384 clients)."""
        bits = bin(mask)[:1:-1]  # bit i at position i
        return tuple(
            self.by_index[i] for i, b in enumerate(bits) if b == "1" and i in self.by_index
        )

    def clients_under(self, node_id: str) -> tuple[str, ...]:
        """The (logical) clients whose updates pass through `node_id`: a node or a sender id."""
        node = self.nodes.get(node_id)
        if node is None:
            return (node_id,) if node_id in self.logical else ()
        if node.type == "client":
            return self.hosted(node_id)
        return tuple(c for child in self.children(node_id) for c in self.clients_under(child))

    def senders(self, node_id: str) -> tuple[str, ...]:
        """The sender ids of the updates a client node sends up: one per logical client, or its
        own address when it hosts one or adds its own (`local_sum`)."""
        node = self.nodes[node_id]
        return (node_id,) if node.local_sum or node.clients == 1 else self.hosted(node_id)

    def contributors(self, node_id: str) -> tuple[str, ...]:
        """Senders whose messages `node_id` adds: dumb switches pass their children's through."""
        found: list[str] = []
        for child in self.children(node_id):
            node = self.nodes[child]
            if node.type == "switch" and node.dumb:
                found.extend(self.contributors(child))
            elif node.type == "client":
                found.extend(self.senders(child))
            else:
                found.append(child)
        return tuple(found)

    def first_hops(self, node_id: str) -> dict[str, str]:
        """For each node below `node_id`, the child of `node_id` its updates arrive through (a
        dumb switch forwards its children's updates unchanged, under their own sender id); each
        logical client arrives through its node's."""
        hops = first_hops(self.nodes, node_id)
        hops.update({c: hops[n.node] for c, n in self.logical.items() if n.node in hops})
        return hops


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
