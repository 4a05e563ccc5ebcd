"""What HE costs, measured on the project's own schemes, then through real node processes.

    .venv/bin/python bench/he.py [--size N] [--hidden H] [--repeat N]
                [--only primitives|rounds|memory|backends|hops] [--skip-round (= --only primitives)]

Prints figures only (nothing is asserted). At the top: the machine (cores, CPU model, load average),
the tenseal and numpy versions and the commit measured ("dirty" when the checkout has changes), so
that two outputs can be told apart.

primitives: per parameter set, the schemes of hefl.crypto (make_scheme, keys from generate_keys: a
client's secret ring, a switch's keyless one) on --size values, in this process:
  B/param        bytes of one client payload on the wire / values;
  encrypt        a client's `encrypt`: values -> framed bytes (bfv: quantize and pack first);
  load           a switch's `load` of one payload: unframe, deserialize, check every ciphertext;
  add            a switch adding 2 loaded payloads into one framed body (serializing included);
  load+decrypt   a client's `load` of that body and `decrypt` (bfv: unpack and dequantize);
  each as Mparam/s (values per wall second) and cpu% (CPU seconds of this process and its children
  / wall seconds: near 100% is computing; below it, waiting or sharing the cores with others);
  err@10/@100    max |decrypted sum - float64 sum| of 10 / 100 random updates in [-clip, clip], 4
                 ciphertexts' worth each, added by a switch's scheme.
  The per-element row is the original study's way (one ciphertext per weight, TenSEAL directly).
  Then a client's encrypt with encryption.processes 1 and one per core, wall and CPU seconds.
rounds: `main.py local`, 4 clients / 2 adding switches / the ~1M-parameter synthetic MLP, 2 rounds,
  per scheme (none, ckks, bfv). Round 2 (the first pays for connection set-up) per role: the mean
  wall seconds of each logged phase (and its CPU seconds, where the logs have `phases_cpu`), bytes
  sent / (bytes/param x parameters x update messages), and the round's time / the primitives on its
  critical path; per node (its processes: the node's, its gunicorn worker, any encrypting workers):
  CPU seconds over the whole run and peak RSS (VmHWM); where clients precomputed encryptions of
  zero, how many of their update's ciphertexts used one. --repeat N runs each scheme N times
  (interleaved) and prints every round time and their median: on a shared 2-core machine one run
  can be 30% off the next. Uses only main.py local, the node logs and /proc, so this file measures
  older commits unchanged (--only rounds or --only memory), given hefl/records.py (which reads
  the logs of every version) and hefl/errors.py, its one import, copied into the older checkout.
hops: bytes per parameter on each hop (a client's update, an adding switch's sum of 2 children, the
  global result of 4 clients) for every scheme and backend installed, seeded and not, and the forms
  they travel in (full, seeded, seed_list): the schemes in this process, no nodes.
memory: 4 clients -> 1 adding switch -> aggregator, 2 rounds, per scheme: the switch's peak RSS
  (VmHWM of its largest process, the gunicorn worker), that process's RSS before any update arrived
  (sampled just before the first client began round 1; keys and scheme already loaded) and the
  difference, what adding 4 children's updates costs; the aggregator's peak beside it. Last
  line: "an adder's peak RSS for 4 children of a 1M-parameter CKKS update", the figure to cut.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import tenseal as ts

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._proc import NodeUsage, children_cpu, sampled  # noqa: E402
from hefl.argtypes import int_in  # noqa: E402

if TYPE_CHECKING:
    from hefl.crypto.params import HeParams
    from hefl.records import NodeLog, RoundRecord

T = TypeVar("T")
PRIMITIVES = ("encrypt", "load", "add", "load+decrypt")
ROLES = ("client", "switch", "aggregator")
UPDATES = dict(zip(ROLES, (1, 3, 2), strict=True))  # update messages a role's nodes send a round
FEATURES = 1000  # synthetic inputs; with --hidden 990: 1000*990 + 990 + 990*10 + 10 = 1,000,900


# -------------------------------------------------------------------------------------- primitives


@dataclass(frozen=True)
class Timing:
    wall: float
    cpu: float  # this process and its children (an encrypting pool's workers)


def timed(fn: Callable[[], T]) -> tuple[T, Timing]:
    """Run `fn` once: its result, wall seconds (perf_counter) and CPU seconds (process_time, all
    threads, plus the children's from /proc; reading /proc stays outside both clocks)."""
    children = children_cpu()
    cpu0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    # a child that ended in between counts nothing (its last seconds are lost, none are negative)
    cpu += sum(v - children.get(pid, 0.0) for pid, v in children_cpu().items())
    return out, Timing(wall, cpu)


@dataclass
class Figures:
    name: str
    size: int  # values the primitives were timed on
    bytes_per_param: float
    times: dict[str, Timing]  # per primitive
    err10: float = float("nan")
    err100: float = float("nan")

    def rate(self, primitive: str) -> float:
        """Mparam/s of one primitive."""
        return self.size / self.times[primitive].wall / 1e6


def add_payloads(scheme: Any, loaded: list[Any]) -> bytes:
    """A switch's add of loaded payloads into one body, as its adder does: each into a running total
    (`add_into`), then `serialize`. Commits before the running total had `add(list)` instead: kept
    so that this bench measures them too (before/after comparisons)."""
    if hasattr(scheme, "add_into"):
        total = None
        for item in loaded:
            total = scheme.add_into(total, item)
        body = scheme.serialize(total)
    else:
        body = scheme.add(loaded)
    assert isinstance(body, bytes)
    return body


def key_rings(enc: HeParams) -> tuple[Any, Any]:
    """A client's secret key ring and a switch's keyless one, from freshly generated keys."""
    from hefl.crypto import generate_keys, load_keyless, load_secret, read_keyless

    with tempfile.TemporaryDirectory() as tmp:
        generate_keys(enc, Path(tmp))
        return load_secret(enc, Path(tmp)), load_keyless(enc, read_keyless(enc, Path(tmp)))


def sum_error(enc: HeParams, secret: Any, keyless: Any, size: int, count: int) -> float:
    """Max error of `count` random updates of `size` values, added by a switch's scheme."""
    from hefl.crypto import make_scheme

    client = make_scheme(enc, size, secret, seed=2)
    switch = make_scheme(enc, size, keyless)
    rng = np.random.default_rng(10 + count)
    parts = [rng.uniform(-enc.clip, enc.clip, size) for _ in range(count)]
    body = add_payloads(switch, [switch.load(client.encrypt(p)) for p in parts])
    got = client.decrypt(client.load(body), count)
    client.close()
    return float(np.abs(got - np.sum(parts, axis=0)).max())


def bench_scheme(name: str, enc: HeParams, size: int) -> Figures:
    """One parameter set: the four primitives on `size` values, then the errors of 10 and 100
    sums."""
    from hefl.crypto import make_scheme
    from hefl.crypto.params import slots

    secret, keyless = key_rings(enc)
    client = make_scheme(enc, size, secret, seed=1)
    switch = make_scheme(enc, size, keyless)
    rng = np.random.default_rng(0)
    mine, theirs = (rng.uniform(-enc.clip, enc.clip, size) for _ in range(2))
    times: dict[str, Timing] = {}
    payload, times["encrypt"] = timed(lambda: client.encrypt(mine))
    other = switch.load(client.encrypt(theirs))
    loaded, times["load"] = timed(lambda: switch.load(payload))
    body, times["add"] = timed(lambda: add_payloads(switch, [loaded, other]))
    _, times["load+decrypt"] = timed(lambda: client.decrypt(client.load(body), 2))
    client.close()
    small = min(size, 4 * slots(enc))
    errs = [sum_error(enc, secret, keyless, small, count) for count in (10, 100)]
    return Figures(name, size, len(payload) / size, times, *errs)


def bench_per_element(shape: tuple[int, int] = (8, 8)) -> Figures:
    """The original study's way: one CKKS ciphertext per weight (tutorial parameters 8192
    [60,40,40,60]), timed as the same four primitives."""
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 40, 60]
    )
    ctx.global_scale = 2.0**40
    rng = np.random.default_rng(0)
    mine, theirs = (rng.uniform(-1, 1, shape).ravel() for _ in range(2))

    def encrypt(m: np.ndarray) -> list[bytes]:
        return [ts.ckks_vector(ctx, [float(x)]).serialize() for x in m]

    def load(blobs: list[bytes]) -> list[Any]:
        return [ts.ckks_vector_from(ctx, b) for b in blobs]

    times: dict[str, Timing] = {}
    blobs, times["encrypt"] = timed(lambda: encrypt(mine))
    other = load(encrypt(theirs))
    loaded, times["load"] = timed(lambda: load(blobs))
    sums, times["add"] = timed(
        lambda: [a.add_(b).serialize() for a, b in zip(loaded, other, strict=True)]
    )
    _, times["load+decrypt"] = timed(lambda: [v.decrypt() for v in load(sums)])
    return Figures(
        f"per-element ckks_vector, 8192 [60,40,40,60] ({shape[0]}x{shape[1]})",
        len(mine),
        sum(len(b) for b in blobs) / len(mine),
        times,
    )


