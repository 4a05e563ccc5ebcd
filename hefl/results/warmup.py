"""Which rounds a printed or plotted mean counts: every completed round but the warm-up ones.

Round 1 of an HE run is cheap for the wrong reason: every ciphertext its clients send was
precomputed while the nodes were set up (encryptions of zero made before the first round
began), so a mean over every round understates what HE costs. Round 1 of a plaintext run
pays once for what later rounds reuse (connections opened, torch's first steps), and
runs compared side by side must average the same rounds for their ratios to mean anything: so
the default leaves round 1 out of every run, whatever its scheme. summary.json and summary.csv
keep every round and their totals; only the means printed and plotted leave rounds out, and
say which.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from hefl.records import SPLIT, UNATTRIBUTED, RoundSummary

DEFAULT_SKIP = 1  # leading rounds a mean leaves out, unless told (`--skip-rounds`)


def skipped(completed: int, asked: int | None = None) -> int:
    """How many leading rounds the means leave out of `completed` rounds: `asked` (the default
    when None), but never every round: a run of one round keeps it."""
    want = DEFAULT_SKIP if asked is None else asked
    return max(0, min(want, completed - 1))


def measured(rounds: Sequence[RoundSummary], asked: int | None = None) -> Sequence[RoundSummary]:
    """The rounds the means count."""
    return rounds[skipped(len(rounds), asked) :]


def _span(numbers: Sequence[int]) -> str:
    """Rounds (numbered from 0) as the reader counts them, from 1: `round 3`, `rounds 2-10`."""
    first, last = numbers[0] + 1, numbers[-1] + 1
    return f"round {first}" if first == last else f"rounds {first}-{last}"


def which(numbers: Sequence[int], asked: int | None = None) -> str:
    """What a mean over a run's rounds (their numbers, from 0, in order) counts, in words:
    `rounds 2-10 (round 1 left out: warm-up)`, `all 10 rounds`, `its only round`."""
    if not numbers:
        return "no round"
    left = skipped(len(numbers), asked)
    if left:
        return f"{_span(numbers[left:])} ({_span(numbers[:left])} left out: warm-up)"
    if len(numbers) == 1:
        return "its only round"
    return f"all {len(numbers)} rounds"


def left_out(asked: int | None = None) -> str:
    """What the means over several runs leave out, in words: `each run's round 1 left out
    (warm-up)`, `every round counted`."""
    want = DEFAULT_SKIP if asked is None else asked
    if not want:
        return "every round counted"
    return f"each run's {'round 1' if want == 1 else f'rounds 1-{want}'} left out (warm-up)"


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else 0.0


@dataclass(frozen=True)
class Means:
    """A run's figures per round over the rounds the means count: seconds (None: no round
    timed), bytes on the wire and into the aggregator, crypto seconds (all nodes), the critical
    path's split and the bytes of each kind of link."""

    rounds: int = 0
    seconds: float | None = None
    bytes_on_wire: float = 0.0
    aggregator_ingress: float = 0.0
    crypto_s: float = 0.0
    split: dict[str, float] = field(default_factory=dict)
    links: dict[str, float] = field(default_factory=dict)


def means(rounds: Sequence[RoundSummary]) -> Means:
    """The means of `rounds` (those `measured` gives)."""
    timed = [row.round_s for row in rounds if row.round_s is not None]
    paths = [row.critical_path.split for row in rounds if row.critical_path is not None]
    parts = [*SPLIT, *([UNATTRIBUTED] if any(UNATTRIBUTED in p for p in paths) else [])]
    kinds = sorted({k for row in rounds for k in row.bytes_by_link})
    return Means(
        rounds=len(rounds),
        seconds=statistics.fmean(timed) if timed else None,
        bytes_on_wire=_mean([row.bytes_on_wire for row in rounds]),
        aggregator_ingress=_mean([row.aggregator_ingress for row in rounds]),
        crypto_s=_mean([row.crypto_s for row in rounds]),
        split={k: _mean([p.get(k) or 0.0 for p in paths]) for k in parts} if paths else {},
        links={k: _mean([row.bytes_by_link.get(k, 0) for row in rounds]) for k in kinds},
    )
