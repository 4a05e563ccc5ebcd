"""Command line of the testbed: serve a node, drive an experiment (agg), or run it all locally."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from hefl.argtypes import int_in
from hefl.credential import DEFAULT_TOKEN, create_token, read_token
from hefl.errors import HeflError

if TYPE_CHECKING:
    from hefl.config import ExperimentConfig


def main(argv: list[str] | None = None) -> int:
    given = _with_command(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(given)
    args.given = given  # what `agg --detach` hands its detached controller
    if args.command == "node":  # an address this machine cannot listen on is a bad argument too
        problem = _cannot_listen(args.host, args.port)
        if problem:
            print(f"main.py node: error: {problem}", file=sys.stderr)
            return 2
    label = f"[{args.label}] " if getattr(args, "label", "") else ""
    logging.basicConfig(
        force=True,  # a local node forked from `main.py local` sets its own
        level=logging.INFO if args.verbose else logging.WARNING,
        format=f"%(asctime)s {label}%(levelname)s %(name)s: %(message)s",
    )
    if args.command in ("agg", "local", "sweep", "follow"):
        for signum in (signal.SIGTERM, signal.SIGHUP):  # stop as on Ctrl-C: nodes, keys, record
            signal.signal(signum, _interrupt)
    try:
        return int(args.func(args) or 0)
    except HeflError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a disk that is full or read-only, a folder that cannot be made
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(
            f"interrupted ({signal.Signals(signum).name}): every node was stopped; logs written so "
            "far are kept",
            file=sys.stderr,
        )
        return 128 + signum


class Signalled(KeyboardInterrupt):
    """SIGTERM or SIGHUP, taken like Ctrl-C (the `with` blocks stop the nodes and remove keys)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum: int, frame: object) -> None:
    for other in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # one clean-up, not two
        signal.signal(other, signal.SIG_IGN)
    raise Signalled(signum)