def bench_processes(size: int) -> None:
    """A client's whole encrypt with 1 process and with 1 per core (CPU: the workers' too)."""
    from hefl.crypto import HeParams, make_scheme

    values = np.random.default_rng(5).uniform(-1, 1, size)
    cores = os.cpu_count() or 1
    for scheme in ("ckks", "bfv"):
        line = []
        for processes in sorted({1, cores}):
            enc = HeParams(scheme=scheme, processes=processes)
            client = make_scheme(enc, size, key_rings(enc)[0], seed=1)
            client.encrypt(values)  # starts the workers
            _, t = timed(lambda: client.encrypt(values))  # noqa: B023
            client.close()
            line.append(
                f"{processes} process(es) {size / t.wall / 1e6:.2f} Mparam/s "
                f"({t.wall:.2f} s wall, {t.cpu:.2f} s CPU)"
            )
        print(f"{scheme} client encrypt of {size:,} values: " + "; ".join(line))


def print_table(rows: list[Figures]) -> None:
    print(
        f"{'scheme / parameters':<50}{'B/param':>11}"
        + "".join(f"{k:>14}" for k in PRIMITIVES)
        + f"{'err@10':>9}{'err@100':>9}"
    )
    print(f"{'':<61}" + f"{'Mp/s  cpu%':>14}" * len(PRIMITIVES))
    for r in rows:
        cells = "".join(
            f"{rate(r.rate(k))}{100 * r.times[k].cpu / r.times[k].wall:>5.0f}" for k in PRIMITIVES
        )
        print(f"{r.name:<50}{r.bytes_per_param:>11,.2f}{cells}{r.err10:>9.1e}{r.err100:>9.1e}")
    print(
        "(Mp/s: Mparam/s, one process; cpu%: CPU / wall seconds; add: 2 payloads into one body; "
        "errors: max |decrypted sum - true sum| over values in [-clip, clip])"
    )


