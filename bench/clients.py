"""Many clients on few machines: the default 15-node topology whose 8 client nodes each host k
logical clients (`clients: k`), run with `main.py local` on synthetic data, per scheme.

    .venv/bin/python bench/clients.py [--per-node 16] [--schemes none,ckks,bfv] [--rounds 5]
                                      [--big 511] [--reference] [--local-sum ckks]
                                      [--out log/bench-clients]

Prints figures only (nothing is asserted). One row per run:
  clients      logical clients (8 nodes x k; --big: ckks with that many, 511 being its headroom
               with clip 1, spread over the 8 nodes);
  s/round      the aggregator's round time (global result to global result), mean of rounds 2 and
               later (round 1 pays for connection set-up);
  agg KiB/rd   update bytes that reached the aggregator per round (its ingress);
  wire KiB/rd  body bytes every node sent per round, in all;
  client s     the mean client node's train + encrypt + aggregate (local_sum) + serialize + send
               seconds per round, for all the clients it hosts;
  peak MiB     the largest sum of the resident memory (VmRSS) of every process of the run seen at
               one moment (sampled every 0.1 s): the whole run's peak, shared library pages
               counted once per process;
  node MiB     the largest peak RSS (VmHWM) of one client node's processes;
  accuracy     the final round's, over every logical client's test slice (training.lr 0.5: the
               clients hold 50 samples each);
  wall s       the whole `main.py local`, start-up of 15 processes included.
--reference adds the same topology with one client per node (8 clients): what k clients add to a
client node's memory against one. --local-sum (default ckks) adds, per scheme named, the 8 x k run
with every node adding its own clients' updates before sending one message. Each client holds 50
training samples (the synthetic dataset grows with the clients). Writes bench.json and keeps the
runs beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._proc import sampled  # noqa: E402
from hefl.argtypes import int_in  # noqa: E402
from hefl.config import host_clients  # noqa: E402
from hefl.provenance import bench_line  # noqa: E402
from hefl.records import NodeLog, RunSummary  # noqa: E402

PER_CLIENT = 50  # training samples per logical client (the test slices take a fifth more)
LR = 0.5  # with 50 samples a client and 5 rounds, 0.05 barely leaves chance level


def cell_config(
    scheme: str, clients: int, rounds: int, local_sum: bool = False, lr: float = LR
) -> dict[str, Any]:
    """config.json's topology, its 8 client nodes hosting `clients` logical clients in all (as
    evenly as they divide: the last nodes take one fewer), each node adding its own clients'
    updates with `local_sum`."""
    raw = json.loads((ROOT / "config.json").read_text())
    nodes = sum(1 for n in raw["others"].values() if n["type"] == "client")
    if clients < nodes:
        raise SystemExit(f"--big/--per-node: at least one client on each of the {nodes} nodes")
    per = -(-clients // nodes)
    raw = host_clients(raw, per)
    extra = per * nodes - clients  # taken off the last nodes, one each
    order = sorted(
        (n for n in raw["others"].values() if n["type"] == "client"), key=lambda n: n["index"]
    )
    index = 0
    for i, node in enumerate(order):
        node["client_number"] = clients
        node["index"] = index
        k = per - (1 if i >= nodes - extra else 0)
        if k == 1:
            node.pop("clients", None)
        else:
            node.update(clients=k, local_sum=local_sum)
        index += k
    raw["name"] = f"clients-{scheme}-{clients}{'-local-sum' if local_sum else ''}"
    samples = round(clients * PER_CLIENT / 0.8)
    raw["dataset"] = {"name": "synthetic", "samples": samples, "features": 64, "classes": 10}
    raw["model"] = {"name": "mlp"}
    raw["training"] = {**raw["training"], "epochs": 1, "batch_size": 16, "lr": lr}
    raw["encryption"] = {"scheme": scheme}
    raw["aggregator"]["iteration"] = rounds
    raw["network"] = {"round_timeout_s": 1800}
    return raw


@dataclass(frozen=True)
class Figures:
    """One run's figures: a row of bench.json (the module's doc says what each is)."""

    clients: int
    round_s: float
    agg_kib: float
    wire_kib: float
    client_s: float
    peak_mib: float
    node_mib: float
    accuracy: float | None
    wall_s: float
    run: str  # its folder


def run(raw: dict[str, Any], out: Path) -> Figures | str:
    """`main.py local` on `raw`, its processes sampled; the figures of one row, or why the run
    failed."""
    cfg = out / f"{raw['name']}.json"
    cfg.write_text(json.dumps(raw, indent=1))
    command = [sys.executable, str(ROOT / "main.py"), "local", "--config", str(cfg)]
    command += ["--log-dir", str(out)]
    code, wall, sampler = sampled(command, out / f"{raw['name']}.out")
    text = (out / f"{raw['name']}.out").read_text(errors="replace")
    if code:
        return f"exit {code}: {text.strip()[-300:]}"
    exp = Path(next(line for line in text.splitlines() if line.startswith("logs: "))[6:])
    summary = RunSummary.from_json(json.loads((exp / "summary.json").read_text()))
    later = summary.rounds[1:] or summary.rounds
    at: dict[float, int] = {}  # sample time -> the sum of every process's RSS then (kB)
    for usage in sampler.nodes.values():
        for samples in usage.rss.values():
            for t, kb in samples:
                at[t] = at.get(t, 0) + kb
    client_nodes = [
        n for n, rec in summary.rounds[-1].bytes_by_node.items() if rec.role == "client"
    ]
    node_peak = max(sampler.nodes[n].peak_kb for n in client_nodes if n in sampler.nodes)
    client_s = [client_seconds(exp, node) for node in client_nodes]
    return Figures(
        clients=summary.clients,
        round_s=sum(known(r.round_s) for r in later) / len(later),
        agg_kib=sum(r.aggregator_ingress for r in later) / len(later) / 1024,
        wire_kib=sum(r.bytes_on_wire for r in later) / len(later) / 1024,
        client_s=sum(client_s) / len(client_s),
        peak_mib=max(at.values(), default=0) / 1024,
        node_mib=node_peak / 1024,
        accuracy=summary.totals.final_accuracy,
        wall_s=wall,
        run=str(exp),
    )


def known(seconds: float | None) -> float:
    """A figure of the summary; nan where it has none (the aggregator's log missing)."""
    return math.nan if seconds is None else seconds


def client_seconds(exp: Path, node: str) -> float:
    """A client node's train + encrypt + aggregate + serialize + send seconds per round, for all
    the clients it hosts (the mean of round 2 on: round 1 pays for connection set-up)."""
    log = NodeLog.from_json(json.loads((exp / f"{node.replace(':', '_')}.json").read_text()))
    recs = log.iteration[1:] or log.iteration
    return sum(
        rec.phases.get(p, 0.0)
        for rec in recs
        for p in ("train", "encrypt", "aggregate", "serialize", "send")
    ) / len(recs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--per-node", type=int_in(1), default=16, help="logical clients per client node"
    )
    ap.add_argument("--schemes", default="none,ckks,bfv")
    ap.add_argument("--rounds", type=int_in(1), default=5)
    ap.add_argument(
        "--big", type=int_in(0), default=511, help="ckks clients of the last row (0: none)"
    )
    ap.add_argument("--reference", action="store_true", help="first a run of 1 client per node")
    ap.add_argument(
        "--local-sum", default="ckks", help="schemes also run with local_sum (each node adds)"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "log" / "bench-clients")
    args = ap.parse_args()
    out = args.out / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    print(bench_line())
    raw = json.loads((ROOT / "config.json").read_text())
    nodes = sum(1 for n in raw["others"].values() if n["type"] == "client")
    cells = [(s, nodes * args.per_node, False) for s in args.schemes.split(",")]
    cells += [(s, nodes * args.per_node, True) for s in args.local_sum.split(",") if s]
    if args.reference:
        cells.insert(0, ("none", nodes, False))
    if args.big:
        cells.append(("ckks", args.big, False))
    print(
        f"{'scheme':6} {'local_sum':9} {'clients':>7} {'s/round':>8} {'agg KiB/rd':>10} "
        f"{'wire KiB/rd':>11} {'client s':>8} {'peak MiB':>8} {'node MiB':>8} {'accuracy':>8} "
        f"{'wall s':>7}"
    )
    rows = []
    for scheme, clients, local_sum in cells:
        f = run(cell_config(scheme, clients, args.rounds, local_sum), out)
        adds = "yes" if local_sum else "no"
        if isinstance(f, str):
            rows.append({"scheme": scheme, "local_sum": local_sum, "error": f})
            print(f"{scheme:6} {adds:9} {clients:7} failed: {f}", flush=True)
            continue
        rows.append({"scheme": scheme, "local_sum": local_sum, **asdict(f)})
        print(
            f"{scheme:6} {adds:9} {f.clients:7} {f.round_s:8.2f} {f.agg_kib:10.1f} "
            f"{f.wire_kib:11.1f} {f.client_s:8.2f} {f.peak_mib:8.0f} "
            f"{f.node_mib:8.0f} {f.accuracy:8.4f} {f.wall_s:7.0f}",
            flush=True,
        )
    (out / "bench.json").write_text(json.dumps(rows, indent=1))
    print(f"runs and bench.json in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
