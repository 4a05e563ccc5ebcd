"""Human-readable lines from the aggregator's round rows and the nodes' logs."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from hefl.address import log_name
from hefl.config import ExperimentConfig
from hefl.crypto.params import describe, scheme_label
from hefl.records import (
    MISSING_SHOWN,
    SPLIT,
    LogFormatError,
    NewerFormat,
    NodeLog,
    NotCompleted,
    RoundRecord,
    RoundRow,
    RoundSummary,
    RunRecord,
    RunSummary,
)
from hefl.results.warmup import means, measured, skipped, which


def human_bytes(n: float) -> str:
    unit = "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            break
        n, unit = n / 1024, bigger
    return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"


def format_round(row: RoundRow, rounds: int) -> str:
    """One line per round: accuracy, loss, bytes the clients sent and received, seconds; and,
    when some client was missing (a round deadline), how many contributed and who was not."""
    got = row.aggregator_received
    line = (
        f"round {row.round + 1:>3}/{rounds}  accuracy {_figure(row.accuracy)}  "
        f"loss {_figure(row.loss)}  "
        f"clients sent {human_bytes(row.client_byte_send)}  "
        f"received {human_bytes(row.client_byte_received)}  "
        + (f"aggregator got {human_bytes(got)}  " if got is not None else "")
        + f"{row.duration_s or 0:.2f} s"
    )
    notes = _round_notes(row)
    if notes:
        line += f"  ({'; '.join(notes)})"
    return line


def _round_notes(row: RoundRow) -> list[str]:
    """What a round line adds when some client was missing, or reported no metrics."""
    missing, contributors = row.missing, row.contributors or 0
    notes = []
    if missing:
        named = ", ".join(missing[:MISSING_SHOWN])
        if len(missing) > MISSING_SHOWN:  # logical clients can be hundreds: rounds.json has all
            named += f", ... ({len(missing)} in all)"
        notes.append(f"{row.contributors} clients; missing {named}")
    if (contributors if row.reports is None else row.reports) < contributors:
        notes.append(f"metrics from {row.reports} of them")
    return notes


def _figure(value: float | None) -> str:
    return "n/a   " if value is None else f"{value:.4f}"


def read_logs(exp_dir: Path) -> dict[str, NodeLog]:
    """Every node log in an experiment folder, by node id (its other JSON files skipped)."""
    logs = {}
    for path in sorted(exp_dir.glob("*.json")):
        try:
            log = NodeLog.from_json(json.loads(path.read_text()))
        except NewerFormat as exc:
            raise NewerFormat(f"{path}: {exc}") from None
        except (OSError, ValueError, RecursionError, LogFormatError):
            continue  # config.json, run.json, rounds.json, summary.json, a log cut short
        logs[log.node] = log
    return logs


def node_table(
    logs: Mapping[str, NodeLog], cfg: ExperimentConfig, skip: int | None = None
) -> list[str]:
    """Per node: mean body bytes sent and received per round, mean seconds per round, over its
    rounds but the warm-up ones (`skip` leading rounds; the default when None), which a last line
    names."""
    lines = [f"{'node':<22}{'role':<11}{'sent/round':>13}{'recv/round':>13}{'s/round':>9}"]
    numbers: list[int] = []
    for node in cfg.nodes:
        log = logs.get(node)
        if log is None:
            lines.append(f"{node:<22}{cfg.nodes[node].type:<11}  (no log: see {log_name(node)})")
            continue
        records = log.iteration[skipped(len(log.iteration), skip) :]
        numbers = max(numbers, [r.round for r in log.iteration], key=len)
        sent = _mean(records, lambda r: r.byte_send)
        received = _mean(records, lambda r: r.byte_received)
        seconds = _mean(records, lambda r: r.duration_s)
        lines.append(
            f"{node:<22}{log.role:<11}{human_bytes(sent):>13}"
            f"{human_bytes(received):>13}{seconds:>9.2f}"
        )
    return [*lines, f"per round: means over {which(numbers, skip)}"]


def _mean(records: Sequence[RoundRecord], get: Callable[[RoundRecord], float | None]) -> float:
    """The mean of a figure over a node's rounds (unknown: 0; no round: 0)."""
    return sum(get(r) or 0 for r in records) / (len(records) or 1)


