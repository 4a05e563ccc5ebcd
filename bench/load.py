"""Load on one switch: concurrent CKKS updates from many senders, round after round, and what it
holds in memory while it adds them.

    .venv/bin/python bench/load.py [--senders 8] [--rounds 20] [--hidden 990] [--scheme ckks]
    .venv/bin/python bench/load.py --senders 2,8 --params 11173962 --rounds 1   # ResNet-18 sized

One real switch (a `main.py` node process under gunicorn, configured over HTTP like any other)
adds the updates of each `--senders` count of clients of a synthetic MLP (`--hidden`, or the
hidden width that gives `--params` parameters), posted all at once each round by this script,
which also plays the aggregator (it receives the sum and sends the global result back down, which
the switch relays to every sender). The ciphertexts are real (TenSEAL, this experiment's keys):
one update, encrypted once to a file and posted from it by every sender every round (sums go in
full, `seed_list_max` 0: a seed list would refuse the same seeds twice). Prints figures only
(nothing is asserted):

  per round   seconds from the first update posted to the sum's arrival, and MB/s (the updates'
              bytes over that time: what the switch takes in while it deserializes, checks and
              adds); the switch's worker RSS after the round (its global result relayed down)
  at the end  the median MB/s, the worker's idle RSS (configured, before round 1) and peak RSS
              (VmHWM), RSS growth from round 2 to the last and the range over the second half
  peak line   with several sender counts, one line: each count's peak RSS, the difference, and
              the bound idle + 1.5 x one encrypted update in memory (ciphertexts x 2 x N x data
              primes x 8 bytes)

The switch's CPU and this script share the machine's cores: on 2 cores the figure is what one
switch can take with the senders' sends competing with it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._proc import memory_kb  # noqa: E402
from hefl.argtypes import int_in  # noqa: E402
from hefl.control.local import free_ports, node_command  # noqa: E402
from hefl.crypto import HeParams, generate_keys, load_secret, make_scheme, read_keyless  # noqa: E402
from hefl.crypto.params import coeffs, slots  # noqa: E402
from hefl.node.push import make_push  # noqa: E402
from hefl.node.wire import BINARY, TOKEN_HEADER, Envelope, Kind  # noqa: E402

FEATURES = 1000
TOKEN = "load-bench"
EXP = "load-1"
SWITCH = "127.0.0.1:10"
AGG = "127.0.0.1:1"


class Sink:
    """The switch's parent and children: takes every POST (bodies read in 1 MiB pieces), writes
    the switch's sums to files by round and counts the global results relayed down (their bytes
    are dropped: this process must not hold them)."""

    def __init__(self, folder: Path) -> None:
        self.sums: dict[int, Path] = {}
        self.relayed: dict[int, int] = {}
        self.cond = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                r = int(self.headers.get("X-Hefl-Round", -1))
                keep = self.path == Kind.UPDATE.route.path
                out = open(folder / f"sum-{r}.bin", "wb") if keep else None  # noqa: SIM115
                for piece in self.pieces():
                    if out is not None:
                        out.write(piece)
                with sink.cond:
                    if out is not None:
                        out.close()
                        sink.sums[r] = folder / f"sum-{r}.bin"
                    elif self.path == Kind.GLOBAL.route.path:
                        sink.relayed[r] = sink.relayed.get(r, 0) + 1
                    sink.cond.notify_all()
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def pieces(self) -> Any:
                """The body, with a length or chunked (a switch's sum goes with its length)."""
                if "Content-Length" in self.headers:
                    left = int(self.headers["Content-Length"])
                    while left and (piece := self.rfile.read(min(1 << 20, left))):
                        left -= len(piece)
                        yield piece
                    return
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    yield self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, what: Any, timeout: float = 1800) -> None:
        with self.cond:
            if not self.cond.wait_for(what, timeout):
                raise SystemExit("the switch did not answer in time")


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory now (VmRSS) or at its peak (VmHWM), in MiB; 0 once gone."""
    return memory_kb(pid).get(field, 0) / 1024


def worker_of(pid: int, timeout: float = 60) -> int:
    """The gunicorn worker (the process holding the node's state) below the node process."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            children = (task / "children").read_text().split()
            if children:
                return int(children[0])
        time.sleep(0.1)
    raise SystemExit("the switch's worker did not start")


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--senders", default="8", help="a count, or counts apart by commas: 2,8")
    p.add_argument("--rounds", type=int_in(1), default=20)
    p.add_argument("--hidden", type=int_in(1), default=990)
    p.add_argument("--params", type=int_in(1), default=0, help="the model's size instead")
    p.add_argument("--scheme", choices=["ckks", "bfv", "none"], default="ckks")
    args = p.parse_args()
    try:
        counts = [int_in(1, 256)(n) for n in args.senders.split(",")]
    except argparse.ArgumentTypeError as exc:
        p.error(f"argument --senders: {exc}")
    hidden = max(1, (args.params - 10) // (FEATURES + 11)) if args.params else args.hidden
    size = FEATURES * hidden + hidden + hidden * 10 + 10
    enc = HeParams(scheme=args.scheme)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:  # on disk (not tmpfs)
        keys = Path(tmp) / "keys"
        if args.scheme != "none":
            generate_keys(enc, keys)
        secret = load_secret(enc, keys) if args.scheme != "none" else None
        client = make_scheme(enc, size, secret, seed=1)
        values = np.random.default_rng(0).uniform(-0.5, 0.5, size) / max(counts)
        print(f"encrypting one {args.scheme} update of {size:,} values ...", flush=True)
        update = Path(tmp) / "update.bin"
        with open(update, "wb") as out:
            if hasattr(client, "stream"):
                for piece in client.stream(values):
                    out.write(piece)
            else:
                out.write(client.encrypt(values))
        del values
        in_memory = 0.0
        if args.scheme != "none":
            n = enc.poly_modulus_degree
            chunks = -(-size // slots(enc))
            in_memory = chunks * 2 * n * (len(coeffs(enc)) - 1) * 8 / 2**20
        peaks = {}
        for count in counts:
            idle, peak = one_switch(args, count, hidden, update, keys, enc, Path(tmp))
            peaks[count] = (idle, peak)
        if len(counts) > 1:
            low, high = min(counts), max(counts)
            idle = peaks[low][0]
            print(
                "switch peak RSS: "
                + ", ".join(f"{c} senders {peaks[c][1]:.0f} MiB" for c in counts)
                + f"; {high} over {low}: {peaks[high][1] - peaks[low][1]:+.0f} MiB; idle "
                f"{idle:.0f} MiB; one update in memory {in_memory:.0f} MiB; bound idle + 1.5 x "
                f"update {idle + 1.5 * in_memory:.0f} MiB"
            )
    return 0


def one_switch(
    args: argparse.Namespace,
    senders: int,
    hidden: int,
    update: Path,
    keys: Path,
    enc: HeParams,
    tmp: Path,
) -> tuple[float, float]:
    """Run `args.rounds` rounds on a fresh switch with `senders` senders of `update`; return its
    worker's idle RSS and peak RSS (MiB)."""
    clients = [f"127.0.0.1:{100 + i}" for i in range(senders)]
    raw: dict[str, Any] = {
        "name": "load",
        "aggregator": {"iteration": args.rounds, "ip": AGG},
        "others": {
            **{
                c: {"type": "client", "client_number": senders, "index": i, "send": SWITCH}
                for i, c in enumerate(clients)
            },
            SWITCH: {"type": "switch", "receive": clients, "send": AGG, "dumb": False},
        },
        "dataset": {
            "name": "synthetic",
            "samples": 40 * senders,
            "features": FEATURES,
            "classes": 10,
        },
        "model": {"name": "mlp", "hidden": [hidden]},
        "encryption": {"scheme": args.scheme, "key_dir": str(keys), "seed_list_max": 0},
        "network": {"read_timeout_s": 600},
    }
    mb = senders * update.stat().st_size / 1e6
    sink = Sink(tmp)
    (port,) = free_ports(1)
    log_dir = tmp / f"log-{senders}"
    node = subprocess.Popen(
        node_command("127.0.0.1", port, log_dir),
        env={**os.environ, "HEFL_TOKEN": TOKEN},
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        session = requests.Session()
        session.headers[TOKEN_HEADER] = TOKEN
        for _ in range(300):
            try:
                session.get(url + Kind.HEALTH.route.path, timeout=2)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        endpoints = {**{c: sink.url for c in clients}, AGG: sink.url, SWITCH: url}
        keyless = read_keyless(enc, keys) if args.scheme != "none" else b""
        samples = {c: 40 for c in clients}
        body = make_push(raw, SWITCH, EXP, endpoints, keyless, samples)
        resp = session.post(url + Kind.CONFIG.route.path, json=body, timeout=300)
        resp.raise_for_status()
        worker = worker_of(node.pid)

        def post(kind: Kind, env: Envelope, data: Path | bytes) -> None:
            headers = {**env.headers(), "Content-Type": BINARY}
            with requests.Session() as own:  # one connection per sender, as real clients have
                own.headers[TOKEN_HEADER] = TOKEN
                if isinstance(data, Path):
                    with open(data, "rb") as f:
                        answer = own.post(
                            url + kind.route.path, data=f, headers=headers, timeout=900
                        )
                else:
                    answer = own.post(
                        url + kind.route.path, data=data, headers=headers, timeout=900
                    )
            if answer.status_code != 202:
                raise SystemExit(
                    f"{kind.value} of round {env.round + 1}: {answer.status_code} {answer.text}"
                )

        post(Kind.BEGIN, Envelope(EXP, 0, AGG), b"")
        idle = rss_mb(worker)
        print(
            f"one switch (gunicorn worker pid {worker}, idle RSS {idle:.0f} MiB), {senders} "
            f"senders x {update.stat().st_size / 1e6:.1f} MB, {args.rounds} rounds"
        )
        print(f"{'round':>5} {'s':>7} {'MB/s':>8} {'RSS MB':>8}")
        rates, rss = [], []
        for r in range(args.rounds):
            started = time.monotonic()
            threads = [
                threading.Thread(
                    target=post,
                    args=(Kind.UPDATE, Envelope(EXP, r, c, 40, 1, 1 << i), update),
                )
                for i, c in enumerate(clients)
            ]
            for t in threads:
                t.start()
            sink.wait(lambda r=r: r in sink.sums)
            took = time.monotonic() - started
            for t in threads:
                t.join()
            if r + 1 < args.rounds:
                env = Envelope(EXP, r, AGG, 40 * senders, senders)
                post(Kind.GLOBAL, env, sink.sums[r])
                sink.wait(lambda r=r: sink.relayed.get(r, 0) >= senders)
            sink.sums.pop(r).unlink()
            rates.append(mb / took)
            rss.append(rss_mb(worker))
            print(f"{r + 1:>5} {took:>7.2f} {rates[-1]:>8.1f} {rss[-1]:>8.0f}", flush=True)
        peak = rss_mb(worker, "VmHWM")
        second = rss[min(1, len(rss) - 1)]
        half = rss[len(rss) // 2 :]
        print(
            f"median {statistics.median(rates):.1f} MB/s taken in; worker idle RSS {idle:.0f} "
            f"MB, peak RSS {peak:.0f} MB; RSS after round 2 {second:.0f} MB, after the last "
            f"{rss[-1]:.0f} MB (growth {rss[-1] - second:+.0f} MB); over the last "
            f"{len(half)} rounds {min(half):.0f} to {max(half):.0f} MB"
        )
        log = json.dumps(session.get(url + Kind.HEALTH.route.path, timeout=10).json())
        print(f"switch: {log}")
        return idle, peak
    finally:
        node.terminate()
        node.wait(timeout=30)
        sink.server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