def rate(mparams: float) -> str:
    return f"{mparams:>9.2f}" if mparams >= 0.01 else f"{mparams:>9.1e}"


def primitives(size: int) -> dict[str, Figures]:
    """The primitive table and the processes line; the figures the round section compares with."""
    from hefl.crypto import HeParams

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
    rows = [bench_scheme(name, enc, size) for name, enc in sets]
    rows.append(bench_per_element())
    print(f"primitives on {size:,} values (the per-element row: {rows[-1].size})")
    print_table(rows)
    print(
        f"(one ciphertext per weight, as the original study did: a 32x144 weight matrix is "
        f"{rows[-1].bytes_per_param * 32 * 144 / 1e9:.2f} GB on the wire)"
    )
    bench_processes(size)
    return {"ckks": rows[0], "bfv": rows[3]}


# --------------------------------------------------------------- runs of main.py local, with /proc


@dataclass
class LocalRun:
    logs: dict[str, NodeLog]  # node id -> its log
    usage: dict[str, NodeUsage]  # node id -> its processes
    wall_s: float
    error: str = ""


def run_local(config: dict[str, Any], timeout_s: float = 900.0) -> LocalRun:
    """`main.py local` on `config`, sampled every SAMPLE_S; the node logs once it ended."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg, log, out = Path(tmp) / "config.json", Path(tmp) / "log", Path(tmp) / "local.out"
        cfg.write_text(json.dumps(config))
        command = [sys.executable, str(ROOT / "main.py"), "local", "--config", str(cfg)]
        command += ["--log-dir", str(log)]
        code, wall, sampler = sampled(command, out, timeout_s)
        if code:
            tail = out.read_text(errors="replace").strip()[-500:]
            return LocalRun({}, sampler.nodes, wall, f"exit code {code}: {tail}")
        logs = node_logs(next(p for p in log.iterdir() if p.is_dir()))
    return LocalRun(logs, sampler.nodes, wall)


def node_logs(exp: Path) -> dict[str, NodeLog]:
    """Every node log in a run folder, by node id (its other JSON files skipped). Read with
    hefl.records on use: the primitives need none of it."""
    from hefl.records import LogFormatError, NodeLog

    logs = {}
    for path in exp.glob("*.json"):
        try:
            found = NodeLog.from_json(json.loads(path.read_text()))
        except LogFormatError:
            continue
        logs[found.node] = found
    return logs


def topology(scheme: str, features: int, hidden: int, switches: int) -> dict[str, Any]:
    """4 clients split evenly over `switches` adding switches, under one aggregator; 2 rounds."""
    clients = [f"127.0.0.1:{100 + i}" for i in range(4)]
    ids = [f"127.0.0.1:{10 + j}" for j in range(switches)]
    per = len(clients) // switches
    others: dict[str, Any] = {}
    for i, c in enumerate(clients):
        others[c] = {"type": "client", "client_number": 4, "index": i, "send": ids[i // per]}
    for j, s in enumerate(ids):
        others[s] = {
            "type": "switch",
            "receive": clients[per * j : per * (j + 1)],
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


def parameters(features: int, hidden: int) -> int:
    return features * hidden + hidden + hidden * 10 + 10


def records(logs: dict[str, NodeLog], role: str, r: int) -> list[RoundRecord]:
    """Round `r`'s record of every node of a role, in node order."""
    return [log.iteration[r] for _, log in sorted(logs.items()) if log.role == role]


