"""Human-readable lines from the aggregator's round rows and the nodes' logs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hefl.address import log_name
from hefl.config import ExperimentConfig
from hefl.crypto.params import describe, scheme_label


def human_bytes(n: float) -> str:
    unit = "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            break
        n, unit = n / 1024, bigger
    return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"


MISSING_SHOWN = 8  # missing clients a round line names


def format_round(row: dict[str, Any], rounds: int) -> str:
    """One line per round: accuracy, loss, bytes the clients sent and received, seconds; and,
    when some client was missing (a round deadline), how many contributed and who was not."""
    line = (
        f"round {row['round'] + 1:>3}/{rounds}  accuracy {_figure(row['accuracy'])}  "
        f"loss {_figure(row['loss'])}  "
        f"clients sent {human_bytes(row['client_byte_send'])}  "
        f"received {human_bytes(row['client_byte_received'])}  "
        + (
            f"aggregator got {human_bytes(row['aggregator_received'])}  "
            if "aggregator_received" in row
            else ""
        )
        + f"{row['duration_s']:.2f} s"
    )
    missing = row.get("missing") or []
    notes = []
    if missing:
        named = ", ".join(missing[:MISSING_SHOWN])
        if len(missing) > MISSING_SHOWN:  # logical clients can be hundreds: rounds.json has all
            named += f", ... ({len(missing)} in all)"
        notes.append(f"{row['contributors']} clients; missing {named}")
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


def _label(summary: dict[str, Any]) -> str:
    return scheme_label(str(summary["scheme"]), str(summary.get("backend") or "tenseal"))


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """What `main.py report` prints: one line per round of summary.json, then its totals."""
    lines = [
        f"{summary['experiment']}: scheme {_label(summary)}, {summary['clients']} clients, "
        f"{summary['switches']} switches ({summary['dumb_switches']} forwarding)"
        + (f"; {described}" if (described := describe(summary.get("encryption") or {})) else ""),
        f"{'round':>5} {'accuracy':>9} {'loss':>8} {'s':>7} {'on wire':>10} {'agg in':>10}  "
        f"critical path: train / crypto / transfer / wait (s)  HE error max",
    ]
    for row in summary["rounds"]:
        split = (row["critical_path"] or {}).get("split", {})
        parts = " / ".join(
            f"{split.get(k) or 0:.3f}" for k in ("training", "crypto", "transfer", "waiting")
        )
        he = row.get("he_error")
        lines.append(
            f"{row['round'] + 1:>5} {_figure(row['accuracy']):>9} {_figure(row['loss']):>8} "
            f"{row['round_s'] or 0:>7.3f} {human_bytes(row['bytes_on_wire']):>10} "
            f"{human_bytes(row['aggregator_ingress']):>10}  {parts:<45}"
            f"{'' if he is None else format(he['max_abs'], '.3g')}"
        )
    t = summary["totals"]
    if t.get("rounds"):
        lines.append(
            f"total: {t['rounds']} of {summary['rounds_planned']} rounds, final accuracy "
            f"{_figure(t['final_accuracy'])}, {t['seconds'] or 0:.2f} s, "
            f"{human_bytes(t['bytes_on_wire'])} on the wire, "
            f"{human_bytes(t['aggregator_ingress'])} into the aggregator, "
            f"{t['crypto_s']:.2f} s in crypto phases (all nodes, all rounds)"
        )
    else:
        lines.append("total: no round completed")
    for later in summary.get("rounds_not_completed", []):
        what = {
            True: "closed by the aggregator, not in rounds.json",
            False: "not closed by the aggregator",
            None: "no log of the aggregator says whether it closed it",
        }[later["closed_by_aggregator"]]
        figures = (
            f"; {later['clients_evaluated']} client(s) evaluated its result, accuracy "
            f"{_figure(later['accuracy'])}"
            if later["clients_evaluated"]
            else ""
        )
        lines.append(
            f"round {later['round'] + 1} did not complete ({what}; in {later['nodes_logged']} "
            f"node logs{figures}): not in the totals"
        )
    if summary["logs_missing"]:
        lines.append(f"no log of: {', '.join(summary['logs_missing'])}")
    return lines


def list_runs(log_dir: Path) -> list[str]:
    """`main.py runs`: every run under log_dir, oldest first: status, scheme, rounds, accuracy."""
    lines = [
        f"{'experiment':<44}{'status':<10}{'scheme':<11}{'switches':<12}{'rounds':>8}"
        f"{'accuracy':>10}  started"
    ]
    found = sorted(log_dir.glob("*/run.json"), key=lambda p: p.stat().st_mtime)
    for path in found:
        try:
            run = json.loads(path.read_text())
        except (OSError, ValueError):
            lines.append(f"{path.parent.name:<44}unreadable run.json")
            continue
        encryption = (run.get("config") or {}).get("encryption", {})
        scheme = scheme_label(
            str(encryption.get("scheme", "?")), str(encryption.get("backend") or "tenseal")
        )
        nodes = ((run.get("config") or {}).get("nodes") or {}).values()
        dumb = [n.get("dumb") for n in nodes if isinstance(n, dict) and n.get("type") == "switch"]
        switches = (
            "none"
            if not dumb
            else "forwarding"
            if all(dumb)
            else "adding"
            if not any(dumb)
            else "mixed"
        )
        planned = (run.get("config") or {}).get("aggregator", {}).get("iteration", "?")
        accuracy = None
        try:
            totals = json.loads((path.parent / "summary.json").read_text())["totals"]
            accuracy = totals.get("final_accuracy")
        except (OSError, ValueError, KeyError, TypeError):
            pass
        lines.append(
            f"{path.parent.name:<44}{run.get('status', '?'):<10}{scheme:<11}{switches:<12}"
            f"{str(run.get('rounds_completed', '?')) + '/' + str(planned):>8}"
            f"{_figure(accuracy):>10}  {run.get('started', '')}"
        )
    if not found:
        lines.append(f"(no runs under {log_dir})")
    return lines
