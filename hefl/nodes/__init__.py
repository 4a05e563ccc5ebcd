"""Round state of each role as plain classes; `build_node` imports torch only for clients."""

from __future__ import annotations

from hefl.nodes.base import Node, NodeContext


def build_node(ctx: NodeContext) -> Node:
    """The node object for `ctx.node_id`'s role in the config."""
    role = ctx.cfg.nodes[ctx.node_id].type
    if role == "client":
        from hefl.nodes.client import ClientNode  # torch: only clients pay for it

        return ClientNode(ctx)
    if role == "switch":
        from hefl.nodes.switch import SwitchNode

        return SwitchNode(ctx)
    from hefl.nodes.aggregator import AggregatorNode

    return AggregatorNode(ctx)


__all__ = ["Node", "NodeContext", "build_node"]
