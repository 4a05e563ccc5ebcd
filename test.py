"""Push one node its part of config.json and print its answer \
(the original study's debugging script).

python test.py 10.10.1.3                  # the node whose address in config.json is 10.10.1.3
python test.py 127.0.0.1:5003 --as 10.10.1.3   # a node on another address plays 10.10.1.3

Exit status: 0 when the node took the config (its answer on stdout), 1 when it refused it (any 4xx,
409 included: configured already, or that experiment's log exists there) or could not be reached
(one line on stderr), 2 for a wrong command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hefl.address import base_url, same_host
from hefl.config import load_raw_config
from hefl.control.experiment import keyless_context, new_experiment_id
from hefl.credential import read_token
from hefl.errors import HeflError
from hefl.node.push import make_push, send_push
from hefl.node.transport import Timeouts, Transport


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="test.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("target", help="HOST[:PORT] of the node to push to")
    p.add_argument("--config", default="config.json")
    p.add_argument(
        "--as",
        dest="node",
        help="the config node it plays (default: the one whose address is TARGET)",
    )
    p.add_argument("--experiment", help="experiment id (default: a new one)")
    p.add_argument("--token-file", type=Path, default=Path("keys/token"))
    args = p.parse_args(argv)
    try:
        raw, cfg = load_raw_config(args.config)
        node = args.node or _match(args.target, list(cfg.nodes))
        if node not in cfg.nodes:
            raise HeflError(f"{node!r} is not a node of {args.config}")
        endpoints = {
            **cfg.default_endpoints(),
            node: base_url(args.target, cfg.network.port, "target"),
        }
        token = read_token(args.token_file, warn=False)
        transport = Transport(endpoints, Timeouts.of(cfg.network), token)
        body = make_push(
            raw,
            node,
            args.experiment or new_experiment_id(cfg.name),
            endpoints,
            keyless_context(cfg),
        )
        resp = send_push(transport, node, body)
    except HeflError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    answer = f"{resp.status_code} {json.dumps(resp.json(), indent=1)}"
    if resp.status_code >= 300:  # 409: configured already, or that experiment's log exists
        print(f"refused: {answer}", file=sys.stderr)
        return 1
    print(answer)
    return 0


def _match(target: str, nodes: list[str]) -> str:
    """The config node at TARGET: the exact address, else the one with the same host."""
    if target in nodes:
        return target
    same = [n for n in nodes if same_host(n, target)]
    if len(same) != 1:
        raise HeflError(f"{target!r} matches {len(same)} nodes of the config; name one with --as")
    return same[0]


if __name__ == "__main__":
    sys.exit(main())
