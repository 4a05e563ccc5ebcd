"""`main.py compare`: several runs side by side, as ratios to the first; repeats averaged."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hefl.crypto.params import scheme_label
from hefl.errors import HeflError
from hefl.report import human_bytes
from hefl.summary import ROLES, summarize

# (key, heading, how a value prints)
COLUMNS: tuple[tuple[str, str, Callable[[float], str]], ...] = (
    ("final_accuracy", "accuracy", lambda v: f"{v:.4f}"),
    ("rounds", "rounds", lambda v: f"{v:g}"),
    ("bytes_total", "bytes", human_bytes),
    # what all nodes of a role sent per round, together (not per node)
    ("bytes_per_round_client", "clients sent/rnd", human_bytes),
    ("bytes_per_round_switch", "switches sent/rnd", human_bytes),
    ("bytes_per_round_aggregator", "agg sent/rnd", human_bytes),
    ("aggregator_ingress_per_round", "agg in/rnd", human_bytes),
    ("seconds_per_round", "s/rnd", lambda v: f"{v:.3f}"),
    ("crypto_s_per_round", "crypto s/rnd", lambda v: f"{v:.3f}"),
)


def load_summary(run: Path) -> dict[str, Any]:
    """A run's summary.json, or, when it has none, its summary made from its logs now."""
    if not (run / "config.json").is_file():
        raise HeflError(f"{run}: not a run folder (no config.json)")
    try:
        return json.loads((run / "summary.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return summarize(run)


def figures(summary: Mapping[str, Any]) -> dict[str, float | None]:
    """One run's figures for the table."""
    rounds = summary["rounds"]
    t = summary["totals"]
    n = len(rounds) or 1
    out: dict[str, float | None] = {
        "final_accuracy": t.get("final_accuracy"),
        "rounds": len(rounds),
        "bytes_total": t.get("bytes_on_wire", 0),
        "aggregator_ingress_per_round": t.get("aggregator_ingress", 0) / n,
        "seconds_per_round": t.get("seconds_per_round"),
        "crypto_s_per_round": (t.get("crypto_s") or 0.0) / n,
        "bytes_per_round": t.get("bytes_on_wire", 0) / n,
    }
    for role in ROLES:
        out[f"bytes_per_round_{role}"] = (
            sum(
                v
                for row in rounds
                for k, v in row["bytes_by_role"].get(role, {}).items()
                if k.startswith("send")
            )
            / n
        )
    errors = [row["he_error"]["max_abs"] for row in rounds if row.get("he_error")]
    out["he_error_max"] = max(errors) if errors else None
    return out


def final_model(run: Path, summary: Mapping[str, Any]) -> np.ndarray | None:
    """The global model one client decrypted in the last round, when the run saved models."""
    if not summary["rounds"]:
        return None
    last = summary["rounds"][-1]["round"]
    for path in sorted(run.glob(f"*.r{last}.global.npy")):
        model: np.ndarray = np.load(path)
        return model.astype(np.float64)
    return None


def _stat(values: Sequence[float | None]) -> dict[str, float | None]:
    got = [v for v in values if v is not None]
    if not got:
        return {"mean": None, "sd": None}
    return {
        "mean": statistics.fmean(got),
        "sd": statistics.stdev(got) if len(got) > 1 else None,
    }


def label_of(summary: Mapping[str, Any]) -> str:
    switches = summary["switches"]
    how = (
        "no switches"
        if not switches
        else "forwarding"
        if summary["dumb_switches"] == switches
        else "adding"
        if not summary["dumb_switches"]
        else "mixed"
    )
    scheme = scheme_label(str(summary["scheme"]), str(summary.get("backend") or "tenseal"))
    return f"{scheme}, {how}"


def compare(
    groups: Sequence[tuple[str, Sequence[Path]]],
) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """Rows of the comparison, one per group of repeated runs (label, run folders), and each
    group's summaries."""
    summaries = [[load_summary(run) for run in runs] for _, runs in groups]
    reference = None
    first_runs = groups[0][1] if groups else []
    if first_runs:
        reference = final_model(first_runs[0], summaries[0][0])
    rows = []
    for (label, runs), sums in zip(groups, summaries, strict=True):
        figs = [figures(s) for s in sums]
        row: dict[str, Any] = {"label": label, "runs": [str(r) for r in runs]}
        for key in {k for f in figs for k in f}:
            row[key] = _stat([f[key] for f in figs])
        divergence = []
        for run, s in zip(runs, sums, strict=True):
            model = final_model(run, s)
            if model is not None and reference is not None and model.shape == reference.shape:
                divergence.append(float(np.max(np.abs(model - reference))))
        row["divergence_from_first"] = _stat(divergence)
        rows.append(row)
    return rows, summaries


def table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The comparison as text: each figure, its spread over repeats (±), its ratio to the first."""
    first = rows[0] if rows else {}
    heads = ["run", "n", *(h for _, h, _ in COLUMNS), "HE err max", "vs first"]
    body = []
    for row in rows:
        cells = [row["label"], str(len(row["runs"]))]
        for key, _, fmt in COLUMNS:
            mean, sd = row[key]["mean"], row[key]["sd"]
            if mean is None:
                cells.append("n/a")
                continue
            base = first[key]["mean"]
            cells.append(
                fmt(mean) + (f"±{fmt(sd)}" if sd else "") + (f" x{mean / base:.2f}" if base else "")
            )
        for key in ("he_error_max", "divergence_from_first"):
            value = row[key]["mean"]
            cells.append("n/a" if value is None else f"{value:.2g}")
        body.append(cells)
    widths = [max(len(r[i]) for r in [heads, *body]) for i in range(len(heads))]
    return [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [heads, *body]
    ]


def group_runs(runs: Sequence[Path]) -> list[tuple[str, list[Path]]]:
    """Runs of the same experiment (the same config, bar the key folder and name) are repeats of
    one another: one group each, in the order first given, labelled by scheme and switches."""
    groups: dict[str, tuple[str, list[Path]]] = {}
    for run in runs:
        s = load_summary(run)
        try:
            config = json.loads((run / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise HeflError(f"{run}: unreadable config.json: {exc}") from None
        config.pop("name", None)
        config.get("encryption", {}).pop("key_dir", None)
        key = json.dumps(config, sort_keys=True)
        if key not in groups:
            groups[key] = (label_of(s), [])
        groups[key][1].append(run)
    labels = [label for label, _ in groups.values()]
    out = []
    for label, members in groups.values():
        if labels.count(label) > 1:  # two configs that differ elsewhere: tell them apart
            label = f"{label} ({members[0].name})"
        out.append((label, members))
    return out


def write_comparison(
    groups: Sequence[tuple[str, Sequence[Path]]], out: Path
) -> tuple[list[str], list[dict[str, Any]]]:
    """compare.json, compare.txt and compare.png in `out`; returns the table's lines and rows."""
    rows, summaries = compare(groups)
    lines = table(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "compare.txt").write_text("\n".join(lines) + "\n")
    from hefl.plots import plot_compare

    plot_compare([r["label"] for r in rows], rows, summaries, out / "compare.png")
    return lines, rows