def _with_command(argv: list[str]) -> list[str]:
    """`python main.py` alone (or with node flags only) serves a node; -h alone shows every
    command."""
    if argv in (["-h"], ["--help"]):
        return argv
    return argv if argv and not argv[0].startswith("-") else ["node", *argv]


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)  # the flags every command takes
    common.add_argument(
        "--log-dir", type=Path, default=Path("log"), help="experiment logs (default: %(default)s)"
    )
    common.add_argument(
        "--token-file",
        type=Path,
        default=DEFAULT_TOKEN,
        help="the experiment credential; $HEFL_TOKEN wins (default: %(default)s)",
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", help="log every event, not only warnings"
    )
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument(
        "--config", default="config.json", help="experiment config (default: %(default)s)"
    )
    p = argparse.ArgumentParser(
        prog="main.py",
        description=__doc__,
        epilog="`python main.py` with no command serves a node. Details: README.md",
    )
    sub = p.add_subparsers(dest="command", required=True)
    node = sub.add_parser(
        "node",
        parents=[common],
        help="serve this node on --host:--port and wait for a config (the default)",
    )
    node.add_argument(
        "--host", default="0.0.0.0", help="address to listen on (default: %(default)s)"
    )
    node.add_argument(
        "--port",
        type=int_in(1, 65535),
        default=5000,
        help="port to listen on, 1..65535 (default: %(default)s)",
    )
    node.add_argument(
        "--threads",
        type=int_in(1, 256),
        default=8,
        help="request threads of the one worker (default: %(default)s)",
    )
    node.add_argument(
        "--label", default="", help="shown in ps and the node's log lines (local mode: the node id)"
    )
    node.set_defaults(func=_node)
    for name, helptext, func in (
        ("agg", "push config.json to every node and run the experiment", _agg),
        ("local", "run the whole experiment on this machine, one process per node", _local),
    ):
        cmd = sub.add_parser(name, parents=[common, config], help=helptext)
        _crypto_flags(cmd, ["none", "ckks", "bfv", "paillier"])
        cmd.set_defaults(func=func)
        if name == "agg":
            cmd.add_argument(
                "--detach",
                action="store_true",
                help="run the controller in a session of its own, its output in "
                "<run>/controller.log, and follow it here: Ctrl-C or a dropped ssh stops the "
                "following only (main.py follow picks it up again)",
            )
            cmd.add_argument("--experiment", help=argparse.SUPPRESS)  # a detached controller's
    follow = sub.add_parser(
        "follow",
        parents=[common],
        help="show a detached run's output as it comes; take over a run whose controller is gone",
    )
    follow.add_argument(
        "run", nargs="?", type=Path, help="run folder (default: the latest under --log-dir)"
    )
    follow.add_argument("--take-over", action="store_true", help=argparse.SUPPRESS)
    follow.set_defaults(func=_follow)
    from hefl.results.options import add_flags

    report = sub.add_parser(
        "report",
        parents=[common],
        help="rebuild summary.json, summary.csv and the figures of runs from their logs alone",
    )
    report.add_argument("runs", nargs="+", type=Path, help="run folders (log/<experiment>)")
    add_flags(report)
    report.set_defaults(func=_report)
    cmp = sub.add_parser(
        "compare",
        parents=[common],
        help="one table and figures over several runs, as ratios to the first; repeats averaged",
    )
    cmp.add_argument("runs", nargs="+", type=Path, help="run folders (log/<experiment>)")
    cmp.add_argument(
        "--out",
        type=Path,
        help="where compare.txt/.json and figures go (default: log/compare-<time>)",
    )
    cmp.add_argument(
        "--label",
        action="append",
        default=[],
        help="a group's name in the table and figures, once per group in order (default: scheme "
        "and switches)",
    )
    add_flags(cmp)
    cmp.set_defaults(func=_compare)
    sweep = sub.add_parser(
        "sweep",
        parents=[common],
        help="run a grid of local experiments one after another, then compare them",
    )
    sweep.add_argument("sweep", type=Path, help="sweep file (see README: Sweeps)")
    sweep.set_defaults(func=_sweep)
    runs = sub.add_parser(
        "runs", parents=[common], help="list the runs under --log-dir: status, scheme, accuracy"
    )
    runs.set_defaults(func=_runs)
    topo = sub.add_parser(
        "topology",
        parents=[common, config],
        help="write a config: --clients in a tree of --fanout and --depth (the rest as --config)",
    )
    topo.add_argument("--clients", type=int_in(1, 16384), required=True, help="logical clients")
    topo.add_argument(
        "--fanout", type=int_in(1), default=2, help="children per switch (default: %(default)s)"
    )
    topo.add_argument(
        "--depth", type=int_in(0), help="switch levels above the clients (default: the fewest)"
    )
    topo.add_argument("--forwarding", action="store_true", help="switches forward, not add")
    topo.add_argument(
        "--per-node", type=int_in(1), default=1, help="logical clients per client node"
    )
    topo.add_argument("--local", action="store_true", help="127.0.0.1 ports, not 10.10.x.y")
    topo.add_argument(
        "--first-port",
        type=int_in(1, 65535),
        default=6001,
        help="with --local: the first node's port; the others take the next ones "
        "(default: %(default)s)",
    )
    topo.add_argument("--out", type=Path, required=True, help="the config file to write")
    topo.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    topo.set_defaults(func=_topology)
    nodes = sub.add_parser(
        "nodes",
        parents=[common, config],
        help="start (up) or stop (down) the config's nodes on this machine, each in the "
        "background as a cluster runs them; then `agg` drives them",
    )
    nodes.add_argument("action", choices=["up", "down"])
    nodes.set_defaults(func=_nodes)
    token = sub.add_parser(
        "token",
        parents=[common],
        help=f"create the experiment credential file ({DEFAULT_TOKEN}) if missing",
    )
    token.set_defaults(func=_token)
    seal = sub.add_parser(
        "seal",
        parents=[common, config],
        help="self-test the HE library and write the key material of the config (seal.sh runs it)",
    )
    _crypto_flags(seal, ["ckks", "bfv", "paillier"])
    seal.add_argument(
        "--key-dir", help="where to write the keys (default: the config's encryption.key_dir)"
    )
    seal.set_defaults(func=_seal)
    return p


