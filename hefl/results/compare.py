"""`main.py compare`: several runs side by side, as ratios to the first; repeats averaged."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from hefl.crypto.params import scheme_label
from hefl.errors import HeflError
from hefl.records import ROLES, LogFormatError, RoleBytes, RoundSummary, RunSummary
from hefl.results.options import FigureOptions
from hefl.results.report import human_bytes
from hefl.results.summary import summarize
from hefl.results.warmup import left_out, means, measured, skipped

SHOWN = "shown"  # the metadata key of a RunFigures field: where it shows


@dataclass(frozen=True)
class Shown:
    """Where a run's figure shows in the table: its column (`heading`, none when empty) and how a
    value prints there."""

    heading: str = ""
    fmt: Callable[[float], str] = str


def _figure(heading: str = "", fmt: Callable[[float], str] = str) -> Any:
    """A field of RunFigures, shown where it says (see Shown)."""
    return field(metadata={SHOWN: Shown(heading, fmt)})


@dataclass(frozen=True)
class RunFigures:
    """One run's figures for the comparison: compare.json holds, under each one's name, its mean
    and standard deviation over a group's repeats; the table's columns are those the fields show,
    in this order. Per round (`_per_round`, `s/rnd`): a mean over the rounds hefl.results.warmup
    counts (round 1 left out by default); the others count every round."""

    final_accuracy: float | None = _figure("accuracy", lambda v: f"{v:.4f}")
    rounds: int = _figure("rounds", lambda v: f"{v:g}")
    bytes_total: int = _figure("bytes", human_bytes)
    bytes_per_round: float = _figure()
    # what all nodes of a role sent per round, together (not per node)
    bytes_per_round_client: float = _figure("clients sent/rnd", human_bytes)
    bytes_per_round_switch: float = _figure("switches sent/rnd", human_bytes)
    bytes_per_round_aggregator: float = _figure("agg sent/rnd", human_bytes)
    aggregator_ingress_per_round: float = _figure("agg in/rnd", human_bytes)
    seconds_per_round: float | None = _figure("s/rnd", lambda v: f"{v:.3f}")
    crypto_s_per_round: float = _figure("crypto s/rnd", lambda v: f"{v:.3f}")
    he_error_max: float | None = _figure()  # the largest of any round (its own column, last)


def _shown() -> Iterator[tuple[Field[Any], Shown]]:
    """RunFigures' fields and where each shows."""
    for f in fields(RunFigures):
        yield f, f.metadata[SHOWN]


# (key, heading, how a value prints)
COLUMNS: tuple[tuple[str, str, Callable[[float], str]], ...] = tuple(
    (f.name, how.heading, how.fmt) for f, how in _shown() if how.heading
)


def load_summary(run: Path) -> RunSummary:
    """A run's summary.json, or, when it has none it can read, its summary made from its logs
    now."""
    if not (run / "config.json").is_file():
        raise HeflError(f"{run}: not a run folder (no config.json)")
    try:
        return RunSummary.from_json(json.loads((run / "summary.json").read_text()))
    except (OSError, ValueError, LogFormatError):
        return summarize(run)


def _sent(b: RoleBytes) -> int:
    """A role's bytes sent in a round, every direction."""
    return b.send_up + b.send_down + b.send_control


def _sent_per_round(rounds: Sequence[RoundSummary], role: str) -> float:
    """What all nodes of a role sent per round, together."""
    total = sum(_sent(b) for row in rounds if (b := row.bytes_by_role.get(role)) is not None)
    return total / (len(rounds) or 1)


def figures(summary: RunSummary, skip: int | None = None) -> RunFigures:
    """One run's figures for the table: per round over the rounds the means count (`skip`:
    leading rounds left out, hefl.results.warmup's default when None), totals over all."""
    t = summary.totals
    rounds = measured(summary.rounds, skip)
    mean = means(rounds)
    errors = [row.he_error.max_abs for row in summary.rounds if row.he_error]
    return RunFigures(
        final_accuracy=t.final_accuracy,
        rounds=len(summary.rounds),
        bytes_total=t.bytes_on_wire,
        bytes_per_round=mean.bytes_on_wire,
        **{f"bytes_per_round_{role}": _sent_per_round(rounds, role) for role in ROLES},
        aggregator_ingress_per_round=mean.aggregator_ingress,
        seconds_per_round=mean.seconds,
        crypto_s_per_round=mean.crypto_s,
        he_error_max=max(errors) if errors else None,
    )


def final_model(run: Path, summary: RunSummary) -> np.ndarray | None:
    """The global model one client decrypted in the last round, when the run saved models."""
    if not summary.rounds:
        return None
    last = summary.rounds[-1].round
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


