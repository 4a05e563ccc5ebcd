"""Load on one switch: concurrent CKKS updates from many senders, round after round.

    .venv/bin/python bench/load.py [--senders 8] [--rounds 20] [--hidden 990] [--scheme ckks]

One real switch (a `main.py` node process under gunicorn, configured over HTTP like any other)
adds the updates of `--senders` clients of a `--hidden` synthetic MLP (990: 1,000,900 parameters),
posted all at once each round by this script, which also plays the aggregator (it receives the
sum and sends the global result back down, which the switch relays to every sender). The
ciphertexts are real (TenSEAL, this experiment's keys), made once and posted again every round.
Prints figures only (nothing is asserted):

  per round   seconds from the first update posted to the sum's arrival, and MB/s (the updates'
              bytes over that time: what the switch takes in while it deserializes, checks and
              adds); the switch's worker RSS after the round (its global result relayed down)
  at the end  the median MB/s, the worker's peak RSS (VmHWM), RSS growth from round 2 to the
              last (round 1 pays for first allocations) and the RSS range over the second half
              of the rounds: memory must settle, not grow round after round (the C library
              keeps an arena per request thread: RSS rises over the first rounds, then stays)

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
from hefl.node.push import make_push  # noqa: E402
from hefl.node.wire import BINARY, TOKEN_HEADER, Envelope, Kind  # noqa: E402

FEATURES = 1000
TOKEN = "load-bench"
EXP = "load-1"
SWITCH = "127.0.0.1:10"
AGG = "127.0.0.1:1"


class Sink:
    """The switch's parent and children: takes every POST (bodies read whole, in 1 MiB pieces),
    keeps the switch's sums by round and counts the global results relayed down."""

    def __init__(self) -> None:
        self.sums: dict[int, bytes] = {}
        self.relayed: dict[int, int] = {}
        self.cond = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                size = int(self.headers.get("Content-Length", 0))
                body = bytearray()
                while len(body) < size:
                    piece = self.rfile.read(min(1 << 20, size - len(body)))
                    if not piece:
                        break
                    body += piece
                r = int(self.headers.get("X-Hefl-Round", -1))
                with sink.cond:
                    if self.path == Kind.UPDATE.route.path:
                        sink.sums[r] = bytes(body)
                    elif self.path == Kind.GLOBAL.route.path:
                        sink.relayed[r] = sink.relayed.get(r, 0) + 1
                    sink.cond.notify_all()
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, what: Any, timeout: float = 600) -> None:
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
    p.add_argument("--senders", type=int_in(1, 256), default=8)
    p.add_argument("--rounds", type=int_in(1), default=20)
    p.add_argument("--hidden", type=int_in(1), default=990)
    p.add_argument("--scheme", choices=["ckks", "bfv", "none"], default="ckks")
    args = p.parse_args()
    clients = [f"127.0.0.1:{100 + i}" for i in range(args.senders)]
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys"
        enc = HeParams(scheme=args.scheme)
        if args.scheme != "none":
            generate_keys(enc, keys)
        raw: dict[str, Any] = {
            "name": "load",
            "aggregator": {"iteration": args.rounds, "ip": AGG},
            "others": {
                **{
                    c: {"type": "client", "client_number": args.senders, "index": i, "send": SWITCH}
                    for i, c in enumerate(clients)
                },
                SWITCH: {"type": "switch", "receive": clients, "send": AGG, "dumb": False},
            },
            "dataset": {
                "name": "synthetic",
                "samples": 40 * args.senders,
                "features": FEATURES,
                "classes": 10,
            },
            "model": {"name": "mlp", "hidden": [args.hidden]},
            "encryption": {"scheme": args.scheme, "key_dir": str(keys)},
            "network": {"read_timeout_s": 600},
        }
        size = FEATURES * args.hidden + args.hidden + args.hidden * 10 + 10
        secret = load_secret(enc, keys) if args.scheme != "none" else None
        client = make_scheme(enc, size, secret, seed=1)
        rng = np.random.default_rng(0)
        print(f"encrypting {args.senders} {args.scheme} updates of {size:,} values ...", flush=True)
        updates = [client.encrypt(rng.uniform(-0.5, 0.5, size) / args.senders) for _ in clients]
        mb = sum(map(len, updates)) / 1e6
        sink = Sink()
        (port,) = free_ports(1)
        node = subprocess.Popen(
            node_command("127.0.0.1", port, Path(tmp) / "log"),
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
            resp = session.post(url + Kind.CONFIG.route.path, json=body, timeout=120)
            resp.raise_for_status()
            worker = worker_of(node.pid)

            def post(kind: Kind, env: Envelope, data: bytes) -> None:
                headers = {**env.headers(), "Content-Type": BINARY}
                answer = session.post(
                    url + kind.route.path, data=data, headers=headers, timeout=600
                )
                if answer.status_code != 202:
                    raise SystemExit(
                        f"{kind.value} of round {env.round + 1}: {answer.status_code} {answer.text}"
                    )

            post(Kind.BEGIN, Envelope(EXP, 0, AGG), b"")
            print(
                f"one switch ({raw['others'][SWITCH]['type']}, gunicorn worker pid {worker}), "
                f"{args.senders} senders x {len(updates[0]) / 1e6:.1f} MB, {args.rounds} rounds"
            )
            print(f"{'round':>5} {'s':>7} {'MB/s':>8} {'RSS MB':>8}")
            rates, rss = [], []
            for r in range(args.rounds):
                started = time.monotonic()
                threads = [
                    threading.Thread(
                        target=post,
                        args=(Kind.UPDATE, Envelope(EXP, r, c, 40, 1, 1 << i), updates[i]),
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
                    env = Envelope(EXP, r, AGG, 40 * args.senders, args.senders)
                    post(Kind.GLOBAL, env, sink.sums.pop(r))
                    sink.wait(lambda r=r: sink.relayed.get(r, 0) >= args.senders)
                rates.append(mb / took)
                rss.append(rss_mb(worker))
                print(f"{r + 1:>5} {took:>7.2f} {rates[-1]:>8.1f} {rss[-1]:>8.0f}", flush=True)
            peak = rss_mb(worker, "VmHWM")
            second = rss[min(1, len(rss) - 1)]
            half = rss[len(rss) // 2 :]
            print(
                f"median {statistics.median(rates):.1f} MB/s taken in; worker peak RSS "
                f"{peak:.0f} MB; RSS after round 2 {second:.0f} MB, after the last "
                f"{rss[-1]:.0f} MB (growth {rss[-1] - second:+.0f} MB); over the last "
                f"{len(half)} rounds {min(half):.0f} to {max(half):.0f} MB"
            )
            log = json.dumps(session.get(url + Kind.HEALTH.route.path, timeout=10).json())
            print(f"switch: {log}")
        finally:
            node.terminate()
            node.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
