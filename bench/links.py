"""What the links cost: the default 15-node topology with a 1M-parameter model in a virtual cluster
(deploy/vcluster.sh: a namespace per node, tc-shaped links), per link rate, scheme and switch kind.

    sudo -E env PATH="$PATH" python bench/links.py [--rates 1gbit,100mbit] [--schemes none,ckks,bfv]
          (a scheme may name its backend and turn seeding off: ckks/seal, ckks/seal/full)
                                                   [--switches forwarding,adding] [--rounds 3]
                                                   [--out log/bench-links]

Prints figures only (nothing is asserted): one row per cell, from the run's summary.json, as the
mean over rounds 2 and later (round 1 pays for connection set-up and the first page faults):
  s/round      the aggregator's round time (global result to global result);
  agg MiB/rd   update bytes that reached the aggregator per round (its ingress);
  crypto       seconds of HE work on the round's critical path (encrypt, serialize, load, aggregate,
               decrypt, apply: CPU-bound);
  training     seconds of training on the critical path (CPU-bound);
  transfer     the round time minus the durations of the nodes on the critical path: time on the
               wire and in the network stacks (link-bound, and CPU-bound where 15 processes share
               this machine's cores);
  waiting      time a node on the path waited for something else than its own work.
Also writes bench.json beside the runs. Needs root and the venv's python on PATH.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hefl.argtypes import int_in  # noqa: E402
from hefl.provenance import bench_line  # noqa: E402
from hefl.records import SPLIT, RoundSummary, RunSummary  # noqa: E402


def encryption_of(spec: str) -> dict[str, Any]:
    """A --schemes entry: `scheme`, `scheme/backend`, or `scheme/backend/full` (seeded off)."""
    scheme, *rest = spec.split("/")
    out: dict[str, Any] = {"scheme": scheme}
    if rest:
        out["backend"] = rest[0]
    if rest[1:] == ["full"]:
        out["seeded"] = False
    return out


def cell_config(scheme: str, adding: bool, rounds: int) -> dict[str, Any]:
    """config.json's topology with the 1M-parameter synthetic MLP and the switch kind; `scheme`
    is a --schemes entry."""
    raw: dict[str, Any] = json.loads((ROOT / "config.json").read_text())
    name = scheme.replace("/", "-")
    raw["name"] = f"links-{name}-{'adding' if adding else 'forwarding'}"
    raw["dataset"] = {"name": "synthetic", "samples": 800, "features": 64, "classes": 10}
    raw["model"] = {"name": "mlp", "hidden": [13333]}  # 64*13333 + 13333 + 13333*10 + 10 params
    raw["training"] = {**raw["training"], "epochs": 1, "batch_size": 32, "lr": 0.01}
    raw["encryption"] = encryption_of(scheme)
    raw["aggregator"]["iteration"] = rounds
    for node in raw["others"].values():
        if node["type"] == "switch":
            node["dumb"] = not adding
    return raw


@dataclass(frozen=True)
class Row:
    """A row of bench.json: the cell (link rate, scheme, switches forwarding or adding), its
    figures (the module's doc says what each is) and its run folder."""

    rate: str
    scheme: str
    switches: str
    round_s: float
    agg_mib: float
    crypto: float
    training: float
    transfer: float
    waiting: float
    accuracy: float
    run: str


def measure(summary: RunSummary, rate: str, scheme: str, switches: str, run: str) -> Row:
    """A cell's row: the mean over rounds 2 and later of the round time, the aggregator's
    ingress and the critical path's split; the final round's accuracy."""
    later = summary.rounds[1:] or summary.rounds
    return Row(
        rate=rate,
        scheme=scheme,
        switches=switches,
        round_s=statistics.fmean(known(r.round_s) for r in later),
        agg_mib=statistics.fmean(r.aggregator_ingress for r in later) / 2**20,
        **{k: statistics.fmean(split_of(r).get(k, 0.0) for r in later) for k in SPLIT},
        accuracy=known(summary.rounds[-1].accuracy),
        run=run,
    )


def known(figure: float | None) -> float:
    """A figure of the summary; nan where it has none (a node's log missing)."""
    return math.nan if figure is None else figure


def split_of(row: RoundSummary) -> Mapping[str, float]:
    """How the round's critical path splits (empty: no path known)."""
    return row.critical_path.split if row.critical_path is not None else {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="1gbit,100mbit", help="link rates, as tc writes them")
    ap.add_argument(
        "--schemes",
        default="none,ckks,bfv",
        help="schemes, each may name its library and turn seeding off: ckks/seal, ckks/seal/full",
    )
    ap.add_argument("--switches", default="forwarding,adding", help="forwarding, adding or both")
    ap.add_argument("--rounds", type=int_in(1), default=3, help="rounds per cell (from 2 counted)")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "log" / "bench-links", help="where the runs go"
    )
    args = ap.parse_args()
    out = args.out / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    print(bench_line())
    print(
        f"{'rate':8} {'scheme':16} {'switches':10} {'s/round':>8} {'agg MiB/rd':>10} "
        f"{'crypto':>7} {'training':>8} {'transfer':>8} {'waiting':>7} {'accuracy':>8}"
    )
    rows = []
    for rate in args.rates.split(","):
        for scheme in args.schemes.split(","):
            for adding in [k == "adding" for k in args.switches.split(",")]:
                name = scheme.replace("/", "-")
                cfg = out / f"{rate}-{name}-{'adding' if adding else 'forwarding'}.json"
                cfg.write_text(json.dumps(cell_config(scheme, adding, args.rounds), indent=1))
                proc = subprocess.run(
                    [
                        str(ROOT / "deploy" / "vcluster.sh"),
                        "--config",
                        str(cfg),
                        "--rate",
                        rate,
                        "--log-dir",
                        str(out),
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                found = re.search(r"^vcluster: logs in (\S+)", proc.stdout, re.M)
                kind = "adding" if adding else "forwarding"
                if proc.returncode != 0 or not found:
                    tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:]
                    print(f"{rate:8} {scheme:16} {kind:10} failed: {tail}")
                    continue
                summary = json.loads((Path(found.group(1)) / "summary.json").read_text())
                f = measure(RunSummary.from_json(summary), rate, scheme, kind, found.group(1))
                rows.append(asdict(f))
                print(
                    f"{rate:8} {scheme:16} {kind:10} {f.round_s:8.2f} {f.agg_mib:10.1f} "
                    f"{f.crypto:7.2f} {f.training:8.2f} {f.transfer:8.2f} "
                    f"{f.waiting:7.2f} {f.accuracy:8.4f}",
                    flush=True,
                )
    (out / "bench.json").write_text(json.dumps(rows, indent=1))
    print(f"runs and bench.json in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