def _cannot_listen(host: str, port: int) -> str:
    """Why this machine cannot listen on host:port ('' when it can), found by binding a socket
    as gunicorn will (IPv6 for an IPv6 address, else IPv4, a name resolved as it resolves it):
    an address of another machine, a name that does not resolve, a port in use. Said in one line
    before the server starts."""
    import ipaddress
    import socket

    bare = host.strip("[]")
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(bare).version == 6 else socket.AF_INET
    except ValueError:  # a name
        family = socket.AF_INET
    shown = f"[{bare}]:{port}" if family == socket.AF_INET6 else f"{bare}:{port}"
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn does
        try:
            sock.bind((bare, port))
        except (socket.gaierror, UnicodeError) as exc:
            return f"argument --host: {host!r} is not an address of this machine ({exc})"
        except OSError as exc:
            return f"cannot listen on {shown}: {exc.strerror or exc}"
    return ""


def _crypto_flags(cmd: argparse.ArgumentParser, schemes: list[str]) -> None:
    cmd.add_argument("--scheme", choices=schemes, help="override encryption.scheme of the config")
    cmd.add_argument(
        "--backend",
        choices=["tenseal", "seal"],
        help="override encryption.backend of the config: the library of ckks and bfv "
        "(seal: SEAL-Python, pip install -r requirements-he.txt)",
    )


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    """--scheme and --backend as config overrides; the library they need must be installed."""
    enc = {k: v for k, v in (("scheme", args.scheme), ("backend", args.backend)) if v}
    return {"encryption": enc} if enc else {}


def _require(cfg: ExperimentConfig) -> None:
    from hefl.crypto import require

    require(cfg.encryption.he_params())


def _node(args: argparse.Namespace) -> int:
    from blueprints.serve import serve
    from hefl.node.host import die_with_parent

    # a local run's node: gone when `main.py local` is, even after a SIGKILL (and it keeps
    # nothing to rejoin with: a local run ends when one of its nodes does)
    local = die_with_parent()
    # what `ps` shows (gunicorn: master [...] and worker [...]), forked by local mode or not
    title = f"main.py node --host {args.host} --port {args.port} --log-dir {args.log_dir.resolve()}"
    title += f" --label {args.label}" if args.label else ""
    token = read_token(args.token_file)
    serve(args.host, args.port, args.log_dir, token, args.threads, title, rejoin=not local)
    return 0


def _agg(args: argparse.Namespace) -> int:
    from hefl.config import load_raw_config
    from hefl.control.experiment import Controller, new_experiment_id
    from hefl.node.push import is_experiment_id

    raw, cfg = load_raw_config(args.config, _overrides(args))
    token = read_token(args.token_file)
    if args.experiment is not None and not is_experiment_id(args.experiment):
        raise HeflError(f"--experiment: {args.experiment!r} is not an experiment id")
    experiment = args.experiment or new_experiment_id(cfg.name)
    if args.detach and args.experiment is None:  # a detached controller never detaches again
        from hefl.control.follow import detach

        # --detach as given, or as argparse takes it shortened (--d, --det, ...)
        argv = [a for a in args.given if not (a.startswith("--d") and "--detach".startswith(a))]
        argv += ["--experiment", experiment]
        run = args.log_dir / experiment

        def start() -> None:
            pid = detach(argv, args.log_dir, experiment)
            print(
                f"experiment {experiment}: its controller runs detached (pid {pid}), its output "
                f"in {run}/controller.log; `python main.py follow {run}` shows it from any "
                "terminal",
                flush=True,
            )

        return _following(run, args.token_file, args.log_dir, start)
    ctl = Controller(
        raw,
        cfg,
        cfg.default_endpoints(),
        experiment,
        args.log_dir,
        token,
        progress=sys.stdout.isatty(),
    )
    ctl.run()
    return 0


def _follow(args: argparse.Namespace) -> int:
    from hefl.control.follow import latest_run

    run = args.run or latest_run(args.log_dir)
    if args.take_over:
        return _take_over(run, read_token(args.token_file))
    return _following(run, args.token_file, args.log_dir)