def seconds(rec: RoundRecord) -> float:
    """A round's duration on its node (nan where its log has none)."""
    return float("nan") if rec.duration_s is None else rec.duration_s


def mean_phases(phases: list[Mapping[str, float]]) -> dict[str, float]:
    """Seconds per phase, as a mean over the records' phases (wall or CPU)."""
    out: dict[str, float] = {}
    for found in phases:
        for k, v in found.items():
            out[k] = out.get(k, 0.0) + v / len(phases)
    return out


# ---------------------------------------------------------------------------------------- rounds


def print_role(role: str, recs: list[RoundRecord], params: int, fig: Figures | None) -> None:
    """Round 2 of one role: phases (wall, CPU where logged), bytes, and the bytes check."""
    wall = mean_phases([rec.phases for rec in recs])
    cpu = mean_phases([rec.phases_cpu for rec in recs])
    line = ", ".join(
        f"{k} {wall.get(k, 0.0):.3f}" + (f" (cpu {cpu[k]:.3f})" if k in cpu else "")
        for k in sorted(wall.keys() | cpu.keys())
    )
    sent = sum(x.byte_send for x in recs) / len(recs)
    got = sum(x.byte_received for x in recs) / len(recs)
    msgs = sum(x.messages_sent for x in recs) / len(recs)
    print(
        f"  {role:<10} mean s: {line}; sent {sent / 1e6:.2f} MB in {msgs:.0f} messages, "
        f"received {got / 1e6:.2f} MB"
    )
    made = [x.precomputed for x in recs if x.precomputed is not None]
    if made:
        print(
            f"  {'':<10} ciphertexts encrypted onto precomputed zeros (of the update's): "
            + " ".join(str(n) for n in made)
        )
    if fig is not None:
        payloads = UPDATES[role]
        expected = fig.bytes_per_param * params * payloads
        print(
            f"  {'':<10} bytes sent / (bytes/param x params x {payloads} update messages): "
            f"{sent / expected:.3f}"
        )


def critical_path_s(fig: Figures, params: int) -> float:
    """Seconds of the primitives one update waits for, in order: a client encrypts; its switch loads
    its 2 children's payloads and adds them (the body serialized); the aggregator loads its 2
    switches' bodies and adds them; a client loads that global body (relayed unchanged) and
    decrypts it. Loads run as updates arrive: some overlap with waiting, counted whole here."""
    per_value = (
        1 / fig.rate("encrypt")
        + 4 / fig.rate("load")
        + 2 / fig.rate("add")
        + 1 / fig.rate("load+decrypt")
    )
    return params * per_value / 1e6


def print_usage(run: LocalRun) -> None:
    """Per node: CPU seconds over the whole run (start-up included) and peak RSS."""
    role_of = {node: log.role for node, log in run.logs.items()}
    for role in ROLES:
        nodes = sorted(n for n in run.usage if role_of.get(n) == role)
        cpu = " ".join(f"{run.usage[n].cpu_s:.1f}" for n in nodes)
        peak = " ".join(f"{run.usage[n].peak_kb / 1024:.0f}" for n in nodes)
        print(f"  {role:<10} per node, whole run: CPU s {cpu}; peak RSS MB {peak}")
    total = sum(u.cpu_s for u in run.usage.values())
    print(
        f"  all {len(run.usage)} nodes: {total:.1f} CPU s in {run.wall_s:.1f} s of wall "
        f"({total / run.wall_s:.2f} cores busy on average, {os.cpu_count()} cores)"
    )