def _label(summary: RunSummary) -> str:
    return scheme_label(summary.scheme, summary.backend or "tenseal")


def summary_lines(summary: RunSummary, skip: int | None = None) -> list[str]:
    """What `main.py report` prints: one line per round of summary.json, its totals (every
    round), then the means per round over the rounds but the warm-up ones (`skip` leading
    rounds; the default when None)."""
    described = describe(dict(summary.encryption))
    warm = skipped(len(summary.rounds), skip)
    return [
        f"{summary.experiment}: scheme {_label(summary)}, {summary.clients} clients, "
        f"{summary.switches} switches ({summary.dumb_switches} forwarding)"
        + (f"; {described}" if described else ""),
        f"{'round':>5} {'accuracy':>9} {'loss':>8} {'s':>7} {'on wire':>10} {'agg in':>10}  "
        f"critical path: train / crypto / transfer / wait (s)  HE error max",
        *(_round_line(row, i < warm) for i, row in enumerate(summary.rounds)),
        _totals_line(summary),
        *means_lines(summary, skip),
        *(_not_completed_line(later) for later in summary.rounds_not_completed),
        *([f"no log of: {', '.join(summary.logs_missing)}"] if summary.logs_missing else []),
    ]


def _round_line(row: RoundSummary, warm_up: bool = False) -> str:
    """A completed round: its figures, its critical path's split, its HE error; a warm-up round
    says it is not in the means."""
    split = row.critical_path.split if row.critical_path is not None else {}
    parts = " / ".join(f"{split.get(k) or 0:.3f}" for k in SPLIT)
    he = row.he_error
    return (
        f"{row.round + 1:>5} {_figure(row.accuracy):>9} {_figure(row.loss):>8} "
        f"{row.round_s or 0:>7.3f} {human_bytes(row.bytes_on_wire):>10} "
        f"{human_bytes(row.aggregator_ingress):>10}  {parts:<45}"
        f"{'' if he is None else format(he.max_abs, '.3g')}"
        + ("  (warm-up: not in the means)" if warm_up else "")
    ).rstrip()


def means_lines(summary: RunSummary, skip: int | None = None) -> list[str]:
    """The means per round over the rounds they count (none when no round completed)."""
    if not summary.rounds:
        return []
    m = means(measured(summary.rounds, skip))
    seconds = "n/a" if m.seconds is None else f"{m.seconds:.3f}"
    split = " / ".join(f"{m.split.get(k, 0.0):.3f}" for k in SPLIT) if m.split else "n/a"
    return [
        f"mean per round over {which([row.round for row in summary.rounds], skip)}: "
        f"{seconds} s, {human_bytes(m.bytes_on_wire)} on the wire, "
        f"{human_bytes(m.aggregator_ingress)} into the aggregator, {m.crypto_s:.3f} s in crypto "
        f"phases (all nodes); critical path train / crypto / transfer / wait {split} s"
    ]


def _totals_line(summary: RunSummary) -> str:
    """The completed rounds together."""
    t = summary.totals
    if not t.rounds:
        return "total: no round completed"
    return (
        f"total: {t.rounds} of {summary.rounds_planned} rounds, final accuracy "
        f"{_figure(t.final_accuracy)}, {t.seconds or 0:.2f} s, "
        f"{human_bytes(t.bytes_on_wire)} on the wire, "
        f"{human_bytes(t.aggregator_ingress)} into the aggregator, "
        f"{t.crypto_s:.2f} s in crypto phases (all nodes, all rounds)"
    )


