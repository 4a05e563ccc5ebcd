"""Command line of the testbed: serve a node, drive an experiment (agg), or run it all locally."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from hefl.errors import HeflError

DEFAULT_TOKEN = Path("keys/token")
log = logging.getLogger("main")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(_with_command(sys.argv[1:] if argv is None else argv))
    label = f"[{args.label}] " if getattr(args, "label", "") else ""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format=f"%(asctime)s {label}%(levelname)s %(name)s: %(message)s")
    logging.getLogger("hefl").setLevel(logging.INFO)
    try:
        return int(args.func(args) or 0)
    except HeflError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every node was stopped; logs written so far are kept", file=sys.stderr)
        return 130


def _with_command(argv: list[str]) -> list[str]:
    """`python main.py` alone (or with flags only) serves a node."""
    return argv if argv and not argv[0].startswith("-") else ["node", *argv]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="main.py", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    node = sub.add_parser("node", help="serve this node on --host:--port and wait for a config (the default)")
    node.add_argument("--host", default="0.0.0.0")
    node.add_argument("--port", type=int, default=5000)
    node.add_argument("--threads", type=int, default=8)
    node.add_argument("--label", default="", help="shown in ps and the node's log lines (local mode: the node id)")
    node.set_defaults(func=_node)
    for name, helptext, func in (("agg", "push config.json to every node and run the experiment", _agg),
                                 ("local", "run the whole experiment on this machine, one process per node",
                                  _local)):
        cmd = sub.add_parser(name, help=helptext)
        cmd.add_argument("--config", default="config.json")
        cmd.add_argument("--scheme", choices=["none"], help="override encryption.scheme of the config")
        cmd.set_defaults(func=func)
    token = sub.add_parser("token", help=f"create the experiment credential file ({DEFAULT_TOKEN}) if missing")
    token.set_defaults(func=_token)
    for cmd in (node, *sub.choices.values()):
        if not any(a.dest == "log_dir" for a in cmd._actions):
            cmd.add_argument("--log-dir", type=Path, default=Path("log"))
            cmd.add_argument("--token-file", type=Path, default=DEFAULT_TOKEN)
            cmd.add_argument("-v", "--verbose", action="store_true")
    return p


def _read_token(path: Path) -> str:
    """The credential every state-changing request carries: $HEFL_TOKEN, else the token file."""
    token = os.environ.get("HEFL_TOKEN") or (path.read_text().strip() if path.is_file() else "")
    if not token:
        log.warning("no credential (%s missing, HEFL_TOKEN unset): any host that reaches this port can "
                    "configure the node; run `python main.py token` and copy the file to every node", path)
    return token


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    return {"encryption": {"scheme": args.scheme}} if args.scheme else {}


def _node(args: argparse.Namespace) -> int:
    from blueprints.serve import serve

    serve(args.host, args.port, args.log_dir, _read_token(args.token_file), args.threads)
    return 0


def _agg(args: argparse.Namespace) -> int:
    from hefl.config import load_raw_config
    from hefl.experiment import Controller, new_experiment_id

    raw, cfg = load_raw_config(args.config, _overrides(args))
    ctl = Controller(raw, cfg, cfg.default_endpoints(), new_experiment_id(cfg.name), args.log_dir,
                     _read_token(args.token_file))
    ctl.run()
    return 0


def _local(args: argparse.Namespace) -> int:
    from hefl.config import load_raw_config
    from hefl.experiment import Controller, new_experiment_id
    from hefl.local import local_nodes

    raw, cfg = load_raw_config(args.config, _overrides(args))
    experiment = new_experiment_id(cfg.name)
    print(f"starting {len(cfg.nodes)} local node processes for {args.config}")
    with local_nodes(cfg, args.log_dir, args.log_dir / experiment / "stdout") as (endpoints, token):
        Controller(raw, cfg, endpoints, experiment, args.log_dir, token).run()
    return 0


def _token(args: argparse.Namespace) -> int:
    import secrets

    if args.token_file.exists():
        print(f"{args.token_file} exists; copy it to every node (deploy/ does)")
        return 0
    args.token_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(args.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(24) + "\n")
    print(f"wrote {args.token_file}; copy it to every node (deploy/ does)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
