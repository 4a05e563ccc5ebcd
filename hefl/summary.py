"""A run's figures per round, rebuilt from its node logs alone: summary.json and summary.csv.

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

import csv
import io
import json
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hefl.address import file_stem
from hefl.config import ExperimentConfig, parse_config
from hefl.crypto.params import in_effect
from hefl.runlog import rounds_closed, write_bytes_atomic, write_json_atomic

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
SPLIT = ("training", "crypto", "transfer", "waiting")
_PRIORITY = {name: i for i, name in enumerate(SPLIT)}  # where phases overlap, the first wins
ROLES = ("client", "switch", "aggregator")
DIRECTIONS = ("up", "down", "control")


def _rounded(x: float | None, digits: int = 6) -> float | None:
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
    def of(cls, log: Mapping[str, Any]) -> Timeline:
        line = cls(log["node"], log["role"])
        for rec in log.get("iteration", []):
            start = rec.get("start_s")
            if start is None:  # a log from before message times were recorded
                continue
            for m in rec.get("messages", []):
                line.messages.append((start + m["t"], m["dir"], m["kind"], m["peer"], rec["round"]))
            for name, offset, seconds in rec.get("spans", []):
                line.spans.append((start + offset, start + offset + seconds, name))
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
) -> dict[str, Any] | None:
    """The chain of nodes that decided round `round_`'s time, and how that time splits; None when
    the aggregator never sent the round's global result. `counted`: per adder, the clients whose
    updates its sum of the round holds (its log's `contributors`): an update that arrived but was
    refused (late, at a deadline) did not decide anything and is not followed."""
    counted = counted or {}
    root = lines.get(cfg.root)
    window = round_window(root, round_)
    if window is None:
        return None
    start, end = window
    segments: list[tuple[str, float, float]] = []
    complete = False
    node, t = cfg.root, end
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
            peers = [c for c in cfg.children(node) if taken & set(cfg.clients_under(c))]
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
    out: dict[str, Any] = {
        "nodes": [name for name, _, _ in reversed(segments)],
        "complete": complete,
    }
    if complete:
        split["transfer"] += total - on_nodes  # what the chain's messages spent between nodes
        out["split"] = {k: _rounded(v) for k, v in split.items()}
    else:  # a node's log is missing (a dropout's): what the chain spent is not all known
        out["split"] = {k: _rounded(v) for k, v in split.items()} | {
            "unattributed": _rounded(total - on_nodes)
        }
    clients = [n for n in out["nodes"] if cfg.nodes[n].type == "client"] if out["nodes"] else []
    out["client"] = clients[0] if clients else None
    return out


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
        if node == cfg.root:
            segments.append((node, start, sent[0]))
            return True
        got = line.last("received", (kind,), r, sent[0])
        if got is None:
            return False
        segments.append((node, got[0], sent[0]))
        node, child = got[3], node


def read_run(exp_dir: Path) -> tuple[ExperimentConfig, dict[str, dict[str, Any]]]:
    """The run's config (as the run used it) and every node log in its folder, by node id."""
    cfg = parse_config(json.loads((exp_dir / "config.json").read_text()))
    logs = {}
    for node in cfg.nodes:
        path = exp_dir / f"{file_stem(node)}.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("node") == node:
            logs[node] = data
    return cfg, logs


def summarize(exp_dir: Path) -> dict[str, Any]:
    """summary.json's content: one entry per round that completed, and the totals."""
    cfg, logs = read_run(exp_dir)
    lines = {n: Timeline.of(d) for n, d in logs.items()}
    records = {n: {rec["round"]: rec for rec in d.get("iteration", [])} for n, d in logs.items()}
    role = {n: cfg.nodes[n].type for n in cfg.nodes}
    closed = read_rows(exp_dir)
    completed = rounds_completed(cfg, logs, closed)
    rounds = []
    for r in range(cfg.rounds if completed is None else completed):
        row = _round_row(cfg, logs, records, lines, role, r, closed)
        if row is None:
            break
        rounds.append(row)
    he_error = he_errors(exp_dir, cfg, logs)
    for row in rounds:
        row["he_error"] = he_error.get(row["round"])
    return {
        "experiment": exp_dir.name,
        "scheme": cfg.encryption.scheme,
        # the library of ckks and bfv (none for the other schemes)
        "backend": cfg.encryption.backend if cfg.encryption.scheme in ("ckks", "bfv") else None,
        # the parameters in effect, every default resolved (as in run.json)
        "encryption": in_effect(cfg.he_params()),
        "clients": len(cfg.clients()),
        "switches": sum(1 for n in cfg.nodes.values() if n.type == "switch"),
        "dumb_switches": sum(1 for n in cfg.nodes.values() if n.type == "switch" and n.dumb),
        "rounds_planned": cfg.rounds,
        "rounds_completed": len(rounds),
        "logs_missing": [n for n in cfg.nodes if n not in logs],
        "rounds": rounds,
        "totals": _totals(rounds),
        "rounds_not_completed": not_completed(cfg, records, len(rounds)),
    }


def read_rows(exp_dir: Path) -> list[dict[str, Any]] | None:
    """rounds.json: the rounds the controller recorded as the aggregator closed them (None when
    the folder has none, or it is not a list of rows)."""
    try:
        rows = json.loads((exp_dir / "rounds.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        return None
    return rows


def rounds_completed(
    cfg: ExperimentConfig, logs: Mapping[str, Any], rows: list[dict[str, Any]] | None
) -> int | None:
    """How many rounds the run completed: those the aggregator closed (its log's records with an
    end), and no more than `rounds.json` lists (what the controller recorded: run.json's
    `rounds_completed`). None when neither is there (a folder from before rounds.json, or a copy
    without both): then the rounds some client evaluated count."""
    found: list[int] = []
    agg = logs.get(cfg.root)
    if agg is not None:
        found.append(min(rounds_closed(agg), cfg.rounds))
    if rows is not None:
        found.append(len(rows))
    return min(found) if found else None


def not_completed(
    cfg: ExperimentConfig, records: Mapping[str, Mapping[int, dict[str, Any]]], first: int
) -> list[dict[str, Any]]:
    """What the logs hold of the rounds after the last completed one (a failed run's): per round,
    whether the aggregator closed it, which nodes logged it, and the clients' figures of its
    result where some evaluated it. Never part of the totals."""
    out = []
    for r in range(first, cfg.rounds):
        nodes = [n for n in cfg.nodes if r in records.get(n, {})]
        if not nodes:
            break
        reports = client_reports(cfg, records, r)
        tests = sum(rec["test_samples"] for rec in reports)
        agg = records.get(cfg.root)
        out.append(
            {
                "round": r,
                # null: not known (no log of the aggregator here)
                "closed_by_aggregator": None
                if agg is None
                else bool(agg.get(r, {}).get("end_time")),
                "nodes_logged": len(nodes),
                "clients_evaluated": len(reports),
                "accuracy": _rounded(
                    sum(x["accuracy"] * x["test_samples"] for x in reports) / tests
                )
                if tests
                else None,
                "loss": _rounded(sum(x["loss"] * x["test_samples"] for x in reports) / tests)
                if tests
                else None,
            }
        )
    return out


def _round_row(
    cfg: ExperimentConfig,
    logs: Mapping[str, Any],
    records: Mapping[str, Mapping[int, dict[str, Any]]],
    lines: Mapping[str, Timeline],
    role: Mapping[str, str],
    r: int,
    rows: list[dict[str, Any]] | None,
) -> dict[str, Any] | None:
    """One round's figures; None when nothing says the round completed (no record of it in the
    aggregator's log or rounds.json, no client log that evaluated it)."""
    figures = round_figures(cfg, records, r, rows)
    if figures is None:
        return None
    accuracy, loss, clients, tests = figures
    recs = {n: rs[r] for n, rs in records.items() if r in rs}
    by_role: dict[str, dict[str, int]] = {}
    for name in ROLES:
        keys = [f"byte_{k}_{d}" for d in DIRECTIONS for k in ("send", "received")]
        by_role[name] = {
            k.removeprefix("byte_"): sum(
                rec.get(k, 0) for n, rec in recs.items() if role[n] == name
            )
            for k in keys
        }
    links: dict[str, int] = {}
    for n, rec in recs.items():
        for peer, counts in rec.get("links", {}).items():
            if peer not in role:
                continue  # strangers' messages: counted by the node, not a link of the topology
            for d in ("up", "down"):
                sent = counts.get(f"sent_{d}", 0)
                if sent:
                    key = f"{role[n]}->{role[peer]}"
                    links[f"{d}:{key}"] = links.get(f"{d}:{key}", 0) + sent
    links["metrics"] = sum(
        rec.get("byte_send_control", 0) for n, rec in recs.items() if role[n] == "client"
    )
    phases: dict[str, dict[str, float | None]] = {}
    for name in ROLES:
        mine = [rec for n, rec in recs.items() if role[n] == name]
        if mine:
            phases[name] = {  # the phases this role has, as a mean over its nodes
                p: _rounded(sum(rec.get("phases", {}).get(p, 0.0) for rec in mine) / len(mine))
                for p in PHASES
                if any(p in rec.get("phases", {}) for rec in mine)
            }
    counted = {n: rec["contributors"] for n, rec in recs.items() if "contributors" in rec}
    path = critical_path(lines, cfg, r, counted)
    window = round_window(lines.get(cfg.root), r)
    round_s = None if window is None else window[1] - window[0]
    agg = recs.get(cfg.root, {})
    return {
        "round": r,
        "accuracy": _rounded(accuracy),
        "loss": _rounded(loss),
        "clients": clients,
        "test_samples": tests,
        "contributors": len(agg["contributors"]) if "contributors" in agg else None,
        "round_s": _rounded(round_s),
        "bytes_on_wire": sum(rec.get("byte_send", 0) for rec in recs.values()),
        "aggregator_ingress": agg.get("byte_received_up", 0),
        "bytes_by_role": by_role,
        "bytes_by_node": {
            n: {
                "role": role[n],
                "sent": got.get("byte_send", 0),
                "received": got.get("byte_received", 0),
            }
            for n in cfg.nodes
            if (got := recs.get(n)) is not None
        },
        "bytes_by_link": dict(sorted(links.items())),
        "phases_by_role": phases,
        "crypto_s": _rounded(
            sum(
                rec.get("phases", {}).get(p, 0.0)
                for rec in recs.values()
                for p, c in CATEGORY.items()
                if c == "crypto"
            )
        ),
        "critical_path": path,
    }


def round_figures(
    cfg: ExperimentConfig,
    records: Mapping[str, Mapping[int, dict[str, Any]]],
    r: int,
    rows: list[dict[str, Any]] | None,
) -> tuple[float | None, float | None, int, int | None] | None:
    """Accuracy, loss, the clients behind them and their test samples, of round `r`'s global
    model, as the aggregator computed them from the reports it took (null figures when it took
    none): from its log, else from rounds.json (its rows, as the controller recorded them); only
    where neither has the round, from the clients' own logs."""
    agg = records.get(cfg.root, {}).get(r, {})
    if agg.get("end_time") and "reports" in agg:
        return _figures_of(agg)
    if rows is not None and r < len(rows):
        return _figures_of(rows[r])
    reports = client_reports(cfg, records, r)
    if not reports:
        return None
    tests = sum(rec["test_samples"] for rec in reports)
    accuracy = sum(rec["accuracy"] * rec["test_samples"] for rec in reports) / tests
    loss = sum(rec["loss"] * rec["test_samples"] for rec in reports) / tests
    return accuracy, loss, len(reports), tests


def _figures_of(row: Mapping[str, Any]) -> tuple[float | None, float | None, int, int | None]:
    """The aggregator's figures of a round, from its log record or its rounds.json row (a value
    that is not a number, in a file edited by hand, counts as unknown)."""

    def number(key: str) -> Any:
        value = row.get(key)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    return number("accuracy"), number("loss"), number("reports") or 0, number("test_samples")


def _totals(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    if not rounds:
        return {"rounds": 0}
    timed = [row["round_s"] for row in rounds if row["round_s"] is not None]
    paths = [row["critical_path"] for row in rounds if row["critical_path"]]
    split = {
        k: _rounded(sum(p["split"].get(k, 0.0) or 0.0 for p in paths))
        for k in (*SPLIT, "unattributed")
        if k != "unattributed" or any("unattributed" in p["split"] for p in paths)
    }
    return {
        "rounds": len(rounds),
        "final_accuracy": rounds[-1]["accuracy"],
        "final_loss": rounds[-1]["loss"],
        "seconds": _rounded(sum(timed)) if timed else None,
        "seconds_per_round": _rounded(sum(timed) / len(timed)) if timed else None,
        "bytes_on_wire": sum(row["bytes_on_wire"] for row in rounds),
        "aggregator_ingress": sum(row["aggregator_ingress"] for row in rounds),
        "crypto_s": _rounded(sum(row["crypto_s"] for row in rounds)),
        "critical_split": split,
    }


def client_reports(
    cfg: ExperimentConfig, records: Mapping[str, Mapping[int, dict[str, Any]]], r: int
) -> list[dict[str, Any]]:
    """Each (logical) client's evaluation of round `r`, from its node's record: the record itself
    for a node of one client, each entry of its `clients` for a node hosting several."""
    out = []
    for node in cfg.client_nodes():
        rec = records.get(node, {}).get(r)
        if rec is None or rec.get("accuracy") is None:
            continue
        hosted = cfg.hosted(node)
        if len(hosted) == 1:
            out.append(rec)
            continue
        mine = rec.get("clients")
        if not isinstance(mine, dict):
            continue
        out.extend(
            mine[c]
            for c in hosted
            if isinstance(mine.get(c), dict) and mine[c].get("accuracy") is not None
        )
    return out


def client_heads(cfg: ExperimentConfig, logs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """What the HE error check needs of each (logical) client, by client id: its weight and
    training samples, its node's client_number and all_samples, and the node (`node`)."""
    out = {}
    for node in cfg.client_nodes():
        head = logs.get(node)
        if head is None:
            continue
        shared = {k: head.get(k) for k in ("client_number", "all_samples")}
        if len(cfg.hosted(node)) == 1:
            if _numbers(head, "weight", "train_samples", "client_number", "all_samples"):
                out[node] = {**shared, **{k: head[k] for k in ("weight", "train_samples")}}
                out[node]["node"] = node
            continue
        if not _numbers(shared, "client_number", "all_samples"):
            continue
        listed = head.get("clients")
        for c in listed if isinstance(listed, list) else []:
            if (
                isinstance(c, dict)
                and isinstance(c.get("client"), str)
                and c["client"] in cfg.logical
                and _numbers(c, "weight", "train_samples")
            ):
                out[c["client"]] = {
                    **shared,
                    "weight": c.get("weight"),
                    "train_samples": c.get("train_samples"),
                    "node": node,
                }
    return out


def _numbers(values: Mapping[str, Any], *keys: str) -> bool:
    """Whether a log's `keys` are all numbers (a log edited or cut short may lack them)."""
    return all(
        isinstance(values.get(k), int | float) and not isinstance(values.get(k), bool) for k in keys
    )


def he_errors(
    exp_dir: Path, cfg: ExperimentConfig, logs: Mapping[str, Any]
) -> dict[int, dict[str, float]]:
    """Per round, when the clients saved their models: the max and mean absolute difference
    between the global model each client node decrypted and the plaintext FedAvg of the saved
    local models of that round's contributors (same base, weights and clipping, in float64): the
    exact error of the scheme's encoding, encryption and decryption in that round. Each file is
    read once and the sum made once per round (a run can have thousands of clients)."""
    heads = client_heads(cfg, logs)
    agg = {rec["round"]: rec for rec in logs.get(cfg.root, {}).get("iteration", [])}
    clip = cfg.encryption.clip
    out: dict[int, dict[str, float]] = {}
    for r in range(cfg.rounds):
        # who the round's sum holds: only the aggregator's log says (no guess without it)
        members = agg.get(r, {}).get("contributors")
        if not members or not set(members) <= heads.keys():
            break  # not known, or a contributor's log lacks what the arithmetic needs
        # the global models are saved once per node, the local ones per client
        nodes = list(dict.fromkeys(heads[c]["node"] for c in members))
        try:
            bases = {n: _load(exp_dir, n, "init" if r == 0 else f"r{r - 1}.global") for n in nodes}
            total = np.zeros_like(bases[nodes[0]])
            for m in members:
                delta = _load(exp_dir, m, f"r{r}.local") - bases[heads[m]["node"]]
                total += np.clip(delta * heads[m]["weight"], -clip, clip)
            summed = sum(heads[m]["train_samples"] for m in members)
            diffs = []
            for n in nodes:
                head = heads[next(c for c in members if heads[c]["node"] == n)]
                want = bases[n] + total * (head["all_samples"] / (head["client_number"] * summed))
                diffs.append(np.abs(_load(exp_dir, n, f"r{r}.global") - want))
        except (OSError, ValueError, EOFError):
            break  # not saved (training.save_models false), cut short, or the round not done
        worst = max(float(d.max()) for d in diffs)
        mean = float(np.mean([float(d.mean()) for d in diffs]))
        out[r] = {"max_abs": float(f"{worst:.6g}"), "mean_abs": float(f"{mean:.6g}")}
    return out


def _load(exp_dir: Path, client: str, tag: str) -> np.ndarray:
    flat: np.ndarray = np.load(exp_dir / f"{file_stem(client)}.{tag}.npy")
    return flat.astype(np.float64)


CSV_SPLIT = tuple(f"critical_{k}_s" for k in SPLIT)


def to_csv(summary: Mapping[str, Any]) -> str:
    """summary.csv: one row per round and one of totals; bytes per link kind and phase seconds
    per role as columns."""
    rounds = summary["rounds"]
    link_keys = sorted({k for row in rounds for k in row["bytes_by_link"]})
    phase_cols = [
        (role, p)
        for role in ROLES
        for p in PHASES
        if any(p in row["phases_by_role"].get(role, {}) for row in rounds)
    ]
    head = [
        "round",
        "accuracy",
        "loss",
        "clients",
        "round_s",
        "bytes_on_wire",
        "aggregator_ingress",
        *(f"bytes_{k.replace(':', '_').replace('->', '_to_')}" for k in link_keys),
        *(f"{role}_{p}_s" for role, p in phase_cols),
        "crypto_s",
        *CSV_SPLIT,
        "critical_client",
        "he_error_max",
        "he_error_mean",
    ]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    for row in rounds:
        path = row["critical_path"] or {}
        split = path.get("split", {})
        he = row.get("he_error") or {}
        w.writerow(
            [
                row["round"],
                row["accuracy"],
                row["loss"],
                row["clients"],
                row["round_s"],
                row["bytes_on_wire"],
                row["aggregator_ingress"],
                *(row["bytes_by_link"].get(k, 0) for k in link_keys),
                *(row["phases_by_role"].get(role, {}).get(p, "") for role, p in phase_cols),
                row["crypto_s"],
                *(split.get(k, "") for k in SPLIT),
                path.get("client", ""),
                he.get("max_abs", ""),
                he.get("mean_abs", ""),
            ]
        )
    t = summary["totals"]
    if t.get("rounds"):
        w.writerow(
            [
                "total",
                t["final_accuracy"],
                t["final_loss"],
                "",
                t["seconds"],
                t["bytes_on_wire"],
                t["aggregator_ingress"],
                *(sum(row["bytes_by_link"].get(k, 0) for row in rounds) for k in link_keys),
                *([""] * len(phase_cols)),
                t["crypto_s"],
                *(t["critical_split"][k] for k in SPLIT),
                "",
                "",
                "",
            ]
        )
    return buf.getvalue()


def write_summary(exp_dir: Path, plots: bool = True) -> dict[str, Any]:
    """summary.json, summary.csv and the plots of a run folder, from its logs alone; the same
    logs always give the same bytes."""
    summary = summarize(exp_dir)
    write_json_atomic(exp_dir / "summary.json", summary)
    write_bytes_atomic(exp_dir / "summary.csv", to_csv(summary).encode())
    if plots:
        from hefl.plots import plot_run

        plot_run(summary, exp_dir)
    return summary
