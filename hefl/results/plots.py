"""A run's figures from its summary: headless matplotlib under hefl/results/paper.mplstyle, PNG at
print resolution and, when asked, PDF and SVG beside it; the same bytes for the same summary."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: clusters and CI have none

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.style  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from hefl.files import write_bytes_atomic  # noqa: E402
from hefl.records import ROLES, SPLIT, UNATTRIBUTED, NodeBytes, RoundSummary, RunSummary  # noqa: E402
from hefl.results.options import FigureOptions  # noqa: E402
from hefl.results.timeline import PHASES  # noqa: E402
from hefl.results.warmup import measured, skipped, which  # noqa: E402

STYLE = Path(__file__).with_name("paper.mplstyle")
PARTS = (*SPLIT, UNATTRIBUTED)  # a critical path's split, as stacked
FIGURES = ("accuracy", "bytes", "phases", "critical_path")  # a run's, each in every format
# no version or date in a file: the same figure gives the same bytes
METADATA: dict[str, dict[str, None]] = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
    "svg": {"Creator": None, "Date": None},
}
PALE = 0.45  # the alpha of what is drawn pale: bytes received, the warm-up rounds


@contextmanager
def styled(options: FigureOptions) -> Iterator[None]:
    """hefl's style, then the one asked for over it, for the figures made inside."""
    with matplotlib.style.context([str(STYLE), *([options.style] if options.style else [])]):
        yield


def figure(options: FigureOptions, width: float, height: float, **kw: Any) -> tuple[Any, Any]:
    """A figure of its own size, or of the size asked for."""
    return plt.subplots(figsize=options.size or (width, height), **kw)


def colors() -> list[str]:
    """The style's colour cycle (the roles, the parts and the runs take theirs from it)."""
    return list(plt.rcParams["axes.prop_cycle"].by_key()["color"])


OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)}  # a legend right of its axes


def legend(ax: Any, **kw: Any) -> None:
    """The axes' legend, where something drawn has a label (a figure of no round has none)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def save(fig: Any, stem: Path, formats: Sequence[str]) -> list[Path]:
    """The figure as `stem`.png (and .pdf, .svg where asked); returns the paths."""
    paths = []
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, metadata=METADATA[fmt])
        path = stem.with_name(f"{stem.name}.{fmt}")
        write_bytes_atomic(path, buf.getvalue())
        paths.append(path)
    plt.close(fig)
    return paths


def plot_run(summary: RunSummary, out: Path, options: FigureOptions | None = None) -> list[Path]:
    """The four figures of one run, beside its summary; returns their paths."""
    options = options or FigureOptions()
    drawn: tuple[Callable[[RunSummary, FigureOptions], Any], ...] = (
        _accuracy,
        _bytes,
        _phases,
        _critical_path,
    )
    paths = []
    with styled(options):
        for name, draw in zip(FIGURES, drawn, strict=True):
            paths += save(draw(summary, options), out / name, options.formats)
    return paths


def rounds_axis(rounds: Sequence[RoundSummary]) -> list[int]:
    """The x of each round: its number from 1."""
    return [row.round + 1 for row in rounds]


def known(values: Iterable[float | None]) -> list[float]:
    """Figures to plot, nan (no point) where one is unknown (or, for a log axis, not above 0)."""
    return [math.nan if v is None or v <= 0 else v for v in values]


def counted(summary: RunSummary, options: FigureOptions) -> str:
    """The rounds a run's means count, in words."""
    return which([row.round for row in summary.rounds], options.skip_rounds)


