"""What HE costs, measured: per scheme and parameter set, then one full local round by phase.

    .venv/bin/python bench/he.py [--size 1000000] [--skip-round]

Prints figures only (nothing is asserted): bytes/param on the wire, throughput of each primitive in
Mparam/s (encrypt, serialize, deserialize, add, decrypt), the max error after 10 and 100 sums; the
same for two baselines (the original study's one ciphertext per element, NVFlare's default CKKS
parameters); then one round of 4 clients / 2 switches / 1M-parameter synthetic model through real
node processes, its phases, and the ratio of its time to the crypto primitives on its critical path.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hefl.crypto.params import HeParams, batching_prime, lane_bits, slots  # noqa: E402
from hefl.crypto.quantize import dequantize_sum, pack, quantize, unpack  # noqa: E402
from hefl.crypto.tenseal.keys import keyless_part, new_context, with_scale  # noqa: E402


@dataclass
class Figures:
    name: str
    bytes_per_param: float
    rates: dict[str, float]  # Mparam/s per primitive
    err10: float
    err100: float


def mparams(size: int, *seconds: float) -> dict[str, float]:
    """Mparam/s of the five primitives, timed in this order."""
    names = ("encrypt", "serialize", "deserialize", "add", "decrypt")
    return {k: size / t / 1e6 for k, t in zip(names, seconds, strict=True)}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench_vectors(name: str, enc: HeParams, size: int) -> Figures:
    """One scheme and parameter set: the primitives on `size` values, chunked at the slot count."""
    ctx = new_context(enc)
    switch_ctx = with_scale(ts.context_from(keyless_part(ctx)), enc)
    n = slots(enc)
    values = np.random.default_rng(0).uniform(-enc.clip, enc.clip, size)
    rng = np.random.default_rng(1)
    bfv = enc.scheme == "bfv"
    lane, modulus = lane_bits(enc), batching_prime(enc.plain_modulus_bits, enc.poly_modulus_degree)
    make, load = (
        (ts.bfv_vector, ts.bfv_vector_from) if bfv else (ts.ckks_vector, ts.ckks_vector_from)
    )

    def encrypt(v: np.ndarray) -> list[Any]:
        if bfv:
            packed = pack(quantize(v, enc.clip, enc.quant_bits, rng), lane)
            return [
                make(ctx, packed[i : i + n // 2].tolist()) for i in range(0, len(packed), n // 2)
            ]
        return [make(ctx, v[i : i + n].tolist()) for i in range(0, size, n)]

    def decrypt(cts: list[Any], count: int) -> np.ndarray:
        if bfv:
            raw = np.concatenate(
                [
                    np.asarray(load(ctx, c.serialize()).decrypt(), dtype=object) % modulus
                    for c in cts
                ]
            )
            return dequantize_sum(
                unpack(raw.astype(np.int64), lane, size), enc.clip, enc.quant_bits, count
            )
        return np.concatenate([np.asarray(load(ctx, c.serialize()).decrypt()) for c in cts])

    cts, t_enc = timed(lambda: encrypt(values))
    blobs, t_ser = timed(lambda: [c.serialize() for c in cts])
    loaded, t_de = timed(lambda: [load(switch_ctx, b) for b in blobs])
    other = [load(switch_ctx, c.serialize()) for c in encrypt(values)]
    _, t_add = timed(lambda: [a.add_(b) for a, b in zip(loaded, other, strict=True)])
    _, t_dec = timed(lambda: [c.decrypt() for c in cts])
    rates = mparams(size, t_enc, t_ser, t_de, t_add, t_dec)
    errs = []
    small = values[: min(size, 4 * n)]
    for count in (10, 100):
        parts = [
            np.random.default_rng(10 + i).uniform(-enc.clip, enc.clip, len(small))
            for i in range(count)
        ]
        sub = replace(enc)
        total = None
        for p in parts:
            c = encrypt_small(sub, ctx, p, rng)
            total = c if total is None else [a + b for a, b in zip(total, c, strict=True)]
        assert total is not None
        got = decrypt_small(sub, ctx, total, len(small), count)
        errs.append(float(np.abs(got - np.sum(parts, axis=0)).max()))
    wire = sum(len(b) for b in blobs) / size
    return Figures(name, wire, rates, errs[0], errs[1])


def encrypt_small(enc: HeParams, ctx: Any, v: np.ndarray, rng: np.random.Generator) -> list[Any]:
    n = slots(enc)
    if enc.scheme == "bfv":
        packed = pack(quantize(v, enc.clip, enc.quant_bits, rng), lane_bits(enc))
        return [
            ts.bfv_vector(ctx, packed[i : i + n // 2].tolist())
            for i in range(0, len(packed), n // 2)
        ]
    return [ts.ckks_vector(ctx, v[i : i + n].tolist()) for i in range(0, len(v), n)]


def decrypt_small(enc: HeParams, ctx: Any, cts: list[Any], size: int, count: int) -> np.ndarray:
    if enc.scheme == "bfv":
        modulus = batching_prime(enc.plain_modulus_bits, enc.poly_modulus_degree)
        raw = np.concatenate([np.asarray(c.decrypt(), dtype=object) % modulus for c in cts]).astype(
            np.int64
        )
        return dequantize_sum(unpack(raw, lane_bits(enc), size), enc.clip, enc.quant_bits, count)
    return np.concatenate([np.asarray(c.decrypt()) for c in cts])


def bench_per_element(shape: tuple[int, int] = (8, 8)) -> Figures:
    """The original study's way: one CKKS ciphertext per weight (tutorial parameters 8192
    [60,40,40,60])."""
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 40, 60]
    )
    ctx.global_scale = 2.0**40
    m = np.random.default_rng(0).uniform(-1, 1, shape)
    size = m.size
    cts, t_enc = timed(lambda: [ts.ckks_vector(ctx, [float(x)]) for x in m.ravel()])
    blobs, t_ser = timed(lambda: [c.serialize() for c in cts])
    loaded, t_de = timed(lambda: [ts.ckks_vector_from(ctx, b) for b in blobs])
    _, t_add = timed(lambda: [a.add_(b) for a, b in zip(loaded, cts, strict=True)])
    _, t_dec = timed(lambda: [c.decrypt() for c in cts])
    rates = mparams(size, t_enc, t_ser, t_de, t_add, t_dec)
    per_param = sum(len(b) for b in blobs) / size
    return Figures(
        f"per-element ckks_vector, 8192 [60,40,40,60] ({shape[0]}x{shape[1]})",
        per_param,
        rates,
        float("nan"),
        float("nan"),
    )


def bench_processes(size: int) -> None:
    """A client's whole encrypt (quantize, encrypt, serialize, frame), 1 process and 1 per core."""
    import os

    from hefl.crypto import generate_keys, load_secret, make_scheme

    values = np.random.default_rng(5).uniform(-1, 1, size)
    cores = os.cpu_count() or 1
    for scheme in ("ckks", "bfv"):
        line = []
        for processes in sorted({1, cores}):
            with tempfile.TemporaryDirectory() as tmp:
                enc = HeParams(scheme=scheme, processes=processes)
                generate_keys(enc, Path(tmp))
                client = make_scheme(enc, size, load_secret(enc, Path(tmp)), seed=1)
                client.encrypt(values)  # starts the workers
                _, t = timed(lambda: client.encrypt(values))  # noqa: B023
                client.close()
            line.append(f"{processes} process(es) {size / t / 1e6:.2f} Mparam/s")
        print(f"{scheme} client encrypt of {size:,} values: " + ", ".join(line))