def _take_over(run: Path, token: str) -> int:
    """A detached controller that takes over a run whose controller is gone (what `follow`
    starts); a second one, or one that finds a live controller, leaves it."""
    from hefl.control.experiment import Controller
    from hefl.control.follow import controlling, read_record
    from hefl.results.report import controller_gone

    with controlling(run) as mine:
        if not mine or not controller_gone(read_record(run)):
            return 0
        Controller.of_run(run, token).take_over()
    return 0


def _following(
    run: Path, token_file: Path, log_dir: Path, start: Callable[[], None] = lambda: None
) -> int:
    """Follow `run`'s detached controller; Ctrl-C (or SIGTERM, SIGHUP) stops the following, not
    the run. A run whose controller is gone is taken over by a detached controller."""
    from hefl.control.follow import follow

    take_over = [
        "follow",
        str(run.resolve()),
        "--take-over",
        "--log-dir",
        str(log_dir.resolve()),
        "--token-file",
        str(token_file.resolve()),
    ]
    try:
        start()  # `agg --detach`: the controller, once it runs the following is what stops
        return follow(run, take_over)
    except KeyboardInterrupt:
        print(f"stopped following; the run goes on: `python main.py follow {run}`")
        return 0


def _local(args: argparse.Namespace) -> int:
    from hefl.config import load_raw_config
    from hefl.control.local import run_local

    raw, cfg = load_raw_config(args.config, _overrides(args))
    _require(cfg)
    run_local(raw, cfg, args.config, args.log_dir, args.verbose, node_main=_preloaded_node())
    return 0


def _preloaded_node() -> Callable[[list[str]], int]:
    """What local mode forks each node with: this entry point, its node runtime loaded here once
    (where it cannot be, each forked node imports it again and names what failed)."""
    with contextlib.suppress(Exception):
        import blueprints.serve  # noqa: F401
    return main


def _report(args: argparse.Namespace) -> int:
    from hefl.results.options import options_of
    from hefl.results.report import summary_lines
    from hefl.results.summary import write_summary

    figures = options_of(args)
    for run in args.runs:
        if not (run / "config.json").is_file():
            raise HeflError(f"{run}: not a run folder (no config.json)")
        _gather_if_gone(run, args.token_file)
        for line in summary_lines(write_summary(run, figures=figures), args.skip_rounds):
            print(line)
        print(f"wrote {run}/summary.json, summary.csv and figures ({', '.join(figures.formats)})")
    return 0


def _gather_if_gone(run: Path, token_file: Path) -> None:
    """A run whose run.json says running while its controller is gone (killed): the nodes' logs
    and the outcome are brought here first (unless the nodes still run it: `follow` takes it
    over)."""
    from hefl.control.experiment import Controller
    from hefl.control.follow import read_record
    from hefl.results.report import controller_gone

    if not (run / "run.json").is_file():
        return
    why = controller_gone(read_record(run))
    if not why:
        return
    token = read_token(token_file)  # read only here: a report of a run needs none
    done = Controller.of_run(run, token, out=lambda line: None).gather(why)
    if done:
        print(f"{run.name}: {why}; {done}")
    else:
        print(
            f"{run.name}: {why}; its nodes still run it: `python main.py follow {run}` takes it "
            "over (this report holds what its folder has so far)"
        )


def _compare(args: argparse.Namespace) -> int:
    import time

    from hefl.results.compare import group_runs, relabel, write_comparison
    from hefl.results.options import options_of

    groups = relabel(group_runs(args.runs), args.label)
    out = args.out or args.log_dir / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    lines, _, paths = write_comparison(groups, out, options_of(args))
    for line in lines:
        print(line)
    print(f"wrote {out}/compare.txt, compare.json, " + ", ".join(p.name for p in paths))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from typing import Any

    from hefl.config import parse_config
    from hefl.control.local import run_local
    from hefl.control.sweep import run_sweep

    node_main = _preloaded_node()

    def one(raw: dict[str, Any], name: str) -> Path:
        return run_local(raw, parse_config(raw), name, args.log_dir, args.verbose, "", node_main)

    _, all_finished = run_sweep(args.sweep, args.log_dir, one)
    return 0 if all_finished else 1


