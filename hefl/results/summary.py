"""A run's figures per round, rebuilt from its node logs alone: summary.json (summary.csv from
it in table.py, the plots in plots.py). A round completed when the aggregator closed it; its
accuracy and loss are the aggregator's own figures (its log, else rounds.json, else the clients'
logs); its bytes and phases come from every node's record of it (traffic.py) and its critical
path from their message times (timeline.py), each measured on its own node's clock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hefl.address import file_stem
from hefl.config import ExperimentConfig, parse_config
from hefl.crypto.params import in_effect
from hefl.files import write_bytes_atomic, write_json_atomic
from hefl.records import (
    FORMAT_VERSION,
    SPLIT,
    UNATTRIBUTED,
    ClientFigures,
    HeError,
    HostedClient,
    LogFormatError,
    NewerFormat,
    NodeBytes,
    NodeLog,
    NotCompleted,
    RoundRecord,
    RoundRow,
    RoundSummary,
    RunSummary,
    Totals,
    rows_from_json,
)
from hefl.results.options import FigureOptions
from hefl.results.table import to_csv
from hefl.results.timeline import Timeline, critical_path, round_window, rounded
from hefl.results.traffic import by_link, by_role, crypto_seconds, phases_by_role

Records = Mapping[str, Mapping[int, RoundRecord]]  # every node's records, by node and round


def read_run(exp_dir: Path) -> tuple[ExperimentConfig, dict[str, NodeLog]]:
    """The run's config (as the run used it) and every readable node log in its folder, by node
    id (a file that is not this node's log is left out)."""
    cfg = parse_config(json.loads((exp_dir / "config.json").read_text()))
    logs = {}
    for node in cfg.nodes:
        path = exp_dir / f"{file_stem(node)}.json"
        try:
            log = NodeLog.from_json(json.loads(path.read_text()))
        except NewerFormat as exc:
            raise NewerFormat(f"{path}: {exc}") from None
        except (OSError, ValueError, RecursionError, LogFormatError):
            continue  # not a log of this node (cut short, another file): missing
        if log.node == node:
            logs[node] = log
    return cfg, logs


def summarize(exp_dir: Path) -> RunSummary:
    """summary.json's content: one entry per round that completed, and the totals."""
    cfg, logs = read_run(exp_dir)
    lines = {n: Timeline.of(log) for n, log in logs.items()}
    records = {n: log.by_round() for n, log in logs.items()}
    closed = read_rows(exp_dir)
    completed = rounds_completed(cfg, logs, closed)
    he_error = he_errors(exp_dir, cfg, logs)
    rounds = []
    for r in range(cfg.rounds if completed is None else completed):
        row = _round_row(cfg, records, lines, r, closed, he_error.get(r))
        if row is None:
            break
        rounds.append(row)
    nodes = cfg.nodes.values()
    return RunSummary(
        experiment=exp_dir.name,
        scheme=cfg.encryption.scheme,
        # the library of ckks and bfv (none for the other schemes)
        backend=cfg.encryption.backend if cfg.encryption.scheme in ("ckks", "bfv") else None,
        encryption=encryption_in_effect(exp_dir, cfg),
        clients=len(cfg.tree.clients()),
        switches=sum(1 for n in nodes if n.type == "switch"),
        dumb_switches=sum(1 for n in nodes if n.type == "switch" and n.dumb),
        rounds_planned=cfg.rounds,
        rounds_completed=len(rounds),
        logs_missing=tuple(n for n in cfg.nodes if n not in logs),
        rounds=tuple(rounds),
        totals=_totals(rounds),
        rounds_not_completed=tuple(not_completed(cfg, records, len(rounds))),
        format_version=FORMAT_VERSION,
    )


def encryption_in_effect(exp_dir: Path, cfg: ExperimentConfig) -> dict[str, Any]:
    """The parameters the run encrypted with, every default resolved: as run.json recorded them
    when the run began (a default added since, `seeded` say, must not rewrite an older run), or
    from its config where run.json is missing or unreadable."""
    try:
        recorded = json.loads((exp_dir / "run.json").read_text()).get("encryption")
    except (OSError, ValueError, AttributeError):
        recorded = None
    return recorded if isinstance(recorded, dict) else in_effect(cfg.he_params())


def read_rows(exp_dir: Path) -> list[RoundRow] | None:
    """rounds.json: the rounds the controller recorded as the aggregator closed them (None when
    the folder has none, or it is not a list of rows)."""
    try:
        return rows_from_json(json.loads((exp_dir / "rounds.json").read_text()))
    except (OSError, ValueError):
        return None


def rounds_completed(
    cfg: ExperimentConfig, logs: Mapping[str, NodeLog], rows: Sequence[RoundRow] | None
) -> int | None:
    """How many rounds the run completed: those the aggregator closed (its log's records with an
    end), and no more than `rounds.json` lists (what the controller recorded: run.json's
    `rounds_completed`). None when neither is there (a folder from before rounds.json, or a copy
    without both): then the rounds some client evaluated count."""
    found: list[int] = []
    agg = logs.get(cfg.tree.root)
    if agg is not None:
        found.append(min(agg.rounds_closed(), cfg.rounds))
    if rows is not None:
        found.append(len(rows))
    return min(found) if found else None


def not_completed(cfg: ExperimentConfig, records: Records, first: int) -> list[NotCompleted]:
    """What the logs hold of the rounds after the last completed one (a failed run's): per round,
    whether the aggregator closed it, which nodes logged it, and the clients' figures of its
    result where some evaluated it. Never part of the totals."""
    out = []
    agg = records.get(cfg.tree.root)
    for r in range(first, cfg.rounds):
        nodes = [n for n in cfg.nodes if r in records.get(n, {})]
        if not nodes:
            break
        reports = client_reports(cfg, records, r)
        accuracy, loss, _ = _weighted(reports)
        closed = None if agg is None else bool(r in agg and agg[r].end_time)
        out.append(NotCompleted(r, closed, len(nodes), len(reports), accuracy, loss))
    return out


def _weighted(
    reports: Sequence[RoundRecord | ClientFigures],
) -> tuple[float | None, float | None, int]:
    """Accuracy and loss weighted by test samples, each over the reports that have it (None
    without any), and the test samples of them all."""

    def mean(values: list[tuple[float | None, int | None]]) -> float | None:
        known = [(v, n) for v, n in values if v is not None and n]
        total = sum(n for _, n in known)
        return rounded(sum(v * n for v, n in known) / total) if total else None

    accuracy = mean([(x.accuracy, x.test_samples) for x in reports])
    loss = mean([(x.loss, x.test_samples) for x in reports])
    return accuracy, loss, sum(x.test_samples or 0 for x in reports)


def _round_row(
    cfg: ExperimentConfig,
    records: Records,
    lines: Mapping[str, Timeline],
    r: int,
    rows: Sequence[RoundRow] | None,
    he_error: HeError | None,
) -> RoundSummary | None:
    """One round's figures; None when nothing says the round completed (no record of it in the
    aggregator's log or rounds.json, no client log that evaluated it)."""
    figures = round_figures(cfg, records, r, rows)
    if figures is None:
        return None
    accuracy, loss, clients, tests = figures
    recs = {n: rs[r] for n, rs in records.items() if r in rs}
    role = {n: cfg.nodes[n].type for n in cfg.nodes}
    counted = {n: rec.contributors for n, rec in recs.items() if rec.contributors is not None}
    window = round_window(lines.get(cfg.tree.root), r)
    agg = recs.get(cfg.tree.root)
    return RoundSummary(
        round=r,
        accuracy=rounded(accuracy),
        loss=rounded(loss),
        clients=clients,
        test_samples=tests,
        contributors=None if agg is None or agg.contributors is None else len(agg.contributors),
        round_s=None if window is None else rounded(window[1] - window[0]),
        bytes_on_wire=sum(rec.byte_send for rec in recs.values()),
        aggregator_ingress=0 if agg is None else agg.byte_received_up,
        bytes_by_role=by_role(recs, role),
        bytes_by_node={
            n: NodeBytes(role[n], recs[n].byte_send, recs[n].byte_received)
            for n in cfg.nodes
            if n in recs
        },
        bytes_by_link=by_link(recs, role),
        phases_by_role=phases_by_role(recs, role),
        crypto_s=crypto_seconds(recs),
        critical_path=critical_path(lines, cfg, r, counted),
        he_error=he_error,
    )


def round_figures(
    cfg: ExperimentConfig, records: Records, r: int, rows: Sequence[RoundRow] | None
) -> tuple[float | None, float | None, int, int | None] | None:
    """Accuracy, loss, the clients behind them and their test samples, of round `r`'s global
    model, as the aggregator computed them from the reports it took (null figures when it took
    none): from its log, else from rounds.json (its rows, as the controller recorded them); only
    where neither has the round, from the clients' own logs."""
    agg = records.get(cfg.tree.root, {}).get(r)
    if agg is not None and agg.end_time and agg.reports is not None:
        return agg.accuracy, agg.loss, agg.reports, agg.test_samples
    if rows is not None and r < len(rows):
        row = rows[r]
        return row.accuracy, row.loss, row.reports or 0, row.test_samples
    reports = client_reports(cfg, records, r)
    if not reports:
        return None
    accuracy, loss, tests = _weighted(reports)
    return accuracy, loss, len(reports), tests


def _totals(rounds: list[RoundSummary]) -> Totals:
    if not rounds:
        return Totals()
    timed = [row.round_s for row in rounds if row.round_s is not None]
    paths = [row.critical_path for row in rounds if row.critical_path]
    split = {
        k: rounded(sum(p.split.get(k, 0.0) or 0.0 for p in paths)) or 0.0
        for k in (*SPLIT, UNATTRIBUTED)
        if k != UNATTRIBUTED or any(UNATTRIBUTED in p.split for p in paths)
    }
    return Totals(
        rounds=len(rounds),
        final_accuracy=rounds[-1].accuracy,
        final_loss=rounds[-1].loss,
        seconds=rounded(sum(timed)) if timed else None,
        seconds_per_round=rounded(sum(timed) / len(timed)) if timed else None,
        bytes_on_wire=sum(row.bytes_on_wire for row in rounds),
        aggregator_ingress=sum(row.aggregator_ingress for row in rounds),
        crypto_s=rounded(sum(row.crypto_s for row in rounds)) or 0.0,
        critical_split=split,
    )


def client_reports(
    cfg: ExperimentConfig, records: Records, r: int
) -> list[RoundRecord | ClientFigures]:
    """Each (logical) client's evaluation of round `r`, from its node's record: the record itself
    for a node of one client, each entry of its `clients` for a node hosting several."""
    out: list[RoundRecord | ClientFigures] = []
    for node in cfg.tree.client_nodes():
        rec = records.get(node, {}).get(r)
        if rec is None or rec.accuracy is None:
            continue
        hosted = cfg.tree.hosted(node)
        if len(hosted) == 1:
            out.append(rec)
            continue
        mine = rec.clients or {}
        out.extend(mine[c] for c in hosted if c in mine and mine[c].accuracy is not None)
    return out


@dataclass(frozen=True)
class Head:
    """What the HE error check needs of a (logical) client: its node, weight and training
    samples, and its node's client_number and all_samples."""

    node: str
    weight: float
    train_samples: int
    client_number: int
    all_samples: int


def client_heads(cfg: ExperimentConfig, logs: Mapping[str, NodeLog]) -> dict[str, Head]:
    """Each (logical) client's Head, by client id, where its node's log has what it needs (a log
    edited or cut short may not)."""
    out = {}
    for node in cfg.tree.client_nodes():
        head = logs.get(node)
        if head is None or head.client_number is None or head.all_samples is None:
            continue
        if len(cfg.tree.hosted(node)) == 1:
            mine: tuple[HostedClient, ...] = (
                HostedClient(node, head.index, head.train_samples, head.weight),
            )
        else:
            mine = tuple(c for c in head.clients or () if c.client in cfg.tree.logical)
        for c in mine:
            if c.weight is not None and c.train_samples is not None:
                out[c.client] = Head(
                    node, c.weight, c.train_samples, head.client_number, head.all_samples
                )
    return out


def he_errors(
    exp_dir: Path, cfg: ExperimentConfig, logs: Mapping[str, NodeLog]
) -> dict[int, HeError]:
    """Per round, when the clients saved their models: the max and mean absolute difference
    between the global model each client node decrypted and the plaintext FedAvg of the saved
    local models of that round's contributors (same base, weights and clipping, in float64): the
    exact error of the scheme's encoding, encryption and decryption in that round. Each file is
    read once and the sum made once per round (a run can have thousands of clients)."""
    heads = client_heads(cfg, logs)
    agg = logs[cfg.tree.root].by_round() if cfg.tree.root in logs else {}
    clip = cfg.encryption.clip
    out: dict[int, HeError] = {}
    for r in range(cfg.rounds):
        # who the round's sum holds: only the aggregator's log says (no guess without it)
        members = agg[r].contributors if r in agg else None
        if not members or not set(members) <= heads.keys():
            break  # not known, or a contributor's log lacks what the arithmetic needs
        # the global models are saved once per node, the local ones per client
        nodes = list(dict.fromkeys(heads[c].node for c in members))
        try:
            bases = {n: _load(exp_dir, n, "init" if r == 0 else f"r{r - 1}.global") for n in nodes}
            total = np.zeros_like(bases[nodes[0]])
            for m in members:
                delta = _load(exp_dir, m, f"r{r}.local") - bases[heads[m].node]
                total += np.clip(delta * heads[m].weight, -clip, clip)
            summed = sum(heads[m].train_samples for m in members)
            diffs = []
            for n in nodes:
                head = heads[next(c for c in members if heads[c].node == n)]
                want = bases[n] + total * (head.all_samples / (head.client_number * summed))
                diffs.append(np.abs(_load(exp_dir, n, f"r{r}.global") - want))
        except (OSError, ValueError, EOFError):
            break  # not saved (training.save_models false), cut short, or the round not done
        worst = max(float(d.max()) for d in diffs)
        mean = float(np.mean([float(d.mean()) for d in diffs]))
        out[r] = HeError(float(f"{worst:.6g}"), float(f"{mean:.6g}"))
    return out


def _load(exp_dir: Path, client: str, tag: str) -> np.ndarray:
    flat: np.ndarray = np.load(exp_dir / f"{file_stem(client)}.{tag}.npy")
    return flat.astype(np.float64)


def write_summary(
    exp_dir: Path, plots: bool = True, figures: FigureOptions | None = None
) -> RunSummary:
    """summary.json, summary.csv and the figures of a run folder (PNG, and the other formats
    `figures` asks for), from its logs alone; the same logs always give the same bytes."""
    summary = summarize(exp_dir)
    write_json_atomic(exp_dir / "summary.json", summary.to_json())
    write_bytes_atomic(exp_dir / "summary.csv", to_csv(summary).encode())
    if plots:  # matplotlib only when asked for
        from hefl.results.plots import plot_run

        plot_run(summary, exp_dir, figures)
    return summary
