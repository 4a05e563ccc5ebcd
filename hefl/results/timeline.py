"""Each round's critical path, from the node logs' message times and phase spans.

Nothing here compares the clocks of two machines. Each node's log gives durations and message times
on that node's own monotonic clock (offsets from its round start, plus the round start's offset
from the node's start). The critical path of a round is found by following messages backwards,
from the aggregator's sending of the round's global result, through the last update it waited
for, down to the client whose update that was, and on to the global result that set that client
going. The time spent on the nodes of that chain is measured on each node's own clock. The rest
of the round, measured on the aggregator's clock, is the time the chain's messages spent between
nodes (transfer).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from hefl.config import ExperimentConfig
from hefl.records import SPLIT, UNATTRIBUTED, CriticalPath, NodeLog

PHASES = (
    "train",
    "encrypt",
    "serialize",
    "send",
    "wait",
    "load",
    "aggregate",
    "decrypt",
    "apply",
    "evaluate",
    "wait_metrics",
)
# how the round time splits, by phase; a part of the chain no phase covers is waiting (a queue,
# the GIL, a lock, HTTP handling before a node acts on a message)
CATEGORY = {
    "train": "training",
    "evaluate": "training",
    "apply": "training",
    "encrypt": "crypto",
    "serialize": "crypto",
    "load": "crypto",
    "aggregate": "crypto",
    "decrypt": "crypto",
    "send": "transfer",
    "wait": "waiting",
    "wait_metrics": "waiting",
}
_PRIORITY = {name: i for i, name in enumerate(SPLIT)}  # where phases overlap, the first wins


def rounded(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(float(x), digits)


@dataclass
class Timeline:
    """One node's messages and phase spans, in seconds since the node started (its clock)."""

    node: str
    role: str
    # (time, "sent"/"received", kind, peer, round)
    messages: list[tuple[float, str, str, str, int]] = field(default_factory=list)
    spans: list[tuple[float, float, str]] = field(default_factory=list)  # (start, end, phase)

    @classmethod
    def of(cls, log: NodeLog) -> Timeline:
        line = cls(log.node, log.role)
        for rec in log.iteration:
            start = rec.start_s
            if start is None:  # a log from before message times were recorded
                continue
            for m in rec.messages:
                line.messages.append((start + m.t, m.dir, m.kind, m.peer, rec.round))
            for span in rec.spans:
                line.spans.append(
                    (start + span.start, start + span.start + span.seconds, span.phase)
                )
        line.messages.sort()
        return line

    def last(
        self,
        direction: str,
        kinds: Iterable[str],
        round_: int,
        before: float = math.inf,
        peer: str = "",
        peers: Collection[str] | None = None,
    ) -> tuple[float, str, str, str, int] | None:
        """The latest message of `kinds` and `round_` at or before `before` (retries: the last
        attempt before it), from or to `peer` when given, or one of `peers`."""
        kinds = set(kinds)
        found = None
        for m in self.messages:
            if m[0] > before:
                break
            if (
                m[1] == direction
                and m[2] in kinds
                and m[4] == round_
                and (not peer or m[3] == peer)
                and (peers is None or m[3] in peers)
            ):
                found = m
        return found

    def first(self, direction: str, kind: str, round_: int, peer: str = "") -> float | None:
        times = [
            m[0]
            for m in self.messages
            if m[1:3] == (direction, kind) and m[4] == round_ and (not peer or m[3] == peer)
        ]
        return min(times) if times else None

    def split(self, start: float, end: float) -> dict[str, float]:
        """Seconds of [start, end] by category: at each instant the category of a phase running
        then (training before crypto before transfer before waiting), else waiting."""
        cuts = sorted(
            {start, end} | {t for s, e, _ in self.spans for t in (s, e) if start < t < end}
        )
        out = dict.fromkeys(SPLIT, 0.0)
        for a, b in zip(cuts, cuts[1:], strict=False):
            mid = (a + b) / 2
            running = [CATEGORY.get(n, "waiting") for s, e, n in self.spans if s <= mid < e]
            out[min(running, key=_PRIORITY.__getitem__) if running else "waiting"] += b - a
        return out