def print_table(rows: list[Figures]) -> None:
    keys = ["encrypt", "serialize", "deserialize", "add", "decrypt"]
    print(
        f"{'scheme / parameters':<52}{'B/param':>9}"
        + "".join(f"{k:>12}" for k in keys)
        + f"{'err@10':>10}{'err@100':>10}"
    )
    for r in rows:
        print(
            f"{r.name:<52}{r.bytes_per_param:>9.2f}"
            + "".join(f"{r.rates[k]:>12.2f}" for k in keys)
            + f"{r.err10:>10.1e}{r.err100:>10.1e}"
        )
    print(
        "(throughputs in Mparam/s, one core; errors: max |decrypted sum - true sum| over values "
        "in [-clip, clip])"
    )


# ------------------------------------------------------------ one full round through real processes


def round_config(scheme: str, features: int, hidden: int) -> dict[str, Any]:
    clients = [f"127.0.0.1:{100 + i}" for i in range(4)]
    switches = ["127.0.0.1:10", "127.0.0.1:11"]
    others: dict[str, Any] = {}
    for i, c in enumerate(clients):
        others[c] = {"type": "client", "client_number": 4, "index": i, "send": switches[i // 2]}
    for j, s in enumerate(switches):
        others[s] = {
            "type": "switch",
            "receive": clients[2 * j : 2 * j + 2],
            "send": "127.0.0.1:1",
            "dumb": False,
        }
    return {
        "name": f"bench-{scheme}",
        "aggregator": {"iteration": 2, "ip": "127.0.0.1:1"},
        "others": others,
        "dataset": {"name": "synthetic", "samples": 400, "features": features, "classes": 10},
        "model": {"name": "mlp", "hidden": [hidden]},
        "training": {"epochs": 1, "batch_size": 50, "device": "cpu"},
        "encryption": {"scheme": scheme},
        "network": {"read_timeout_s": 300},
    }


def full_round(
    scheme: str, figures: Figures | None, params: int, features: int, hidden: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config.json"
        cfg.write_text(json.dumps(round_config(scheme, features, hidden)))
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "main.py"),
                "local",
                "--config",
                str(cfg),
                "--log-dir",
                str(Path(tmp) / "log"),
            ],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=ROOT,
        )
        if proc.returncode:
            print(f"{scheme}: the round failed: {proc.stderr.strip()[-500:]}")
            return
        exp = next(p for p in (Path(tmp) / "log").iterdir() if p.is_dir())
        logs = {
            d["node"]: d
            for d in (json.loads(p.read_text()) for p in exp.glob("*.json"))
            if "node" in d
        }
    r = 1  # the second round: the first one pays for connection set-up
    agg = next(d for d in logs.values() if d["role"] == "aggregator")["iteration"][r]
    print(
        f"\n{scheme}: {params:,} parameters, round {r + 1} of 2: "
        f"{agg['duration_s']:.2f} s at the aggregator"
    )
    for role in ("client", "switch", "aggregator"):
        recs = [d["iteration"][r] for d in logs.values() if d["role"] == role]
        phases: dict[str, float] = {}
        for rec in recs:
            for k, v in rec["phases"].items():
                phases[k] = phases.get(k, 0.0) + v / len(recs)
        sent = sum(x["byte_send"] for x in recs) / len(recs)
        got = sum(x["byte_received"] for x in recs) / len(recs)
        msgs = sum(x["messages_sent"] for x in recs) / len(recs)
        line = ", ".join(f"{k} {v:.3f}" for k, v in sorted(phases.items()))
        print(
            f"  {role:<10} mean s: {line}; sent {sent / 1e6:.2f} MB in {msgs:.0f} messages, "
            f"received {got / 1e6:.2f} MB"
        )
        if figures is not None:
            payloads = {"client": 1, "switch": 3, "aggregator": 2}[
                role
            ]  # update messages each sends per round
            expected = figures.bytes_per_param * params * payloads
            print(
                f"  {'':<10} bytes sent / (bytes/param x params x {payloads} update messages): "
                f"{sent / expected:.3f}"
            )
    if figures is not None:
        rate = figures.rates
        # one client encrypts and serializes; each level loads its 2 children's payloads, adds,
        # serializes; the client loads and decrypts the result
        critical = (
            params
            * (
                1 / rate["encrypt"]
                + 3 / rate["serialize"]
                + 5 / rate["deserialize"]
                + 2 / rate["add"]
                + 1 / rate["decrypt"]
            )
            / 1e6
        )
        print(
            f"  crypto primitives on the critical path (client encrypt+serialize; switch and "
            f"aggregator: 2 loads, add, serialize; client load+decrypt): {critical:.2f} s; "
            f"round / primitives = {agg['duration_s'] / critical:.2f}"
        )


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--size", type=int, default=1_000_000, help="values per update in the primitive benchmark"
    )
    p.add_argument("--skip-round", action="store_true", help="only the primitives")
    args = p.parse_args()
    print(f"tenseal {ts.__version__}, numpy {np.__version__}, {args.size:,} values per update\n")
    sets = [
        ("ckks 4096 [40,20] 2^30 (default)", HeParams(scheme="ckks")),
        (
            "ckks 8192 [60,40,40,60] 2^40 (tutorial)",
            HeParams(
                scheme="ckks",
                poly_modulus_degree=8192,
                coeff_mod_bit_sizes=(60, 40, 40, 60),
                scale_bits=40,
            ),
        ),
        (
            "ckks 8192 [60,40,40] 2^40 (NVFlare default)",
            HeParams(
                scheme="ckks",
                poly_modulus_degree=8192,
                coeff_mod_bit_sizes=(60, 40, 40),
                scale_bits=40,
            ),
        ),
        ("bfv 4096 [60,20] t~2^47, 16-bit x2 (default)", HeParams(scheme="bfv")),
    ]
    rows = [bench_vectors(name, enc, args.size) for name, enc in sets]
    rows.append(bench_per_element())
    print_table(rows)
    print(
        f"(one ciphertext per weight, as the original study did: a 32x144 weight matrix is "
        f"{rows[-1].bytes_per_param * 32 * 144 / 1e9:.2f} GB on the wire)"
    )
    bench_processes(args.size)
    if args.skip_round:
        return 0
    features, hidden = 1000, 990  # 1000*990 + 990 + 990*10 + 10 = 1,000,900 parameters
    params = features * hidden + hidden + hidden * 10 + 10
    by_scheme = {"none": None, "ckks": rows[0], "bfv": rows[3]}
    for scheme, figures in by_scheme.items():
        full_round(scheme, figures, params, features, hidden)
    return 0


if __name__ == "__main__":
    sys.exit(main())