CLOSED = {  # a round that did not complete, by whether the aggregator's log says it closed it
    True: "closed by the aggregator, not in rounds.json",
    False: "not closed by the aggregator",
    None: "no log of the aggregator says whether it closed it",
}


def _not_completed_line(later: NotCompleted) -> str:
    """A round after the last completed one: what the logs hold of it."""
    figures = (
        f"; {later.clients_evaluated} client(s) evaluated its result, accuracy "
        f"{_figure(later.accuracy)}"
        if later.clients_evaluated
        else ""
    )
    return (
        f"round {later.round + 1} did not complete ({CLOSED[later.closed_by_aggregator]}; in "
        f"{later.nodes_logged} node logs{figures}): not in the totals"
    )


def list_runs(log_dir: Path) -> list[str]:
    """`main.py runs`: every run under log_dir, oldest first: status, scheme, rounds, accuracy."""
    lines = [
        f"{'experiment':<44}{'status':<10}{'scheme':<11}{'switches':<12}{'rounds':>8}"
        f"{'accuracy':>10}  started"
    ]
    found = sorted(log_dir.glob("*/run.json"), key=lambda p: p.stat().st_mtime)
    lines += [_run_line(path) for path in found]
    if not found:
        lines.append(f"(no runs under {log_dir})")
    return lines


def _run_line(path: Path) -> str:
    """One run of `main.py runs`, from its run.json (`path`) and its summary.json."""
    try:
        run = RunRecord.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, LogFormatError):
        return f"{path.parent.name:<44}unreadable run.json"
    encryption = run.config.get("encryption", {})
    scheme = scheme_label(
        str(encryption.get("scheme", "?")), str(encryption.get("backend") or "tenseal")
    )
    planned = run.config.get("aggregator", {}).get("iteration", "?")
    gone = controller_gone(run)
    status = "gone" if gone else run.status
    return (
        f"{path.parent.name:<44}{status:<10}{scheme:<11}{_switches(run.config):<12}"
        f"{str(run.rounds_completed) + '/' + str(planned):>8}"
        f"{_figure(_final_accuracy(path.parent)):>10}  {run.started or ''}"
        + (f"  ({gone})" if gone else "")
    )


def controller_gone(run: RunRecord) -> str:
    """Why a run that says `running` has no controller any more ('' when it may have one): run on
    this machine, its controller's pid runs no process, or one started after the run did (the
    pid taken again). A run of another machine cannot be told from here."""
    if run.status != "running" or run.controller_pid is None or not run.started:
        return ""
    if run.controller.get("hostname") != socket.gethostname():
        return ""
    began = process_start(run.controller_pid)
    try:
        started = datetime.fromisoformat(run.controller_since or run.started).timestamp()
    except ValueError:
        return ""
    if began is None or began > started + 5:  # the controller starts before its run does
        return f"its controller, pid {run.controller_pid}, is gone: killed before it could say"
    return ""


def process_start(pid: int) -> float | None:
    """When process `pid` started (Unix seconds, from /proc), or None: no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie: it ran, and is gone (its parent has not reaped it)
        return None
    ticks = float(fields[19])  # field 22, starttime
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _switches(config: Mapping[str, Any]) -> str:
    """The kind of a run's switches (its effective config's): none, forwarding, adding, mixed."""
    nodes = (config.get("nodes") or {}).values()
    dumb = [n.get("dumb") for n in nodes if isinstance(n, dict) and n.get("type") == "switch"]
    return (
        "none"
        if not dumb
        else "forwarding"
        if all(dumb)
        else "adding"
        if not any(dumb)
        else "mixed"
    )


def _final_accuracy(run: Path) -> float | None:
    """The run's final accuracy, from its summary.json (None: none, or none it can read)."""
    try:
        summary = RunSummary.from_json(json.loads((run / "summary.json").read_text()))
    except (OSError, ValueError, LogFormatError):
        return None
    return summary.totals.final_accuracy