def round_window(root: Timeline | None, round_: int) -> tuple[float, float] | None:
    """Round `round_` on the aggregator's clock: from its first sending of the previous global
    result (begin, for round 0) to its first sending of this one's; None if either is not in its
    log."""
    if root is None:
        return None
    end = root.first("sent", "global", round_)
    start = (
        root.first("sent", "begin", 0) if round_ == 0 else root.first("sent", "global", round_ - 1)
    )
    return None if start is None or end is None else (start, end)


def critical_path(
    lines: Mapping[str, Timeline],
    cfg: ExperimentConfig,
    round_: int,
    counted: Mapping[str, Collection[str]] | None = None,
) -> CriticalPath | None:
    """The chain of nodes that decided round `round_`'s time, and how that time splits; None when
    the aggregator never sent the round's global result. `counted`: per adder, the clients whose
    updates its sum of the round holds (its log's `contributors`): an update that arrived but was
    refused (late, at a deadline) did not decide anything and is not followed."""
    counted = counted or {}
    root = lines.get(cfg.tree.root)
    window = round_window(root, round_)
    if window is None:
        return None
    start, end = window
    segments: list[tuple[str, float, float]] = []
    complete = False
    node, t = cfg.tree.root, end
    # upward: from the global result back through the last update each adder waited for
    while True:
        line = lines.get(node)
        if line is None:
            break
        if line.role == "client":
            got = line.last("received", ("global", "begin"), round_ - 1 if round_ else 0, t)
            if round_ and got is not None and got[2] != "global":
                got = None
            if got is None:
                break
            segments.append((node, got[0], t))
            parent = got[3]
            break_down = _down_path(lines, cfg, parent, node, round_, segments, start)
            complete = break_down
            break
        peers = None
        if node in counted:  # the children whose updates were taken into the sum
            taken = set(counted[node])
            peers = [c for c in cfg.tree.children(node) if taken & set(cfg.tree.clients_under(c))]
        got = line.last("received", ("update",), round_, t, peers=peers)
        if got is None:
            break
        segments.append((node, got[0], t))
        child = lines.get(got[3])
        if child is None:
            break
        # the child's attempt that arrived: the last before the round's result reached it (a
        # retry after that, refused as a duplicate, went later)
        bound = child.first("received", "global", round_)
        sent = child.last(
            "sent", ("update",), round_, math.inf if bound is None else bound, peer=node
        )
        if sent is None:
            break
        node, t = got[3], sent[0]
    split = dict.fromkeys(SPLIT, 0.0)
    for name, a, b in segments:
        for key, value in lines[name].split(a, b).items():
            split[key] += value
    total = end - start
    on_nodes = sum(split.values())
    parts = {k: rounded(v) or 0.0 for k, v in split.items()}
    if complete:  # what the chain's messages spent between nodes
        parts["transfer"] = rounded(split["transfer"] + total - on_nodes) or 0.0
    else:  # a node's log is missing (a dropout's): what the chain spent is not all known
        parts[UNATTRIBUTED] = rounded(total - on_nodes) or 0.0
    nodes = tuple(name for name, _, _ in reversed(segments))
    clients = [n for n in nodes if cfg.nodes[n].type == "client"]
    return CriticalPath(nodes, complete, parts, clients[0] if clients else None)


def _down_path(
    lines: Mapping[str, Timeline],
    cfg: ExperimentConfig,
    node: str,
    child: str,
    round_: int,
    segments: list[tuple[str, float, float]],
    start: float,
) -> bool:
    """From a client back up the path its begin or global result came down, to the aggregator's
    sending; True when every node's log was there."""
    kind, r = ("begin", 0) if round_ == 0 else ("global", round_ - 1)
    while True:
        line = lines.get(node)
        if line is None:
            return False
        # the attempt that arrived: the last before the child's next update came back
        bound = line.first("received", "update", round_, peer=child)
        sent = line.last("sent", (kind,), r, math.inf if bound is None else bound, peer=child)
        if sent is None:
            return False
        if node == cfg.tree.root:
            segments.append((node, start, sent[0]))
            return True
        got = line.last("received", (kind,), r, sent[0])
        if got is None:
            return False
        segments.append((node, got[0], sent[0]))
        node, child = got[3], node