def _runs(args: argparse.Namespace) -> int:
    from hefl.results.report import list_runs

    for line in list_runs(args.log_dir):
        print(line)
    return 0


def _topology(args: argparse.Namespace) -> int:
    from hefl.config import parse_config, read_raw
    from hefl.control.topologies import Shape, least_depth, topology
    from hefl.files import write_json_atomic

    nodes = -(-args.clients // args.per_node)
    depth = least_depth(nodes, args.fanout) if args.depth is None else args.depth
    shape = Shape(
        args.clients,
        args.fanout,
        depth,
        args.forwarding,
        args.per_node,
        args.local,
        args.first_port,
    )
    if args.out.exists() and not args.force:
        raise HeflError(f"{args.out} exists: give another --out, or --force to overwrite it")
    raw = topology(shape, read_raw(args.config))
    cfg = parse_config(raw)  # what `agg` and `local` will read: checked before it is written
    write_json_atomic(args.out, raw)
    switches = len(raw["others"]) - nodes
    print(
        f"wrote {args.out}: {len(cfg.tree.clients())} clients on {nodes} nodes, {switches} "
        f"{'forwarding' if args.forwarding else 'adding'} switch{'es' * (switches != 1)} in "
        f"{depth} level{'s' * (depth != 1)} "
        f"(fan-out {args.fanout}), aggregator {cfg.tree.root}"
    )
    return 0


def _nodes(args: argparse.Namespace) -> int:
    from hefl.config import load_config
    from hefl.control import nodes

    cfg = load_config(args.config)
    where = "" if args.log_dir == Path("log") else f" --log-dir {args.log_dir}"
    if args.action == "up":
        started = nodes.up(cfg, args.log_dir, args.token_file)
        print(
            f"{len(started)} node(s) started, {len(cfg.nodes) - len(started)} running already; "
            f"`python main.py agg --config {args.config}` runs the experiment, "
            f"`python main.py nodes down --config {args.config}{where}` stops them"
        )
    else:
        stopped = nodes.down(cfg, args.log_dir)
        print(
            f"{len(stopped)} node(s) stopped"
            if stopped
            else f"no node of {args.config} runs that `nodes up{where}` started (it keeps their "
            f"pids in {args.log_dir}/nodes/: give the --log-dir that `nodes up` was given)"
        )
    return 0


def _token(args: argparse.Namespace) -> int:
    written = create_token(args.token_file)
    print(
        f"{'wrote' if written else 'kept the existing'} {args.token_file}; "
        f"copy it to every node (deploy/ does)"
    )
    return 0


def _seal(args: argparse.Namespace) -> int:
    from hefl.config import load_config
    from hefl.crypto.selftest import round_trip, versions

    overrides = _overrides(args)
    if args.key_dir:
        overrides.setdefault("encryption", {})["key_dir"] = args.key_dir
    cfg = load_config(args.config, overrides)
    enc = cfg.encryption
    params = cfg.he_params()
    _require(cfg)
    print(versions(params))
    # the config's parameters for its scheme, the defaults for the other of its library's
    for scheme in ("paillier",) if params.scheme == "paillier" else ("ckks", "bfv"):
        round_trip(
            params
            if scheme == params.scheme
            else replace(params, scheme=scheme, coeff_mod_bit_sizes=())
        )
    if not enc.encrypted:
        print(
            f"{args.config} uses scheme none: no keys needed "
            f"(give --scheme ckks|bfv|paillier to make some)"
        )
        return 0
    from hefl.crypto import generate_keys

    generate_keys(params, Path(enc.key_dir))
    held = (
        "the public key n alone: it adds, it cannot decrypt"
        if enc.scheme == "paillier"
        else "parameters only, no key"
    )
    print(
        f"wrote {enc.key_dir}/secret.ctx (mode 600: clients only), "
        f"{enc.key_dir}/keyless.ctx ({held}: "
        f"`agg` pushes it to switches and the aggregator), {enc.key_dir}/params.json, "
        f"for {enc.scheme}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
