"""PNG plots of a run's summary (and of a comparison): headless matplotlib, the same bytes for the
same summary."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: clusters and CI have none

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from hefl.runlog import write_bytes_atomic  # noqa: E402
from hefl.summary import PHASES, ROLES, SPLIT  # noqa: E402

ROLE_COLOR = {"client": "tab:blue", "switch": "tab:orange", "aggregator": "tab:red"}
SPLIT_COLOR = {
    "training": "tab:green",
    "crypto": "tab:purple",
    "transfer": "tab:blue",
    "waiting": "tab:gray",
    "unattributed": "white",
}
PLOTS = ("accuracy.png", "bytes.png", "phases.png", "critical_path.png")


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    buf = io.BytesIO()
    # no version or date in the file: the same figures give the same bytes
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def _title(summary: Mapping[str, Any]) -> str:
    switches, dumb = summary["switches"], summary["dumb_switches"]
    how = (
        "" if not switches else " forwarding" if dumb == switches else " adding" if not dumb else ""
    )
    mixed = f" ({dumb} forwarding)" if 0 < dumb < switches else ""
    return (
        f"{summary['experiment']}: {summary['scheme']}, {summary['clients']} clients, "
        f"{switches}{how} switches{mixed}"
    )


def plot_run(summary: Mapping[str, Any], out: Path) -> list[Path]:
    """The four plots of one run, beside its summary; returns their paths."""
    rounds = summary["rounds"]
    x = [row["round"] + 1 for row in rounds]
    paths = [out / name for name in PLOTS]

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, [row["accuracy"] for row in rounds], "o-", color="tab:blue", label="accuracy")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy (test-sample weighted)")
    ax.set_ylim(0, 1)
    ax2 = ax.twinx()
    ax2.plot(x, [row["loss"] for row in rounds], "s--", color="tab:red", label="loss")
    ax2.set_ylabel("loss")
    ax.set_title(_title(summary), fontsize=9)
    ax.legend([ax.lines[0], ax2.lines[0]], ["accuracy", "loss"], loc="center right", fontsize=8)
    _save(fig, paths[0])

    nodes = list(rounds[0]["bytes_by_node"]) if rounds else []
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.3 * len(nodes) + 1.5)))
    for i, (key, label) in enumerate((("sent", "sent"), ("received", "received"))):
        means = [
            sum(row["bytes_by_node"].get(n, {}).get(key, 0) for row in rounds) / len(rounds) / 1024
            for n in nodes
        ]
        roles = [rounds[0]["bytes_by_node"][n]["role"] for n in nodes]
        ax.barh(
            [j + 0.4 * i for j in range(len(nodes))],
            means,
            height=0.4,
            color=[ROLE_COLOR[r] for r in roles],
            alpha=1.0 if i == 0 else 0.5,
            label=label,
        )
    ax.set_yticks([j + 0.2 for j in range(len(nodes))], nodes, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("KiB per round (mean over rounds; solid: sent, pale: received)")
    ax.set_title(_title(summary) + "\nbytes per node per round", fontsize=9)
    _save(fig, paths[1])

    fig, ax = plt.subplots(figsize=(7, 4))
    roles = [r for r in ROLES if any(r in row["phases_by_role"] for row in rounds)]
    bottoms = [0.0] * len(roles)
    cmap = plt.get_cmap("tab20")
    for k, phase in enumerate(PHASES):
        values = [
            sum(row["phases_by_role"].get(r, {}).get(phase, 0.0) for row in rounds)
            / max(1, len(rounds))
            for r in roles
        ]
        if any(values):
            ax.bar(roles, values, bottom=bottoms, color=cmap(k), label=phase)
            bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    ax.set_ylabel("seconds per round (mean over nodes of the role)")
    ax.set_title(_title(summary) + "\nper-phase time per role", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, paths[2])

    fig, ax = plt.subplots(figsize=(8, 4))
    bottoms = [0.0] * len(rounds)
    for part in (*SPLIT, "unattributed"):
        values = [
            ((row["critical_path"] or {}).get("split", {}).get(part) or 0.0) for row in rounds
        ]
        if any(values):
            ax.bar(x, values, bottom=bottoms, color=SPLIT_COLOR[part], label=part, edgecolor="k")
            bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    ax.set_xlabel("round")
    ax.set_xticks(x if len(x) <= 20 else x[:: max(1, len(x) // 10)])
    ax.set_ylabel("seconds (the round's critical path)")
    ax.set_title(_title(summary) + "\nwhat the round time was spent on", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, paths[3])
    return paths


def plot_compare(
    names: Sequence[str], rows: Sequence[Mapping[str, Any]], summaries: Sequence[Any], out: Path
) -> Path:
    """One figure over several runs: accuracy per round, and bytes, seconds and crypto seconds
    per round as bars."""
    fig, axes = plt.subplots(1, 5, figsize=(18, 4))
    styles = ["o-", "s--", "^-.", "x:", "d-", "v--"]
    for i, (name, runs) in enumerate(zip(names, summaries, strict=True)):
        first = runs[0]
        axes[0].plot(  # markers and dashes differ: curves that coincide stay visible
            [row["round"] + 1 for row in first["rounds"]],
            [row["accuracy"] for row in first["rounds"]],
            styles[i % len(styles)],
            label=name,
            markersize=7 - i % 4,
            alpha=0.8,
        )
    axes[0].set_xlabel("round")
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=7)
    for ax, key, label in (
        (axes[1], "bytes_per_round", "MiB on the wire per round"),
        (axes[2], "aggregator_ingress_per_round", "MiB reaching the aggregator per round"),
        (axes[3], "seconds_per_round", "seconds per round"),
        (axes[4], "crypto_s_per_round", "crypto seconds per round (all nodes)"),
    ):
        scale = 1 / 2**20 if "bytes" in key or "ingress" in key else 1.0
        means = [(row[key]["mean"] or 0.0) * scale for row in rows]
        spreads = [(row[key]["sd"] or 0.0) * scale for row in rows]
        ax.bar(range(len(names)), means, yerr=spreads, color="tab:blue")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(label)
    path = out
    _save(fig, path)
    return path
