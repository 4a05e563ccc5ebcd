"""Round state of each role as plain classes given their parts; only clients import torch."""

from __future__ import annotations

from hefl.node.nodes.base import Node, Parts, Sender, Worker


def role_class(role: str) -> type[Node]:
    """The node class of a role (importing it: only clients pay for torch)."""
    if role == "client":
        from hefl.node.nodes.client import ClientNode

        return ClientNode
    if role == "switch":
        from hefl.node.nodes.switch import SwitchNode

        return SwitchNode
    from hefl.node.nodes.aggregator import AggregatorNode

    return AggregatorNode


__all__ = ["Node", "Parts", "Sender", "Worker", "role_class"]