def full_round(scheme: str, fig: Figures | None, features: int, hidden: int) -> float | None:
    """One run, printed in full; returns its round time at the aggregator."""
    params = parameters(features, hidden)
    run = run_local(topology(scheme, features, hidden, switches=2))
    if run.error:
        print(f"\n{scheme}: the run failed: {run.error}")
        return None
    r = 1  # the second round: the first one pays for connection set-up
    agg = records(run.logs, "aggregator", r)[0]
    print(
        f"\n{scheme}: {params:,} parameters, round {r + 1} of 2: "
        f"{seconds(agg):.2f} s at the aggregator"
    )
    for role in ROLES:
        print_role(role, records(run.logs, role, r), params, fig)
    if fig is not None:
        critical = critical_path_s(fig, params)
        print(
            f"  crypto primitives on the critical path (client encrypt; switch: 2 loads, add; "
            f"aggregator: 2 loads, add; client load+decrypt): {critical:.2f} s; "
            f"round / primitives = {seconds(agg) / critical:.2f}"
        )
    print_usage(run)
    return seconds(agg)


def round_time(scheme: str, features: int, hidden: int) -> float | None:
    """One more run of a scheme, for its round time only."""
    run = run_local(topology(scheme, features, hidden, switches=2))
    return None if run.error else seconds(records(run.logs, "aggregator", 1)[0])


def rounds(figures: dict[str, Figures], features: int, hidden: int, repeat: int) -> None:
    print(
        f"\nrounds: main.py local, 4 clients, 2 adding switches, aggregator, "
        f"{parameters(features, hidden):,}-parameter synthetic MLP, 2 rounds"
    )
    times: dict[str, list[float]] = {}
    for scheme in ("none", "ckks", "bfv"):
        first = full_round(scheme, figures.get(scheme), features, hidden)
        times[scheme] = [] if first is None else [first]
    for _ in range(repeat - 1):  # interleaved, so that a busy minute of the machine hits all
        for scheme in times:
            more = round_time(scheme, features, hidden)
            if more is not None:
                times[scheme].append(more)
    if repeat > 1:
        print(f"\nround 2 at the aggregator over {repeat} runs (s):")
        for scheme, found in times.items():
            print(
                f"  {scheme:<5} median {statistics.median(found):.2f}: "
                + " ".join(f"{t:.2f}" for t in found)
            )


# ---------------------------------------------------------------------------------------- memory


def first_client_start(logs: dict[str, NodeLog]) -> float | None:
    """When the first client began round 1 (time.time()): after every node was configured and
    before any update was sent."""
    starts = [
        start
        for log in logs.values()
        if log.role == "client" and log.iteration
        if (start := log.iteration[0].start_time) is not None
    ]
    return min(starts) if starts else None


def adder_memory(scheme: str, features: int, hidden: int) -> tuple[float, float | None] | None:
    """One run with a single adding switch; prints its memory, returns its peak RSS and its RSS
    before the first update (MB)."""
    run = run_local(topology(scheme, features, hidden, switches=1))
    if run.error:
        print(f"  {scheme}: the run failed: {run.error}")
        return None
    node = {log.role: n for n, log in run.logs.items()}
    switch, agg = run.usage[node["switch"]], run.usage[node["aggregator"]]
    start = first_client_start(run.logs)
    before_kb = switch.rss_before(start) if start is not None else None
    before = None if before_kb is None else before_kb / 1024
    peak = switch.peak_kb / 1024
    print(
        f"  {scheme:<5} switch: before the first update {mb(before)}, peak (VmHWM) {peak:.0f} MB, "
        f"peak - before {mb(None if before is None else peak - before)}; "
        f"aggregator (1 child) peak {agg.peak_kb / 1024:.0f} MB"
    )
    return peak, before


def mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} MB"


def memory(features: int, hidden: int) -> None:
    params = parameters(features, hidden)
    print(
        f"\nmemory: 4 clients -> 1 adding switch -> aggregator, {params:,} parameters, 2 rounds "
        f"(before: the VmRSS of the switch's worker just before the first client began round 1)"
    )
    found = {scheme: adder_memory(scheme, features, hidden) for scheme in ("none", "ckks", "bfv")}
    ckks = found["ckks"]
    if ckks is not None:
        peak, before = ckks
        print(
            f"an adder's peak RSS for 4 children of a {params:,}-parameter CKKS update: "
            f"{peak:.0f} MB (before the first update {mb(before)}, "
            f"the updates' share {mb(None if before is None else peak - before)})"
        )


