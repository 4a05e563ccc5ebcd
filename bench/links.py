"""What the links cost: the default 15-node topology with a 1M-parameter model in a virtual cluster
(deploy/vcluster.sh: a namespace per node, tc-shaped links), per link rate, scheme and switch kind;
with --workload, a ResNet-18 or the default digits model under bench/workloads.py's topology.

    sudo -E env PATH="$PATH" python bench/links.py [--rates 1gbit,100mbit] [--schemes none,ckks,bfv]
          (a scheme may name its backend and turn seeding off: ckks/seal, ckks/seal/full)
                                                   [--switches forwarding,adding] [--rounds 3]
                                                   [--workload mlp|resnet18|digits] [--images 400]
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

--workload resnet18 or digits runs 4 clients under 2 switches (adding unless --switches says), as
bench/workloads.py builds them, each node on a host of its own: the ResNet-18 on a CIFAR-10-format
tarball of random images written into the output folder (--images training images, one batch of
16 a round), or config.json's model, data and training. Its rows show, beside the split:
  HE %         crypto as a share of s/round;
  c>s s>a      MiB a round on one link of each kind of hop, as its sender counted them: client to
  a>s s>c      switch and switch to aggregator (the updates, up), aggregator to switch and switch
               to client (the global result, down);
  RSS ...      per role, the largest peak RSS (VmHWM, MiB) of its nodes' processes (the gunicorn
               worker, in practice), read from /proc while the run goes.
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
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._proc import Sampler  # noqa: E402
from bench.workloads import cifar_tarball, config  # noqa: E402
from hefl.argtypes import int_in  # noqa: E402
from hefl.provenance import bench_line  # noqa: E402
from hefl.records import SPLIT, RoundSummary, RunSummary  # noqa: E402

WORKLOADS = ("mlp", "resnet18", "digits")  # mlp: the 1M-parameter MLP on config.json's topology
HOPS = (
    "up:client->switch",
    "up:switch->aggregator",
    "down:aggregator->switch",
    "down:switch->client",
)
SAMPLE_S = 0.5  # /proc sampling period of a --workload run (VmHWM keeps the peak in between)
HEADER = (
    f"{'rate':8} {'scheme':16} {'switches':10} {'s/round':>8} {'agg MiB/rd':>10} "
    f"{'crypto':>7} {'training':>8} {'transfer':>8} {'waiting':>7} {'accuracy':>8}"
)
WIDE_HEADER = (
    f"{'rate':8} {'scheme':16} {'switches':10} {'s/round':>8} {'training':>8} {'crypto':>7} "
    f"{'transfer':>8} {'waiting':>7} {'HE %':>5} {'c>s':>6} {'s>a':>6} {'a>s':>6} {'s>c':>6} "
    f"{'RSS client':>10} {'switch':>7} {'agg':>7}"
)


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
    return with_switches(raw, adding)


def with_switches(raw: dict[str, Any], adding: bool) -> dict[str, Any]:
    """The config with every switch adding (or forwarding)."""
    for node in raw["others"].values():
        if node["type"] == "switch":
            node["dumb"] = not adding
    return raw


def workload_config(
    workload: str, scheme: str, adding: bool, rounds: int, data: Path
) -> dict[str, Any]:
    """bench/workloads.py's 4 clients under 2 switches, each node on a host of its own, with the
    ResNet-18 on the CIFAR-10 tarball in `data` (one batch a round) or with config.json's model,
    data and training; `scheme` is a --schemes entry."""
    raw = on_hosts(config(scheme, "resnet18", data.resolve(), rounds, steps=1))
    if workload == "digits":
        default = json.loads((ROOT / "config.json").read_text())
        raw["dataset"], raw["model"] = default["dataset"], default["model"]
        raw["training"] = {**default["training"], "device": "cpu"}
    raw["training"]["save_models"] = False  # on the nodes' own disks: no HE error to compute here
    name = scheme.replace("/", "-")
    raw["name"] = f"links-{workload}-{name}-{'adding' if adding else 'forwarding'}"
    raw["encryption"] = encryption_of(scheme)
    return with_switches(raw, adding)


def on_hosts(raw: dict[str, Any]) -> dict[str, Any]:
    """A config whose nodes share 127.0.0.1 (a port each) with a host per node instead, 10.10.1.1
    on in config order, as a virtual cluster needs."""
    host = {
        nid: f"10.10.1.{i + 1}" for i, nid in enumerate([*raw["others"], raw["aggregator"]["ip"]])
    }
    others = {}
    for nid, node in raw["others"].items():
        moved = {**node, "send": host[node["send"]]}
        if "receive" in node:
            moved["receive"] = [host[child] for child in node["receive"]]
        others[host[nid]] = moved
    aggregator = {**raw["aggregator"], "ip": host[raw["aggregator"]["ip"]]}
    return {**raw, "others": others, "aggregator": aggregator}


def roles(raw: dict[str, Any]) -> dict[str, str]:
    """Each node id of the config and its role."""
    out = {nid: str(node["type"]) for nid, node in raw["others"].items()}
    return out | {raw["aggregator"]["ip"]: "aggregator"}


def hop_counts(raw: dict[str, Any]) -> Counter[str]:
    """How many links of each kind of hop (`up:client->switch`, ...) the config's tree has: one
    per node and the node it sends to, each way."""
    role = roles(raw)
    out: Counter[str] = Counter()
    for node in raw["others"].values():
        child, parent = node["type"], role[node["send"]]
        out[f"up:{child}->{parent}"] += 1
        out[f"down:{parent}->{child}"] += 1
    return out


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


@dataclass(frozen=True)
class WorkloadRow(Row):
    """A row of bench.json with --workload: a Row and the workload, crypto's share of the round,
    MiB per link a round by kind of hop and the peak RSS (MiB) per role."""

    workload: str
    he_share: float
    hop_mib: Mapping[str, float]
    peak_mib: Mapping[str, float]


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


def measure_workload(
    row: Row, workload: str, summary: RunSummary, raw: dict[str, Any], sampler: Sampler
) -> WorkloadRow:
    """A --workload cell's row: `row` and what the module's doc lists for such a run."""
    later = summary.rounds[1:] or summary.rounds
    links = hop_counts(raw)
    hops = {
        k: statistics.fmean(r.bytes_by_link.get(k, 0) for r in later) / n / 2**20
        for k, n in links.items()
    }
    role = roles(raw)
    peaks: dict[str, float] = {}
    for node, usage in sampler.nodes.items():
        if node in role:
            peaks[role[node]] = max(peaks.get(role[node], 0.0), usage.peak_kb / 1024)
    return WorkloadRow(
        **asdict(row),
        workload=workload,
        he_share=row.crypto / row.round_s if row.round_s else math.nan,
        hop_mib=hops,
        peak_mib=peaks,
    )


def known(figure: float | None) -> float:
    """A figure of the summary; nan where it has none (a node's log missing)."""
    return math.nan if figure is None else figure


def split_of(row: RoundSummary) -> Mapping[str, float]:
    """How the round's critical path splits (empty: no path known)."""
    return row.critical_path.split if row.critical_path is not None else {}


def host_of(pid: int) -> str | None:
    """The host a node process was started with (`main.py node --host H`, which the titles
    `gunicorn: master [main.py node --host H ...]` and `... worker [...]` keep)."""
    try:
        raw = Path("/proc", str(pid), "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return None
    args = raw.replace("\0", " ").strip().removesuffix("]").split()
    if "node" in args and "--host" in args[:-1]:
        return args[args.index("--host") + 1]
    return None


class HostSampler(Sampler):
    """Samples the processes below deploy/vcluster.sh: each belongs to the node whose `--host` it,
    or an ancestor, was started with (a virtual cluster's nodes have no `--label`)."""

    def find(self, pid: int) -> str | None:
        return host_of(pid)


def vcluster(cfg: Path, rate: str, out: Path, sample: bool) -> tuple[Path | str, Sampler | None]:
    """deploy/vcluster.sh on `cfg` at `rate`, its output beside `cfg` (`.out`), its processes
    sampled when `sample`: the run folder, or the last line it printed when it failed."""
    command = [str(ROOT / "deploy" / "vcluster.sh"), "--config", str(cfg), "--rate", rate]
    log = cfg.with_suffix(".out")
    with (
        open(log, "wb") as sink,
        subprocess.Popen(
            [*command, "--log-dir", str(out)], stdout=sink, stderr=subprocess.STDOUT
        ) as proc,
    ):
        sampler = HostSampler(proc.pid) if sample else None
        while proc.poll() is None:
            if sampler is not None:
                sampler.sample()
            time.sleep(SAMPLE_S)
    text = log.read_text(errors="replace")
    found = re.search(r"^vcluster: logs in (\S+)", text, re.M)
    if proc.returncode != 0 or not found:
        return str(text.strip().splitlines()[-1:]), sampler
    return Path(found.group(1)), sampler


def cell(args: argparse.Namespace, out: Path, rate: str, scheme: str, adding: bool) -> Row | None:
    """Run one cell and print its row (None: the run failed, and the row says so)."""
    kind = "adding" if adding else "forwarding"
    if args.workload == "mlp":
        raw = cell_config(scheme, adding, args.rounds)
    else:
        raw = workload_config(args.workload, scheme, adding, args.rounds, out / "cifar10")
    cfg = out / f"{rate}-{scheme.replace('/', '-')}-{kind}.json"
    cfg.write_text(json.dumps(raw, indent=1))
    run, sampler = vcluster(cfg, rate, out, sample=args.workload != "mlp")
    if not isinstance(run, Path):
        print(f"{rate:8} {scheme:16} {kind:10} failed: {run}", flush=True)
        return None
    summary = RunSummary.from_json(json.loads((run / "summary.json").read_text()))
    f = measure(summary, rate, scheme, kind, str(run))
    if sampler is None:
        print(
            f"{rate:8} {scheme:16} {kind:10} {f.round_s:8.2f} {f.agg_mib:10.1f} "
            f"{f.crypto:7.2f} {f.training:8.2f} {f.transfer:8.2f} "
            f"{f.waiting:7.2f} {f.accuracy:8.4f}",
            flush=True,
        )
        return f
    w = measure_workload(f, args.workload, summary, raw, sampler)
    print(wide_line(w), flush=True)
    return w


def wide_line(w: WorkloadRow) -> str:
    """A --workload row as printed (MiB under 1 with three decimals: a digits update is 50 KB)."""
    hops = [w.hop_mib.get(k) for k in HOPS]
    mib = " ".join(f"{'-':>6}" if v is None else f"{v:6.{1 if v >= 1 else 3}f}" for v in hops)
    peak = [w.peak_mib.get(r, math.nan) for r in ("client", "switch", "aggregator")]
    return (
        f"{w.rate:8} {w.scheme:16} {w.switches:10} {w.round_s:8.2f} {w.training:8.2f} "
        f"{w.crypto:7.2f} {w.transfer:8.2f} {w.waiting:7.2f} {100 * w.he_share:5.0f} {mib} "
        f"{peak[0]:10.0f} {peak[1]:7.0f} {peak[2]:7.0f}"
    )


def arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="1gbit,100mbit", help="link rates, as tc writes them")
    ap.add_argument(
        "--schemes",
        default="none,ckks,bfv",
        help="schemes, each may name its library and turn seeding off: ckks/seal, ckks/seal/full",
    )
    ap.add_argument(
        "--switches",
        help="forwarding, adding or both (default: both; adding with --workload resnet18, digits)",
    )
    ap.add_argument("--rounds", type=int_in(1), default=3, help="rounds per cell (from 2 counted)")
    ap.add_argument(
        "--workload",
        choices=WORKLOADS,
        default="mlp",
        help="mlp: the 1M-parameter MLP, 15 nodes; resnet18, digits: 4 clients, 2 switches",
    )
    ap.add_argument(
        "--images", type=int_in(10), default=400, help="resnet18: training images in the tarball"
    )
    ap.add_argument(
        "--out", type=Path, default=ROOT / "log" / "bench-links", help="where the runs go"
    )
    args = ap.parse_args()
    if args.switches is None:
        args.switches = "forwarding,adding" if args.workload == "mlp" else "adding"
    return args


def main() -> int:
    args = arguments()
    out = args.out / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    print(bench_line())
    if args.workload == "resnet18":
        (out / "cifar10").mkdir()
        cifar_tarball(out / "cifar10", args.images, max(40, args.images // 5))
    print(HEADER if args.workload == "mlp" else WIDE_HEADER)
    rows = []
    for rate in args.rates.split(","):
        for scheme in args.schemes.split(","):
            for adding in [k == "adding" for k in args.switches.split(",")]:
                row = cell(args, out, rate, scheme, adding)
                if row is not None:
                    rows.append(asdict(row))
    (out / "bench.json").write_text(json.dumps(rows, indent=1))
    print(f"runs and bench.json in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
