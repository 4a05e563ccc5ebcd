"""What `report` and `compare` take for their figures and means: the formats written beside the
PNGs, a size, a matplotlib style over ours, the leading rounds the means leave out; their flags,
each bad value one argparse error line."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

FORMATS = ("png", "pdf", "svg")  # PNG always; PDF and SVG are vector, for a paper
MAX_INCHES = 40.0


@dataclass(frozen=True)
class FigureOptions:
    """How figures are written: `formats` (png first, always), `size` (inches, width and height;
    None: each figure's own), `style` (a matplotlib style name or .mplstyle file applied over
    hefl/results/paper.mplstyle; None: ours alone) and `skip_rounds` (leading rounds the means
    leave out; None: hefl.results.warmup's default)."""

    formats: tuple[str, ...] = ("png",)
    size: tuple[float, float] | None = None
    style: str | None = None
    skip_rounds: int | None = None


def formats(text: str) -> tuple[str, ...]:
    """An argparse type: `pdf`, `svg`, `pdf,svg`: the formats beside the PNG (png first)."""
    asked = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in asked if f not in FORMATS]
    if bad or not asked:
        raise argparse.ArgumentTypeError(
            f"unknown format {(bad or [text])[0]!r} (choose from {', '.join(FORMATS)})"
        )
    return tuple(f for f in FORMATS if f == "png" or f in asked)


def size(text: str) -> tuple[float, float]:
    """An argparse type: `WIDTH,HEIGHT` in inches (`3.5,2.4`: a paper's column)."""
    try:
        width, height = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not WIDTH,HEIGHT in inches (3.5,2.4, say)"
        ) from None
    if not (0 < width <= MAX_INCHES and 0 < height <= MAX_INCHES):
        raise argparse.ArgumentTypeError(f"width and height must be in (0, {MAX_INCHES:g}] inches")
    return width, height


def style(text: str) -> str:
    """An argparse type: a .mplstyle file that exists, or a style matplotlib knows by name."""
    if Path(text).is_file():
        return text
    import matplotlib.style

    if text not in matplotlib.style.available:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a file nor a matplotlib style (matplotlib.style.available)"
        )
    return text


def skip_rounds(text: str) -> int:
    """An argparse type: a whole number of rounds, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The figure and means flags `report` and `compare` share."""
    parser.add_argument(
        "--format",
        type=formats,
        default=("png",),
        help="also write the figures as pdf and/or svg beside the PNGs (pdf,svg: both)",
    )
    parser.add_argument(
        "--size", type=size, help="every figure's size in inches, WIDTH,HEIGHT (3.5,2.4)"
    )
    parser.add_argument(
        "--style",
        type=style,
        help="a matplotlib style (a name, or an .mplstyle file) applied over hefl's own",
    )
    parser.add_argument(
        "--skip-rounds",
        type=skip_rounds,
        metavar="N",
        help="leading rounds each run's printed and plotted means leave out (default 1: round 1 "
        "is warm-up; 0 counts every round); summary.json and summary.csv keep every round",
    )


def options_of(args: argparse.Namespace) -> FigureOptions:
    """The options the flags of `add_flags` gave."""
    return FigureOptions(args.format, args.size, args.style, args.skip_rounds)