# ---------------------------------------------------------------------------------------- header


def backend_rows() -> list[tuple[str, HeParams]]:
    """The libraries side by side: (row name, parameters); Paillier's lanes leave room for 8
    clients (the default experiment's). Made on use: older commits have no backends."""
    from hefl.crypto.params import HeParams

    return [
        ("tenseal ckks 4096 [40,20] 2^30", HeParams(scheme="ckks")),
        ("seal    ckks 4096 [40,20] 2^30 seeded", HeParams(scheme="ckks", backend="seal")),
        ("seal    ckks 4096 [40,20] 2^30 full", HeParams("ckks", "seal", seeded=False)),
        ("tenseal bfv 4096 [60,20] t~2^47", HeParams(scheme="bfv")),
        ("seal    bfv 4096 [60,20] t~2^47 seeded", HeParams(scheme="bfv", backend="seal")),
        ("seal    bfv 4096 [60,20] t~2^47 full", HeParams("bfv", "seal", seeded=False)),
        ("phe     paillier 2048-bit, 8 clients", HeParams(scheme="paillier", clients=8)),
    ]


STEPS = ("encrypt", "serialize", "deserialize", "add", "decrypt")


def available(enc: HeParams) -> str:
    """'' when the library of `enc` is installed here, else what is missing."""
    from hefl.crypto import require
    from hefl.errors import ConfigError

    try:
        require(enc)
    except ConfigError as exc:
        return str(exc)
    return ""


@dataclass
class BackendRow:
    name: str
    size: int
    wire: float  # B/param as sent
    raw: float  # B/param as the library serializes (SEAL-Python: before zstd)
    times: dict[str, Timing]  # per step (the table shows wall seconds)
    err10: float
    err100: float
    secret_bytes: int  # the client's secret file
    pushed_bytes: int  # what switches and the aggregator get (keyless.ctx)


def bench_backend(name: str, enc: HeParams, size: int) -> BackendRow:
    """The five steps on `size` values, in this process (one core): a client encrypts (values ->
    ciphertexts in memory) and serializes; a switch deserializes and checks one payload, and adds
    one loaded payload into another; a client decrypts the loaded sum (unpacking included)."""
    from hefl.crypto import generate_keys, load_keyless, load_secret, make_scheme, read_keyless
    from hefl.crypto.frame import unframe
    from hefl.crypto.keydir import KEYLESS, SECRET
    from hefl.crypto.params import slots

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        generate_keys(enc, folder)
        secret, keyless = load_secret(enc, folder), load_keyless(enc, read_keyless(enc, folder))
        sizes = (folder / SECRET).stat().st_size, (folder / KEYLESS).stat().st_size
    client = make_scheme(enc, size, secret, seed=1)
    switch = make_scheme(enc, size, keyless)
    rng = np.random.default_rng(0)
    mine, theirs = (rng.uniform(-enc.clip, enc.clip, size) for _ in range(2))
    t: dict[str, Timing] = {}
    parts, t["encrypt"] = timed(lambda: client.encrypt_parts(mine))
    payload, t["serialize"] = timed(lambda: client.serialize(parts))
    raw = len(payload)
    if enc.backend == "seal" and enc.scheme != "paillier":
        import seal

        def unzipped(part: Any) -> int:  # a seeded ciphertext dumps itself (c0 and the seed)
            if hasattr(part, "seed"):
                return len(part.dump())
            return len(part.to_string(seal.compr_mode_type.none))

        raw = sum(unzipped(p) for p in parts) + 4 * len(parts) + 8
    other = switch.load(client.encrypt(theirs))
    loaded, t["deserialize"] = timed(lambda: switch.load(payload))
    total, t["add"] = timed(lambda: switch.add_into(other, loaded))
    summed = client.load(switch.serialize(total))
    _, t["decrypt"] = timed(lambda: client.decrypt(summed, 2))
    assert len(list(unframe(payload, client.chunks))) == client.chunks  # type: ignore[attr-defined]
    small = min(size, 4 * slots(enc))
    # Paillier's lanes must have room for the 100 contributors of the second sum
    wide = replace(enc, clients=100) if enc.scheme == "paillier" else enc
    errs = [sum_error(wide, secret, keyless, small, count) for count in (10, 100)]
    return BackendRow(name, size, len(payload) / size, raw / size, t, errs[0], errs[1], *sizes)


