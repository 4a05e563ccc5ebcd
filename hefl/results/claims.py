"""The comparison's figures, one per claim a paper makes: the HE overhead by scheme (round time,
split by what it was spent on), the bytes on each hop, the round time against the link rate (runs
of the virtual cluster at several rates), the accuracy per round with the HE error."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.ticker import NullLocator

from hefl.records import ROLES, RunSummary
from hefl.results.compare import label_of
from hefl.results.options import FigureOptions
from hefl.results.plots import (
    OUTSIDE,
    PARTS,
    colors,
    figure,
    known,
    legend,
    rounds_axis,
    save,
    styled,
)
from hefl.results.warmup import Means, left_out, means, measured

UNITS = {"": 1e-6, "k": 1e-3, "m": 1.0, "g": 1e3}  # a tc rate's prefix, in Mbit/s


def plot_compare(
    names: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    summaries: Sequence[Sequence[RunSummary]],
    out: Path,
    options: FigureOptions | None = None,
) -> list[Path]:
    """compare-accuracy, compare-overhead, compare-hops and, where the groups ran at two link
    rates or more, compare-links: in `out`, in each format asked for; returns their paths."""
    options = options or FigureOptions()
    skip, formats = options.skip_rounds, options.formats
    groups = [[means(measured(s.rounds, skip)) for s in runs] for runs in summaries]
    rates = [row.get("link_rate") for row in rows]
    paths = []
    with styled(options):
        paths += save(_accuracy(names, summaries, options), out / "compare-accuracy", formats)
        paths += save(_overhead(names, groups, options), out / "compare-overhead", formats)
        paths += save(_hops(names, groups, options), out / "compare-hops", formats)
        if len({r for r in rates if r}) > 1:
            paths += save(_links(summaries, groups, rates, options), out / "compare-links", formats)
    return paths


def _over_repeats(values: Sequence[float | None]) -> float:
    """The mean of the repeats' figures that are known (nan: none is)."""
    got = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(got) if got else math.nan


def _per_round(runs: Sequence[RunSummary], get: Any) -> tuple[list[int], list[float]]:
    """A figure per round (`get(row)`), the mean over a group's repeats: the rounds of its
    longest run."""
    longest = max((s.rounds for s in runs), key=len, default=())
    series = [
        _over_repeats([get(s.rounds[i]) if i < len(s.rounds) else None for s in runs])
        for i in range(len(longest))
    ]
    return rounds_axis(longest), series


def _accuracy(
    names: Sequence[str], summaries: Sequence[Sequence[RunSummary]], options: FigureOptions
) -> Any:
    """Accuracy per round, one line per group; below it, where some run saved its models, the
    largest HE error per round (log scale)."""
    with_error = any(  # a log axis needs a value above 0
        row.he_error and row.he_error.max_abs > 0
        for runs in summaries
        for s in runs
        for row in s.rounds
    )
    panels = 2 if with_error else 1
    fig, axes = figure(options, 6.4, 2.4 + 1.6 * panels, nrows=panels, sharex=True, squeeze=False)
    for name, runs in zip(names, summaries, strict=True):
        x, accuracy = _per_round(runs, lambda row: row.accuracy)
        axes[0][0].plot(x, accuracy, label=name)
        if with_error:  # every group, so that each keeps its colour and marker in both panels
            x, error = _per_round(runs, lambda row: row.he_error and row.he_error.max_abs)
            axes[1][0].plot(x, known(error))
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].set_ylim(0, 1)
    legend(axes[0][0], loc="lower right")
    if with_error:
        axes[1][0].set_yscale("log")
        axes[1][0].set_ylabel("HE error (max)")
    axes[-1][0].set_xlabel("round")
    axes[-1][0].xaxis.get_major_locator().set_params(integer=True)
    return fig


def _mean_of(group: Sequence[Means], get: Any) -> float:
    return _over_repeats([get(m) for m in group])


def _ticks(ax: Any, names: Sequence[str]) -> None:
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", rotation_mode="anchor")


