"""Human-readable lines from the aggregator's round rows and the nodes' logs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hefl.address import log_name
from hefl.config import ExperimentConfig


def human_bytes(n: float) -> str:
    unit = "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            break
        n, unit = n / 1024, bigger
    return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"


def format_round(row: dict[str, Any], rounds: int) -> str:
    """One line per round: accuracy, loss, bytes the clients sent and received, seconds; and,
    when some client was missing (a round deadline), how many contributed and who was not."""
    line = (
        f"round {row['round'] + 1:>3}/{rounds}  accuracy {_figure(row['accuracy'])}  "
        f"loss {_figure(row['loss'])}  "
        f"clients sent {human_bytes(row['client_byte_send'])}  "
        f"received {human_bytes(row['client_byte_received'])}  "
        f"{row['duration_s']:.2f} s"
    )
    missing = row.get("missing") or []
    notes = []
    if missing:
        notes.append(f"{row['contributors']} clients; missing {', '.join(missing)}")
    if row.get("reports", row.get("contributors", 0)) < row.get("contributors", 0):
        notes.append(f"metrics from {row['reports']} of them")
    if notes:
        line += f"  ({'; '.join(notes)})"
    return line


def _figure(value: float | None) -> str:
    return "n/a   " if value is None else f"{value:.4f}"


def read_logs(exp_dir: Path) -> dict[str, dict[str, Any]]:
    """Every node log in an experiment folder, by node id."""
    logs = {}
    for path in sorted(exp_dir.glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "node" in data and "iteration" in data:
            logs[data["node"]] = data
    return logs


def node_table(logs: dict[str, dict[str, Any]], cfg: ExperimentConfig) -> list[str]:
    """Per node: mean body bytes sent and received per round, mean seconds per round."""
    lines = [f"{'node':<22}{'role':<11}{'sent/round':>13}{'recv/round':>13}{'s/round':>9}"]
    for node in cfg.nodes:
        data = logs.get(node)
        if data is None:
            lines.append(f"{node:<22}{cfg.nodes[node].type:<11}  (no log: see {log_name(node)})")
            continue
        recs = data["iteration"] or [{}]
        lines.append(
            f"{node:<22}{data['role']:<11}{human_bytes(_mean(recs, 'byte_send')):>13}"
            f"{human_bytes(_mean(recs, 'byte_received')):>13}{_mean(recs, 'duration_s'):>9.2f}"
        )
    return lines


def _mean(records: list[dict[str, Any]], key: str) -> float:
    return sum(r.get(key) or 0 for r in records) / len(records)