def backend_round(enc: HeParams, hidden: int) -> str:
    """One full local round (the second of 2) through real processes: 4 clients, 2 adding
    switches, the synthetic MLP with `hidden` units."""
    config = topology(enc.scheme, FEATURES, hidden, switches=2)
    config["encryption"] = {"scheme": enc.scheme, "backend": enc.backend, "seeded": enc.seeded}
    run = run_local(config)
    if run.error:
        return f"failed: {run.error}"
    agg = records(run.logs, "aggregator", 1)[0]
    clients = records(run.logs, "client", 1)
    sent = statistics.mean(c.byte_send for c in clients)
    crypto = statistics.mean(
        sum(c.phases.get(k) or 0 for k in ("encrypt", "serialize", "load", "decrypt"))
        for c in clients
    )
    return (
        f"{seconds(agg):.2f} s round, client sends {sent / 1024:,.0f} KiB, "
        f"client crypto {crypto:.2f} s"
    )


def backends(size: int, paillier_size: int, hidden: int, paillier_hidden: int) -> None:
    """The HE libraries side by side on the same updates: one row per backend and scheme."""
    print(f"HE libraries side by side: {size:,} values ({paillier_size:,} for Paillier), one core")
    rows = []
    for name, enc in backend_rows():
        missing = available(enc)
        if missing:
            print(f"{name}: skipped: {missing}")
            continue
        rows.append(bench_backend(name, enc, paillier_size if enc.scheme == "paillier" else size))
    print(
        f"{'backend scheme / parameters':<38}{'B/param sent (raw)':>19}"
        + "".join(f"{k:>12}" for k in STEPS)
        + f"{'err@10':>9}{'err@100':>9}{'secret B':>10}{'pushed B':>10}"
    )
    for r in rows:
        steps = "".join(rate(r.size / r.times[k].wall / 1e6).rjust(12) for k in STEPS)
        wire = f"{r.wire:.2f} ({r.raw:.2f})" if abs(r.raw - r.wire) > 0.005 else f"{r.wire:.2f}"
        print(
            f"{r.name:<44}{wire:>19}{steps}{r.err10:>9.1e}{r.err100:>9.1e}"
            f"{r.secret_bytes:>10,}{r.pushed_bytes:>10,}"
        )
    print(
        "(steps in Mparam/s; raw: SEAL-Python's own serialization, before zstd: each ciphertext "
        "is sent as the smaller of the two; secret B: the client's secret.ctx; pushed B: "
        "keyless.ctx, what switches and the aggregator get)"
    )
    # every backend at Paillier's size, then the others at the large one
    for hid in dict.fromkeys((paillier_hidden, hidden)):
        params = parameters(FEATURES, hid)
        for name, enc in backend_rows():
            if available(enc) or (enc.scheme == "paillier" and hid != paillier_hidden):
                continue
            words = name.split()  # the round has 4 clients: lanes for 4
            form = words[-1:] if words[-1] in ("seeded", "full") else []
            short = " ".join(words[:2] + form)
            print(f"round, {params:,} parameters, {short}: {backend_round(enc, hid)}")


def hop_rows() -> list[tuple[str, HeParams]]:
    """Every scheme and backend installed, seeded (where the backend seeds) and not."""
    from hefl.crypto.params import HeParams

    rows = [("none", HeParams())]
    for backend in ("tenseal", "seal"):
        for scheme in ("ckks", "bfv"):
            for seeded in (True, False):
                enc = HeParams(scheme, backend, seeded=seeded)
                rows.append((f"{backend} {scheme} {'seeded' if seeded else 'full'}", enc))
    return [*rows, ("phe paillier 2048-bit", HeParams(scheme="paillier", clients=8))]