def label_of(summary: RunSummary) -> str:
    """A run's label in the table: its scheme and the kind of its switches."""
    switches, dumb = summary.switches, summary.dumb_switches
    how = (
        "no switches"
        if not switches
        else "forwarding"
        if dumb == switches
        else "adding"
        if not dumb
        else "mixed"
    )
    full = " full" if summary.encryption.get("seeded") is False else ""  # encryption.seeded off
    return f"{scheme_label(summary.scheme, summary.backend or 'tenseal')}{full}, {how}"


def compare(
    groups: Sequence[tuple[str, Sequence[Path]]], skip: int | None = None
) -> tuple[list[dict[str, Any]], list[list[RunSummary]]]:
    """Rows of the comparison, one per group of repeated runs (label, run folders), and each
    group's summaries; per-round figures leave out `skip` leading rounds of each run (the
    default when None: see hefl.results.warmup)."""
    summaries = [[load_summary(run) for run in runs] for _, runs in groups]
    reference = None
    first_runs = groups[0][1] if groups else []
    if first_runs:
        reference = final_model(first_runs[0], summaries[0][0])
    rows = []
    for (label, runs), sums in zip(groups, summaries, strict=True):
        figs = [figures(s, skip) for s in sums]
        row: dict[str, Any] = {"label": label, "runs": [str(r) for r in runs]}
        for f in fields(RunFigures):
            row[f.name] = _stat([getattr(fig, f.name) for fig in figs])
        divergence = []
        for run, s in zip(runs, sums, strict=True):
            model = final_model(run, s)
            if model is not None and reference is not None and model.shape == reference.shape:
                divergence.append(float(np.max(np.abs(model - reference))))
        row["divergence_from_first"] = _stat(divergence)
        row["rounds_left_out"] = _stat([skipped(len(s.rounds), skip) for s in sums])
        row["link_rate"] = link_rate(runs[0]) if runs else None
        rows.append(row)
    return rows, summaries


def link_rate(run: Path) -> str | None:
    """The link rate a run had, as tc writes it (`100mbit`), where the virtual cluster recorded
    one (its vcluster/links.json); None for any other run."""
    try:
        rate = json.loads((run / "vcluster" / "links.json").read_text()).get("rate")
    except (OSError, ValueError, AttributeError):
        return None
    return rate if isinstance(rate, str) and rate else None


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
    """Runs of the same experiment (the same config, bar the key folder and name, on links of
    the same rate) are repeats of one another: one group each, in the order first given,
    labelled by scheme and switches, and by link rate where the runs' rates differ."""
    groups: dict[str, tuple[str, list[Path]]] = {}
    rates = {run: link_rate(run) for run in runs}
    varied = len(set(rates.values())) > 1
    for run in runs:
        s = load_summary(run)
        try:
            config = json.loads((run / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise HeflError(f"{run}: unreadable config.json: {exc}") from None
        config.pop("name", None)
        config.get("encryption", {}).pop("key_dir", None)
        key = json.dumps([config, rates[run]], sort_keys=True)
        if key not in groups:
            rate = f", {rates[run] or 'no rate'}" if varied else ""
            groups[key] = (label_of(s) + rate, [])
        groups[key][1].append(run)
    labels = [label for label, _ in groups.values()]
    out = []
    for label, members in groups.values():
        if labels.count(label) > 1:  # two configs that differ elsewhere: tell them apart
            label = f"{label} ({members[0].name})"
        out.append((label, members))
    return out


def relabel(
    groups: Sequence[tuple[str, list[Path]]], labels: Sequence[str]
) -> list[tuple[str, list[Path]]]:
    """The groups under the labels given, in order (none given: as they are)."""
    if not labels:
        return list(groups)
    if len(labels) != len(groups):
        raise HeflError(
            f"{len(labels)} --label given for {len(groups)} group(s) of runs "
            f"({'; '.join(label for label, _ in groups)}): give one per group, in order"
        )
    return [(new, runs) for new, (_, runs) in zip(labels, groups, strict=True)]


def means_note(skip: int | None) -> str:
    """What the table's per-round means count, in a line."""
    return (
        f"/rnd and s/rnd: means per round, {left_out(skip)}, --skip-rounds sets how many; "
        "accuracy, rounds and bytes: every round"
    )


def write_comparison(
    groups: Sequence[tuple[str, Sequence[Path]]], out: Path, options: FigureOptions | None = None
) -> tuple[list[str], list[dict[str, Any]], list[Path]]:
    """compare.json, compare.txt and the comparison's figures in `out`; returns the table's
    lines, its rows and the figures' paths."""
    options = options or FigureOptions()
    rows, summaries = compare(groups, options.skip_rounds)
    lines = [*table(rows), means_note(options.skip_rounds)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "compare.txt").write_text("\n".join(lines) + "\n")
    from hefl.results.claims import plot_compare

    paths = plot_compare([r["label"] for r in rows], rows, summaries, out, options)
    return lines, rows, paths
