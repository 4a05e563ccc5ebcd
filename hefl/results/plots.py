"""PNG plots of a run's summary (and of a comparison): headless matplotlib, the same bytes for the
same summary."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: clusters and CI have none

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from hefl.files import write_bytes_atomic  # noqa: E402
from hefl.records import (  # noqa: E402
    ROLES,
    SPLIT,
    UNATTRIBUTED,
    NodeBytes,
    RoundSummary,
    RunSummary,
)
from hefl.results.compare import BARS  # noqa: E402
from hefl.results.timeline import PHASES  # noqa: E402

ROLE_COLOR = dict(zip(ROLES, ("tab:blue", "tab:orange", "tab:red"), strict=True))
PARTS = (*SPLIT, UNATTRIBUTED)  # a critical path's split, as stacked
SPLIT_COLOR = dict(
    zip(PARTS, ("tab:green", "tab:purple", "tab:blue", "tab:gray", "white"), strict=True)
)
PLOTS = ("accuracy.png", "bytes.png", "phases.png", "critical_path.png")


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    buf = io.BytesIO()
    # no version or date in the file: the same figures give the same bytes
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def _title(summary: RunSummary) -> str:
    """The run in a line: experiment, scheme, clients and the kind of its switches."""
    switches, dumb = summary.switches, summary.dumb_switches
    how = (
        "" if not switches else " forwarding" if dumb == switches else " adding" if not dumb else ""
    )
    mixed = f" ({dumb} forwarding)" if 0 < dumb < switches else ""
    return (
        f"{summary.experiment}: {summary.scheme}, {summary.clients} clients, "
        f"{switches}{how} switches{mixed}"
    )


def plot_run(summary: RunSummary, out: Path) -> list[Path]:
    """The four plots of one run, beside its summary; returns their paths."""
    paths = [out / name for name in PLOTS]
    _accuracy(summary, paths[0])
    _bytes(summary, paths[1])
    _phases(summary, paths[2])
    _critical_path(summary, paths[3])
    return paths


def _rounds_axis(rounds: Sequence[RoundSummary]) -> list[int]:
    """The x of each round: its number from 1."""
    return [row.round + 1 for row in rounds]


def _known(values: Iterable[float | None]) -> list[float]:
    """Figures to plot, nan (no point) where one is unknown."""
    return [math.nan if v is None else v for v in values]


def _accuracy(summary: RunSummary, path: Path) -> None:
    """Accuracy and loss of the global model per round, on two axes."""
    rounds = summary.rounds
    x = _rounds_axis(rounds)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, _known(row.accuracy for row in rounds), "o-", color="tab:blue", label="accuracy")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy (test-sample weighted)")
    ax.set_ylim(0, 1)
    ax2 = ax.twinx()
    ax2.plot(x, _known(row.loss for row in rounds), "s--", color="tab:red", label="loss")
    ax2.set_ylabel("loss")
    ax.set_title(_title(summary), fontsize=9)
    ax.legend([ax.lines[0], ax2.lines[0]], ["accuracy", "loss"], loc="center right", fontsize=8)
    _save(fig, path)


def _mean_kib(rounds: Sequence[RoundSummary], node: str, get: Callable[[NodeBytes], int]) -> float:
    """A node's bytes (sent or received: `get`) per round in KiB, over the rounds (0 where a round
    has none of it)."""
    total = sum(get(b) for row in rounds if (b := row.bytes_by_node.get(node)) is not None)
    return total / len(rounds) / 1024


def _bytes(summary: RunSummary, path: Path) -> None:
    """Each node's bytes sent (solid) and received (pale) per round, coloured by role."""
    rounds = summary.rounds
    nodes = list(rounds[0].bytes_by_node) if rounds else []
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.3 * len(nodes) + 1.5)))
    ways: tuple[tuple[str, Callable[[NodeBytes], int]], ...] = (
        ("sent", lambda b: b.sent),
        ("received", lambda b: b.received),
    )
    roles = [rounds[0].bytes_by_node[n].role for n in nodes]
    for i, (label, get) in enumerate(ways):
        ax.barh(
            [j + 0.4 * i for j in range(len(nodes))],
            [_mean_kib(rounds, n, get) for n in nodes],
            height=0.4,
            color=[ROLE_COLOR[r] for r in roles],
            alpha=1.0 if i == 0 else 0.5,
            label=label,
        )
    ax.set_yticks([j + 0.2 for j in range(len(nodes))], nodes, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("KiB per round (mean over rounds; solid: sent, pale: received)")
    ax.set_title(_title(summary) + "\nbytes per node per round", fontsize=9)
    _save(fig, path)


def _phases(summary: RunSummary, path: Path) -> None:
    """Each role's seconds per round, stacked by phase."""
    rounds = summary.rounds
    fig, ax = plt.subplots(figsize=(7, 4))
    roles = [r for r in ROLES if any(r in row.phases_by_role for row in rounds)]
    bottoms = [0.0] * len(roles)
    cmap = plt.get_cmap("tab20")
    for k, phase in enumerate(PHASES):
        values = [
            sum(row.phases_by_role.get(r, {}).get(phase, 0.0) for row in rounds)
            / max(1, len(rounds))
            for r in roles
        ]
        if any(values):
            ax.bar(roles, values, bottom=bottoms, color=cmap(k), label=phase)
            bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    ax.set_ylabel("seconds per round (mean over nodes of the role)")
    ax.set_title(_title(summary) + "\nper-phase time per role", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, path)


def _split_part(row: RoundSummary, part: str) -> float:
    """Seconds of the round's critical path in one part of its split (0: none known)."""
    path = row.critical_path
    return (path.split.get(part) if path is not None else None) or 0.0


def _critical_path(summary: RunSummary, path: Path) -> None:
    """Each round's critical path, stacked by what its time was spent on."""
    rounds = summary.rounds
    x = _rounds_axis(rounds)
    fig, ax = plt.subplots(figsize=(8, 4))
    bottoms = [0.0] * len(rounds)
    for part in PARTS:
        values = [_split_part(row, part) for row in rounds]
        if any(values):
            ax.bar(x, values, bottom=bottoms, color=SPLIT_COLOR[part], label=part, edgecolor="k")
            bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    ax.set_xlabel("round")
    ax.set_xticks(x if len(x) <= 20 else x[:: max(1, len(x) // 10)])
    ax.set_ylabel("seconds (the round's critical path)")
    ax.set_title(_title(summary) + "\nwhat the round time was spent on", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)


def plot_compare(
    names: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    summaries: Sequence[Sequence[RunSummary]],
    out: Path,
) -> Path:
    """One figure over several runs: accuracy per round (each group's first run), and compare's
    rows (`hefl.results.compare.compare`) as bars: bytes, seconds and crypto seconds per round."""
    fig, axes = plt.subplots(1, 5, figsize=(18, 4))
    styles = ["o-", "s--", "^-.", "x:", "d-", "v--"]
    for i, (name, runs) in enumerate(zip(names, summaries, strict=True)):
        first = runs[0].rounds
        axes[0].plot(  # markers and dashes differ: curves that coincide stay visible
            _rounds_axis(first),
            _known(row.accuracy for row in first),
            styles[i % len(styles)],
            label=name,
            markersize=7 - i % 4,
            alpha=0.8,
        )
    axes[0].set_xlabel("round")
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=7)
    for ax, (key, label, scale) in zip(axes[1:], BARS, strict=True):
        means = [(row[key]["mean"] or 0.0) * scale for row in rows]
        spreads = [(row[key]["sd"] or 0.0) * scale for row in rows]
        ax.bar(range(len(names)), means, yerr=spreads, color="tab:blue")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(label)
    path = out
    _save(fig, path)
    return path
