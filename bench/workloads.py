"""What HE costs on a ResNet-sized workload, on this machine: `main.py local` with a CIFAR-format
tarball (written here in the official layout: no download), 4 clients under 2 adding switches, a
few rounds of `training.steps` batches, per scheme. Prints, per scheme, the seconds per round and
their split (training, crypto, transfer, waiting: rounds after the first), the bytes a client sends
per round, the HE error against plaintext FedAvg (saved models), and per role its idle RSS (its
worker's VmRSS just before the first client began round 1) and peak RSS (VmHWM), with the bound
the issue sets: idle + 1.5 x one encrypted update in memory (ciphertexts x 2 x N x data primes x 8
bytes).

    .venv/bin/python bench/workloads.py [--model resnet18] [--schemes none,ckks,bfv] [--rounds 2]
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._proc import sampled  # noqa: E402
from hefl.provenance import bench_line  # noqa: E402
from hefl.records import RunSummary  # noqa: E402
from hefl.results.report import read_logs  # noqa: E402


def cifar_tarball(folder: Path, train: int, test: int, seed: int = 0) -> Path:
    """cifar-10-python.tar.gz in the official layout (five training batches and a test batch,
    each a pickled dict of uint8 rows and labels), random images."""
    rng = np.random.default_rng(seed)
    path = folder / "cifar-10-python.tar.gz"
    sizes = [train // 5 + (i < train % 5) for i in range(5)]
    with tarfile.open(path, "w:gz") as tar:
        for name, n in [
            *((f"data_batch_{i + 1}", s) for i, s in enumerate(sizes)),
            ("test_batch", test),
        ]:
            batch = {
                b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"labels": [int(v) for v in rng.integers(0, 10, n)],
            }
            raw = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def config(scheme: str, model: str, data: Path, rounds: int, steps: int) -> dict[str, Any]:
    clients = [f"127.0.0.1:{100 + i}" for i in range(4)]
    switches = ["127.0.0.1:10", "127.0.0.1:11"]
    others: dict[str, Any] = {
        c: {"type": "client", "client_number": 4, "index": i, "send": switches[i // 2]}
        for i, c in enumerate(clients)
    }
    for j, s in enumerate(switches):
        kids = clients[2 * j : 2 * j + 2]
        others[s] = {"type": "switch", "receive": kids, "send": "127.0.0.1:1", "dumb": False}
    return {
        "name": f"workload-{scheme}",
        "aggregator": {"iteration": rounds, "ip": "127.0.0.1:1"},
        "others": others,
        "dataset": {"name": "cifar10", "path": str(data)},
        "model": {"name": model},
        "training": {"batch_size": 16, "steps": steps, "device": "cpu", "save_models": True},
        "encryption": {"scheme": scheme},
        "network": {"read_timeout_s": 900, "round_timeout_s": 3600},
    }


def in_memory_bytes(summary: RunSummary, params: int) -> float:
    """One encrypted update in memory: ciphertexts x 2 x N x data primes x 8 bytes (what the
    issue's bound counts), from the encryption in effect."""
    enc = summary.encryption
    n = int(enc.get("poly_modulus_degree") or 0)
    per = int(enc.get("values_per_ciphertext") or n)
    primes = int(enc.get("wire_primes") or 1)
    if not n or not per:
        return 0.0
    return -(-params // per) * 2 * n * primes * 8


def run(scheme: str, args: argparse.Namespace, data: Path, work: Path) -> None:
    cfg, log = work / f"{scheme}.json", work / f"log-{scheme}"
    cfg.write_text(json.dumps(config(scheme, args.model, data, args.rounds, args.steps)))
    command = [sys.executable, str(ROOT / "main.py"), "local", "--config", str(cfg)]
    code, wall, sampler = sampled([*command, "--log-dir", str(log)], work / f"{scheme}.out")
    if code:
        tail = (work / f"{scheme}.out").read_text(errors="replace").strip().splitlines()[-3:]
        print(f"{scheme}: the run failed ({code}): {' | '.join(tail)}")
        return
    exp = next(p for p in log.iterdir() if (p / "summary.json").is_file())
    summary = RunSummary.from_json(json.loads((exp / "summary.json").read_text()))
    logs = read_logs(exp)
    starts = [lg.iteration[0].start_time for lg in logs.values() if lg.role == "client"]
    start = min(s for s in starts if s is not None)
    from hefl.config import parse_config
    from hefl.modelspec import param_count

    parsed = parse_config(json.loads(cfg.read_text()))
    params = param_count(parsed.model, parsed.dataset)
    update = in_memory_bytes(summary, params)
    later = [r for r in summary.rounds if r.round > 0] or list(summary.rounds)
    secs = sum(r.round_s or 0 for r in later) / len(later)
    split: dict[str, float] = {}
    for r in later:
        for k, v in (r.critical_path.split if r.critical_path else {}).items():
            split[k] = split.get(k, 0.0) + (v or 0) / len(later)
    he = max((r.he_error.max_abs for r in summary.rounds if r.he_error), default=None)
    sent = max(
        (rec.byte_send_up for lg in logs.values() if lg.role == "client" for rec in lg.iteration),
        default=0,
    )
    print(
        f"{scheme:<5} {params:,} params: {secs:.2f} s/round (rounds 2+: "
        + ", ".join(f"{k} {v:.2f}" for k, v in split.items())
        + f"), a client sends {sent / 2**20:.1f} MiB up per round, HE error max "
        + ("n/a" if he is None else f"{he:.3g}")
        + f", final accuracy {summary.totals.final_accuracy}, wall {wall:.0f} s"
    )
    if update:
        print(f"      one encrypted update in memory: {update / 2**20:.0f} MiB")
    for node, usage in sorted(sampler.nodes.items()):
        role = logs[node].role if node in logs else "?"
        idle_kb = usage.rss_before(start)
        idle = None if idle_kb is None else idle_kb / 1024
        peak = usage.peak_kb / 1024
        # the bound is an adder's: a client's peak is its training's (its idle RSS is taken
        # before it trains), so a client's says only how much of the peak the update could be
        bound = None if idle is None or not update else idle + 1.5 * update / 2**20
        within = ""
        if bound is not None and role != "client":
            within = f", bound {bound:.0f} MiB: {'within' if peak <= bound else 'ABOVE'}"
        elif bound is not None:
            within = " (training's peak; the bound is for switches and the aggregator)"
        print(
            f"      {role:<10} {node:<15} idle {('n/a' if idle is None else f'{idle:.0f} MiB')}, "
            f"peak {peak:.0f} MiB{within}"
        )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="resnet18", choices=["resnet18", "resnet20", "nvflare_cnn"])
    p.add_argument("--schemes", default="none,ckks,bfv")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=1, help="training batches per round")
    p.add_argument("--images", type=int, default=400, help="training images in the tarball")
    args = p.parse_args()
    print(bench_line())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "cifar10"
        data.mkdir()
        cifar_tarball(data, args.images, max(40, args.images // 5))
        for scheme in args.schemes.split(","):
            run(scheme, args, data, work)


if __name__ == "__main__":
    main()