def _accuracy(summary: RunSummary, options: FigureOptions) -> Any:
    """Accuracy and loss of the global model per round; below, the HE error per round where the
    run saved its models."""
    rounds = summary.rounds
    x = rounds_axis(rounds)
    errors = [row.he_error for row in rounds]
    panels = 2 if any(e and e.max_abs > 0 for e in errors) else 1  # a log axis needs one
    fig, axes = figure(options, 6.4, 2.4 + 1.6 * panels, nrows=panels, sharex=True, squeeze=False)
    ax = axes[0][0]
    (acc,) = ax.plot(x, [math.nan if r.accuracy is None else r.accuracy for r in rounds])
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    loss_ax = ax.twinx()
    loss_ax.grid(False)
    loss_ax.plot([], [])  # the next style of the cycle: loss is not drawn like accuracy
    (loss,) = loss_ax.plot(x, [math.nan if r.loss is None else r.loss for r in rounds])
    loss_ax.set_ylabel("loss")
    ax.legend([acc, loss], ["accuracy", "loss"], loc="center right")
    if panels == 2:
        he = axes[1][0]
        he.plot(x, known(e.max_abs if e else None for e in errors), label="max")
        he.plot(x, known(e.mean_abs if e else None for e in errors), label="mean")
        he.set_yscale("log")
        he.set_ylabel("HE error |model - FedAvg|")
        he.legend()
    axes[-1][0].set_xlabel("round")
    axes[-1][0].xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def _mean_kib(rounds: Sequence[RoundSummary], node: str, get: Callable[[NodeBytes], int]) -> float:
    """A node's bytes (sent or received: `get`) per round in KiB, over the rounds (0 where a round
    has none of it)."""
    total = sum(get(b) for row in rounds if (b := row.bytes_by_node.get(node)) is not None)
    return total / (len(rounds) or 1) / 1024


def _bytes(summary: RunSummary, options: FigureOptions) -> Any:
    """Each node's bytes sent (solid) and received (pale) per round, coloured by role."""
    rounds = measured(summary.rounds, options.skip_rounds)
    nodes = list(rounds[0].bytes_by_node) if rounds else []
    roles = [rounds[0].bytes_by_node[n].role for n in nodes]
    fig, ax = figure(options, 6.4, max(2.4, 0.2 * len(nodes) + 1.2))
    role_color = dict(zip(ROLES, colors(), strict=False))
    ways: tuple[tuple[Callable[[NodeBytes], int], float], ...] = (
        (lambda b: b.sent, 1.0),
        (lambda b: b.received, PALE),
    )
    for i, (get, alpha) in enumerate(ways):
        ax.barh(
            [j + 0.4 * i for j in range(len(nodes))],
            [_mean_kib(rounds, n, get) for n in nodes],
            height=0.4,
            color=[role_color[r] for r in roles],
            alpha=alpha,
        )
    ax.set_yticks([j + 0.2 for j in range(len(nodes))], nodes)
    ax.invert_yaxis()
    ax.set_xlabel(f"KiB per round, mean over {counted(summary, options)}")
    present = [r for r in ROLES if r in roles]
    handles = [Patch(color=role_color[r], label=r) for r in present]
    handles += [Patch(color="0.3", label="sent"), Patch(color="0.3", alpha=PALE, label="received")]
    ax.legend(handles=handles, **OUTSIDE)
    return fig


def _phases(summary: RunSummary, options: FigureOptions) -> Any:
    """Each role's seconds per round, stacked by phase; a phase no role spent time in is left out,
    of the bars and of the legend."""
    rounds = measured(summary.rounds, options.skip_rounds)
    fig, ax = figure(options, 6.4, 3.6)
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
    ax.set_ylabel("seconds per round\n(mean over the role's nodes)")
    ax.set_xlabel(f"mean over {counted(summary, options)}")
    legend(ax, **OUTSIDE)
    return fig


def split_part(row: RoundSummary, part: str) -> float:
    """Seconds of the round's critical path in one part of its split (0: none known)."""
    path = row.critical_path
    return (path.split.get(part) if path is not None else None) or 0.0


def _critical_path(summary: RunSummary, options: FigureOptions) -> Any:
    """Each round's critical path, stacked by what its time was spent on; the warm-up rounds,
    which the means leave out, drawn pale."""
    rounds = summary.rounds
    x = rounds_axis(rounds)
    warm = skipped(len(rounds), options.skip_rounds)
    fig, ax = figure(options, 6.4, 3.2)
    part_color = dict(zip(PARTS, [*colors()[:4], "0.75"], strict=True))
    bottoms = [0.0] * len(rounds)
    for part in PARTS:
        values = [split_part(row, part) for row in rounds]
        if any(values):
            color = part_color[part]
            ax.bar(x[warm:], values[warm:], bottom=bottoms[warm:], color=color, label=part)
            ax.bar(x[:warm], values[:warm], bottom=bottoms[:warm], color=color, alpha=PALE)
            bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    if warm:
        ax.axvspan(0.5, warm + 0.5, color="0.92", zorder=0, label="warm-up (not in the means)")
    ax.set_xlabel("round")
    ax.set_xticks(x if len(x) <= 20 else x[:: max(1, len(x) // 10)])
    ax.set_ylabel("seconds on the critical path")
    legend(ax, **OUTSIDE)
    return fig