def hop_bytes(enc: HeParams, size: int) -> tuple[float, float, float, str]:
    """B/param on each hop of 4 clients under 2 adding switches: a client's update, a switch's
    sum of 2 (to the aggregator), the global result of 4 (down), and the forms they travel in."""
    from hefl.crypto import generate_keys, load_keyless, load_secret, make_scheme, read_keyless

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ring = keyless = None
        if enc.scheme != "none":
            generate_keys(enc, folder)
            ring, keyless = load_secret(enc, folder), load_keyless(enc, read_keyless(enc, folder))
    rng = np.random.default_rng(0)
    clients = [make_scheme(enc, size, ring, seed=i) for i in range(4)]
    adder = make_scheme(enc, size, keyless)
    ups = [c.encrypt(rng.uniform(-enc.clip, enc.clip, size)) for c in clients]

    def add(first: bytes, second: bytes) -> bytes:  # as an adding node does: a running total
        return adder.serialize(adder.load_into(adder.load_into(None, first), second))

    sums = [add(*ups[:2]), add(*ups[2:])]
    down = add(*sums)
    forms = "/".join(adder.form(p) or "-" for p in (ups[0], sums[0], down))
    mean = statistics.mean
    return mean(map(len, ups)) / size, mean(map(len, sums)) / size, len(down) / size, forms


def hops(size: int, paillier_size: int) -> None:
    """Bytes per parameter on every hop, by scheme and backend, seeded and not."""
    print(f"bytes per parameter by hop: {size:,} values ({paillier_size:,} for Paillier)")
    print(f"{'scheme':<24}{'client up':>11}{'switch up':>11}{'down':>9}   forms (up/switch/down)")
    for name, enc in hop_rows():
        missing = available(enc) if enc.scheme != "none" else ""
        if missing:
            print(f"{name:<24}skipped: {missing}")
            continue
        values = paillier_size if enc.scheme == "paillier" else size
        up, mid, down, forms = hop_bytes(enc, values)
        print(f"{name:<24}{up:>11.2f}{mid:>11.2f}{down:>9.2f}   {forms}")
    print("(client up: one client's update; switch up: an adding switch's sum of 2 children, to")
    print(" the aggregator; down: the global result of 4 clients, what every link down carries)")


def git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    return proc.stdout.strip() if proc.returncode == 0 else "?"


def cpu_model() -> str:
    try:
        lines: Iterable[str] = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown CPU"
    names = (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    return next(names, "unknown CPU")


def optional_versions() -> str:
    """The optional HE libraries' versions, where installed ('' where none is)."""
    from importlib import metadata

    found = []
    for name in ("seal-python", "phe", "gmpy2"):
        try:
            found.append(f"{name} {metadata.version(name)}, ")
        except metadata.PackageNotFoundError:
            pass
    return "".join(found)


def header(args: argparse.Namespace) -> None:
    commit = git("rev-parse", "--short", "HEAD")
    dirty = " (dirty)" if git("status", "--porcelain") not in ("", "?") else ""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"{os.cpu_count()} cores, {cpu_model()}, load average {load}\n"
        f"tenseal {ts.__version__}, {optional_versions()}numpy {np.__version__}, "
        f"python {sys.version.split()[0]}\n"
        f"commit {commit}{dirty} of {ROOT}; --size {args.size:,}, --hidden {args.hidden}\n"
    )


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--size", type=int_in(1), default=1_000_000, help="values per update for the primitives"
    )
    p.add_argument(
        "--hidden",
        type=int_in(1),
        default=990,
        help="hidden layer of the rounds' and memory runs' MLP (990: 1,000,900 parameters)",
    )
    p.add_argument(
        "--only",
        choices=["primitives", "rounds", "memory", "backends", "hops"],
        help="one section",
    )
    p.add_argument(
        "--paillier-size",
        type=int_in(1),
        default=50_000,
        help="values per update for Paillier's primitives (1M would take minutes)",
    )
    p.add_argument(
        "--round-hidden",
        type=int_in(1),
        default=990,
        help="hidden units of the backends section's rounds, but Paillier's",
    )
    p.add_argument(
        "--paillier-hidden",
        type=int_in(1),
        default=16,
        help="hidden units of Paillier's round in the backends section (16: 16,186 parameters)",
    )
    p.add_argument(
        "--repeat", type=int_in(1), default=1, help="runs of each round (their median is printed)"
    )
    p.add_argument("--skip-round", action="store_true", help="the same as --only primitives")
    args = p.parse_args()
    only = "primitives" if args.skip_round else args.only
    header(args)
    figures: dict[str, Figures] = {}
    if only in (None, "primitives"):
        figures = primitives(args.size)
    if only in (None, "rounds"):
        rounds(figures, FEATURES, args.hidden, max(1, args.repeat))
    if only in (None, "memory"):
        memory(FEATURES, args.hidden)
    if only in (None, "backends"):
        backends(args.size, args.paillier_size, args.round_hidden, args.paillier_hidden)
    if only in (None, "hops"):
        hops(args.size, args.paillier_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