def _overhead(
    names: Sequence[str], groups: Sequence[Sequence[Means]], options: FigureOptions
) -> Any:
    """Seconds per round of each group, stacked by what the critical path spent them on (a part
    no group has is left out), with its ratio to the first group on top."""
    fig, ax = figure(options, 6.4, 3.4)
    part_color = dict(zip(PARTS, [*colors()[:4], "0.75"], strict=True))
    tops = [0.0] * len(groups)
    for part in PARTS:
        values = [_mean_of(g, lambda m, p=part: m.split.get(p, 0.0)) for g in groups]
        values = [0.0 if math.isnan(v) else v for v in values]
        if any(values):
            ax.bar(range(len(groups)), values, bottom=tops, color=part_color[part], label=part)
            tops = [b + v for b, v in zip(tops, values, strict=True)]
    if not any(tops):  # no critical path known (the aggregator's logs missing): the round time
        tops = [_mean_of(g, lambda m: m.seconds) for g in groups]
        ax.bar(range(len(groups)), known(tops), color=colors()[0], label="round")
    for i, top in enumerate(tops):
        if tops[0] and not math.isnan(top):
            ax.annotate(f"x{top / tops[0]:.2f}", (i, top), ha="center", va="bottom")
    _ticks(ax, names)
    ax.set_ylabel(f"seconds per round\n({left_out(options.skip_rounds)})")
    ax.margins(y=0.12)
    legend(ax, **OUTSIDE)
    return fig


def _hop_order(kind: str) -> tuple[int, int, int, str]:
    """Up from the clients, then down from the aggregator, the metrics last."""
    found = re.fullmatch(r"(up|down):(\w+)->(\w+)", kind)
    if found is None:
        return (2, 0, 0, kind)
    way, src, dst = found.groups()
    rank = {r: i for i, r in enumerate(ROLES)}
    sign = 1 if way == "up" else -1
    return (way == "down", sign * rank.get(src, 9), sign * rank.get(dst, 9), kind)


def hop_label(kind: str) -> str:
    """A link kind as a reader names the hop: `up client→switch`, `metrics`."""
    found = re.fullmatch(r"(up|down):(\w+)->(\w+)", kind)
    return kind if found is None else f"{found[1]} {found[2]}→{found[3]}"


def _hops(names: Sequence[str], groups: Sequence[Sequence[Means]], options: FigureOptions) -> Any:
    """KiB per round on each hop (all links of the kind together), a bar per group; a hop no
    group used is left out."""
    kinds = sorted({k for g in groups for m in g for k, v in m.links.items() if v}, key=_hop_order)
    fig, ax = figure(options, 6.4, 3.4)
    width = 0.8 / max(1, len(groups))
    for i, (name, group) in enumerate(zip(names, groups, strict=True)):
        kib = [_mean_of(group, lambda m, k=k: m.links.get(k, 0.0)) / 1024 for k in kinds]
        x = [k - 0.4 + width * (i + 0.5) for k in range(len(kinds))]
        ax.bar(x, kib, width, label=name, color=colors()[i % len(colors())])
    _ticks(ax, [hop_label(k) for k in kinds])
    ax.set_ylabel(f"KiB per round, every link of the hop\n({left_out(options.skip_rounds)})")
    legend(ax)
    return fig


def mbit(rate: str) -> float | None:
    """A tc rate (`100mbit`, `1gbit`, `512kbit`) in Mbit/s; None: not one."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)bit", rate.strip().lower())
    return None if found is None else float(found[1]) * UNITS[found[2]]


def _links(
    summaries: Sequence[Sequence[RunSummary]],
    groups: Sequence[Sequence[Means]],
    rates: Sequence[str | None],
    options: FigureOptions,
) -> Any:
    """Seconds per round against the link rate (log scale), a line per scheme and switch kind;
    the groups with no rate recorded are left out."""
    series: dict[str, list[tuple[float, float]]] = {}
    for runs, group, rate in zip(summaries, groups, rates, strict=True):
        x = mbit(rate) if rate else None
        if x is not None and runs:
            point = (x, _mean_of(group, lambda m: m.seconds))
            series.setdefault(label_of(runs[0]), []).append(point)
    fig, ax = figure(options, 5.0, 3.4)
    for name, points in series.items():
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, label=name)
    ax.set_xscale("log")
    ticks = sorted({x for points in series.values() for x, _ in points})
    ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("link rate (Mbit/s)")
    ax.set_ylabel(f"seconds per round\n({left_out(options.skip_rounds)})")
    legend(ax)
    return fig
