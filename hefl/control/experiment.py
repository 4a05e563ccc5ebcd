"""Drive an experiment: wait for the nodes, push their configs, start, follow the rounds, report."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from hefl.address import log_name
from hefl.config import ExperimentConfig
from hefl.credential import read_key
from hefl.crypto.params import coeffs, in_effect
from hefl.errors import (
    ConfigError,
    ExperimentFailed,
    HeflError,
    PeerRestarted,
    PeerUnreachable,
    restarted,
)
from hefl.files import write_json_atomic
from hefl.node.push import make_push, send_push
from hefl.node.runlog import rounds_closed
from hefl.node.transport import Timeouts, Transport
from hefl.node.wire import TOKEN_PARAM, Kind
from hefl.provenance import code_version, machine, versions
from hefl.records import (
    Fault,
    LogFormatError,
    NodeLog,
    RoundRow,
    RunNode,
    RunRecord,
    rows_from_json,
)
from hefl.results.report import format_round, human_bytes, means_lines, node_table, read_logs

log = logging.getLogger(__name__)


MAX_REJOINS = 3  # the rejoins at one round the controller names from a log (a node gives up after)
HEALTH_EVERY_S = 3.0  # how often the controller checks that every node is alive


class NodeRetired(Exception):
    """A node that answers that it stopped: it left the experiment (an /end reached it)."""


class Strikes:
    """Failed /health probes by node. A refused connection is a node gone at once; any other
    failure (a reset, a disconnect: what a probe on a saturated link can get) counts only when
    the next probe fails too."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}

    def gone(self, node: str, failure: Exception) -> bool:
        if "connection refused" in str(failure).lower():
            return True
        self.count[node] = self.count.get(node, 0) + 1
        return self.count[node] >= 2

    def clear(self, node: str) -> None:
        self.count.pop(node, None)


HEALTH_ANSWER_S = 5.0  # how long a node may take to answer /health before it counts as silent


def new_experiment_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def keyless_context(cfg: ExperimentConfig) -> bytes:
    """The keyless context from the key folder, for switches and the aggregator (b"" for `none`)."""
    if not cfg.encryption.encrypted:
        return b""
    from hefl.crypto import read_keyless

    return read_keyless(cfg.encryption.he_params(), Path(cfg.encryption.key_dir))


class Controller:
    """What `main.py agg` (and local mode) does from outside the nodes, over HTTP only."""

    def __init__(
        self,
        raw: Mapping[str, Any],
        cfg: ExperimentConfig,
        endpoints: Mapping[str, str],
        experiment: str,
        log_dir: Path,
        token: str = "",
        out: Callable[[str], None] = print,
        watch: Callable[[], None] = lambda: None,
        progress: bool = False,
        pushes: bool = True,
    ) -> None:
        """`watch` raises when the nodes cannot go on (local mode: a node process exited);
        `progress`: redraw a progress line under the round lines (on a terminal)."""
        self.raw, self.cfg, self.endpoints = raw, cfg, dict(endpoints)
        self.experiment = experiment
        self.exp_dir = log_dir / experiment
        self._out = out
        self.progress = Progress(sys.stdout) if progress else None
        self.watch = watch
        self.transport = Transport(endpoints, Timeouts.of(cfg.network), token)
        self.token = token
        # one transport; two more policies for calls of their own: a poll that asks again
        # anyway tries once; /health while the rounds run is brief (a hung node must not hold
        # the controller for minutes), with one retry at once: a kept-alive connection to a
        # node's old worker (restarted) is reset, and a saturated link can drop one connection,
        # without the node being gone
        self.once = Timeouts.of(cfg.network).once()
        self.brief = replace(
            Timeouts.of(cfg.network),
            read=HEALTH_ANSWER_S,
            retries=1,
            backoff=0.0,
            retry_silent=False,
        )
        self.silent_since: dict[str, float] = {}  # nodes that answer nothing, since when
        self.strikes = Strikes()  # nodes whose last probe failed otherwise
        self.dropouts: set[str] = set()  # clients gone while a round deadline lets rounds go on
        # rejoins named, by node and round: the restarted processes (their ids) that said so
        self.rejoins_named: dict[tuple[str, int], set[Any]] = {}
        # what switches and the aggregator are pushed (a controller of a run under way pushes
        # nothing: it needs no key folder)
        self.keyless_context = keyless_context(cfg) if pushes else b""
        self.key_ids: dict[str, str] = {}
        self.open_nodes: list[str] = []  # nodes that said they check no credential
        self.samples: dict[str, int] = {}  # each client's training samples, from its answer
        self.rows: list[RoundRow] = []  # the rounds the aggregator closed so far
        self.record = run_record(experiment, cfg)  # run.json
        self.began = time.monotonic()

    def out(self, line: str) -> None:
        """Print a line (above the progress line, which is redrawn at the next poll)."""
        if self.progress is not None:
            self.progress.clear()
        self._out(line)

    def page_address(self) -> str:
        """The live page on the aggregator, with its read-only key (it sets a cookie and leaves
        the address bar without it); never the credential itself."""
        url = self.endpoints[self.cfg.tree.root] + Kind.PAGE.route.url_path()
        return f"{url}?{TOKEN_PARAM}={read_key(self.token, self.experiment)}" if self.token else url

    def run(self) -> list[RoundRow]:
        """The whole experiment. Whatever ends it, `run.json` says how (status running, then
        finished or failed with the reason), and a failed run still leaves `rounds.json` for the
        rounds that completed and every log the nodes could still give."""
        if (self.exp_dir / "run.json").exists():
            raise ExperimentFailed(
                f"{self.exp_dir} holds a run already: an experiment folder is never rewritten"
            )
        try:
            self.exp_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.exp_dir / "config.json", self.raw)
        except OSError as exc:
            raise ExperimentFailed(f"cannot write the experiment folder: {exc}") from None
        self.began = time.monotonic()
        self.update(started=_now())
        self.write_record()
        return self.guarded(self.start_and_follow)

    def start_and_follow(self) -> list[RoundRow]:
        self.wait_for_nodes()
        self.push_configs()
        self.transport.call(self.cfg.tree.root, Kind.START)
        self.out(f"live: {self.page_address()}  (the aggregator's live page, read only)")
        return self.follow_to_end()

    def follow_to_end(self, shown: int = 0) -> list[RoundRow]:
        rows = self.follow(shown)
        self.collect_logs()
        self.rejoins_in_logs()
        return rows

    def guarded(self, work: Callable[[], list[RoundRow]]) -> list[RoundRow]:
        """Run `work` (the rounds, to the end); whatever ends it, run.json says how."""
        try:
            rows = work()
        except BaseException as exc:
            self.update(
                status="failed",
                error=_reason(exc),
                ended=_now(),
                duration_s=round(time.monotonic() - self.began, 3),
            )
            unwritten = self.salvage(plots=not isinstance(exc, KeyboardInterrupt))
            self.update(rounds_completed=len(self.rows))
            try:
                self.write_record()
            except ExperimentFailed:
                unwritten.append("run.json")
            if unwritten and isinstance(exc, HeflError):  # in the one line that is printed
                raise ExperimentFailed(
                    f"{exc}; not written in {self.exp_dir}: {', '.join(unwritten)}"
                ) from None
            raise
        self.update(
            status="finished",
            ended=_now(),
            duration_s=round(time.monotonic() - self.began, 3),
            rounds_completed=len(self.rows),
        )
        self.write_record()
        self.out(f"logs: {self.exp_dir}")
        for line in node_table(read_logs(self.exp_dir), self.cfg):
            self.out(line)
        self.summarize()
        return rows

    @classmethod
    def of_run(
        cls, run_dir: Path, token: str, out: Callable[[str], None] = print, progress: bool = False
    ) -> Controller:
        """A controller for the run in `run_dir` as its files say (config.json, run.json,
        rounds.json), to take it over or gather it; its nodes at the config's addresses."""
        from hefl.config import parse_config

        try:
            record = RunRecord.from_json(json.loads((run_dir / "run.json").read_text()))
            raw = json.loads((run_dir / "config.json").read_text())
        except (OSError, ValueError, LogFormatError) as exc:
            raise ExperimentFailed(f"{run_dir}: not a run folder ({exc})") from None
        cfg = parse_config(raw)
        ctl = cls(
            raw,
            cfg,
            cfg.default_endpoints(),
            record.experiment,
            run_dir.parent,
            token,
            out,
            progress=progress,
            pushes=False,
        )
        ctl.exp_dir = run_dir
        ctl.record = record
        for fault in record.faults:  # named already: not again
            if fault.event == "rejoined":
                ctl.rejoins_named.setdefault((fault.node, fault.round), set()).add(object())
        try:
            ctl.rows = rows_from_json(json.loads((run_dir / "rounds.json").read_text())) or []
        except (OSError, ValueError):
            ctl.rows = []
        try:  # its duration counts from when it started, not from now
            started = datetime.fromisoformat(record.started or "").timestamp()
            ctl.began = time.monotonic() - max(0.0, time.time() - started)
        except ValueError:
            pass
        return ctl

    def take_over(self) -> list[RoundRow]:
        """`main.py follow` of a run whose controller is gone: this process becomes its
        controller, follows its rounds to the end and writes what the controller would have."""
        self.update(controller_pid=os.getpid(), controller_since=_now(), command=tuple(sys.argv))
        self.write_record()
        try:  # the rounds closed so far were printed by the controller that is gone
            status = _json_object(
                self.transport.call(self.cfg.tree.root, Kind.STATUS, timeouts=self.brief)
            )
            if status.get("experiment") == self.experiment:
                self.rows = list(rows_from_json(status.get("rounds", [])) or [])
        except HeflError as exc:
            log.info("the aggregator's rounds not asked: %s", exc)
        shown = len(self.rows)
        self.out(
            f"experiment {self.experiment}: its controller is gone; this process (pid "
            f"{os.getpid()}) follows it from round {shown + 1} of {self.cfg.rounds}"
        )
        return self.guarded(lambda: self.follow_to_end(shown))

    def gather(self, why: str) -> str:
        """`main.py report` of a run whose controller is gone (`why`): what the nodes hold is
        brought here. A run the nodes still run is left to them ('' is returned: `main.py
        follow` takes it over); one they finished is recorded as finished, with its logs; one
        that failed, or whose aggregator cannot say, as failed, after every node still in it is
        told that it ended. Returns what was done, in a line."""
        try:
            status = _json_object(
                self.transport.call(self.cfg.tree.root, Kind.STATUS, timeouts=self.brief)
            )
        except HeflError as exc:
            status = {"state": "unreachable", "error": str(exc)}
        if status.get("experiment") not in (None, self.experiment):
            status = {
                "state": "unknown",
                "error": f"the aggregator now runs {status['experiment']!r}",
            }
        state = status.get("state")
        if state == "running":
            return ""

        def collect() -> list[RoundRow]:
            if state != "finished":
                raise ExperimentFailed(f"{why}; {status.get('error') or state}")
            rows = rows_from_json(status.get("rounds", [])) or []
            self.rows = list(rows)
            write_json_atomic(self.exp_dir / "rounds.json", [row.to_json() for row in rows])
            self.collect_logs()
            return list(rows)

        try:
            self.guarded(collect)
        except HeflError as exc:
            return f"recorded as failed: {exc}"
        return (
            f"the nodes finished it ({len(self.rows)} rounds): recorded as finished, logs gathered"
        )

    def summarize(self, plots: bool = True) -> bool:
        """summary.json, summary.csv and the plots, from the logs in the folder (what
        `main.py report` rebuilds); a failure to make them is said, never fatal: the logs stand."""
        try:
            from hefl.results.summary import write_summary

            summary = write_summary(self.exp_dir, plots)
            for line in means_lines(summary):  # round 1 left out (warm-up), as it says
                self.out(f"summary: {summary.totals.rounds} rounds; {line}")
        except Exception as exc:  # the run's own files are written; this is an extra
            self.out(f"warning: no summary for {self.exp_dir}: {exc} (main.py report retries)")
            log.info("summary failed", exc_info=True)
            return False
        made = "summary.json and plots (*.png)" if plots else "summary.json"
        self.out(f"results: {self.exp_dir}/summary.csv, {made}")
        return True

    def update(self, **values: Any) -> None:
        """Change fields of run.json's record (written by write_record)."""
        self.record = dataclasses.replace(self.record, **values)

    def write_record(self) -> None:
        """run.json; a folder it cannot write to is an ExperimentFailed (one line)."""
        try:
            write_json_atomic(self.exp_dir / "run.json", self.record.to_json())
        except OSError as exc:
            raise ExperimentFailed(f"cannot write {self.exp_dir / 'run.json'}: {exc}") from None

    def salvage(self, plots: bool = True) -> list[str]:
        """After a failure: the completed rounds into rounds.json, every node still in the
        experiment told it ended (it writes its log and stops its round work), and every log a
        node can still give brought here. Best effort, a few seconds at most; never raises;
        returns what could not be written, with why."""
        unwritten = []
        nodes = list(self.cfg.nodes)
        with ThreadPoolExecutor(max_workers=min(32, len(nodes))) as pool:
            list(pool.map(self._end_and_fetch, nodes))
        seen = len(self.rows)
        self.rows = self.closed_rows()
        for row in self.rows[seen:]:  # closed after the last poll: their lines were not printed
            self.out(format_round(row, self.cfg.rounds))
        try:
            write_json_atomic(self.exp_dir / "rounds.json", [row.to_json() for row in self.rows])
        except OSError as exc:
            unwritten.append(f"rounds.json ({exc.strerror or exc})")
        if self.rows:  # the rounds that completed (no plots when interrupted: quick)
            self.summarize(plots)
        return unwritten

    def closed_rows(self) -> list[RoundRow]:
        """After the nodes were told the run ended: the rounds the aggregator closed, as it says
        now (rounds may have closed since the last poll: a signal comes at any time), never more
        than its log in the folder holds. rounds.json, run.json and the summary all count
        these."""
        rows = self.rows
        try:
            status = _json_object(
                self.transport.call(self.cfg.tree.root, Kind.STATUS, timeouts=self.brief)
            )
            said = rows_from_json(status.get("rounds"))
            if status.get("experiment") == self.experiment and said and len(said) >= len(rows):
                rows = said
        except HeflError as exc:
            log.info("the aggregator's last rounds not asked: %s", exc)
        try:
            agg = json.loads((self.exp_dir / log_name(self.cfg.tree.root)).read_text())
        except (OSError, ValueError, RecursionError):
            return list(rows)  # no log of it here: what it said is all there is
        return list(rows[: rounds_closed(agg)])

    def _end_and_fetch(self, node: str) -> None:
        try:  # briefly: a hung node must not hold the record back
            self.transport.call(node, Kind.END, arg=self.experiment, timeouts=self.brief)
        except HeflError as exc:
            log.info("%s not told the experiment ended: %s", node, exc)
            return
        if not _finished(self.exp_dir / log_name(node)):
            try:
                data = self.transport.call(
                    node, Kind.LOG, arg=self.experiment, timeouts=self.once
                ).json()
                write_json_atomic(self.exp_dir / log_name(node), data)
            except (HeflError, ValueError, OSError) as exc:
                log.info("log of %s not fetched: %s", node, exc)

    def wait_for_nodes(self) -> None:
        """Poll /health until every node answers; at the deadline name every silent node."""
        deadline = time.monotonic() + self.cfg.network.startup_timeout_s
        pending = {n: "not tried" for n in self.cfg.nodes}
        said = False
        while pending:
            self.watch()
            for node in list(pending):
                try:
                    self.transport.call(node, Kind.HEALTH, timeouts=self.once)
                    del pending[node]
                except HeflError as exc:
                    pending[node] = str(exc)
            if pending and not said:
                said = True
                self.out(
                    f"waiting for {len(pending)} of {len(self.cfg.nodes)} nodes to answer /health "
                    f"(at most {self.cfg.network.startup_timeout_s:g}s: "
                    "network.startup_timeout_s)"
                )
            if pending and time.monotonic() > deadline:
                detail = "; ".join(
                    f"{n} ({self.endpoints[n]}): {why.split(': ')[-1]}"
                    for n, why in pending.items()
                )
                raise PeerUnreachable(
                    f"{len(pending)} node(s) not answering /health after "
                    f"{self.cfg.network.startup_timeout_s:g}s: {detail}"
                )
            if pending:
                time.sleep(0.3)
        self.out(f"all {len(self.cfg.nodes)} nodes answer; experiment {self.experiment}")

    def push_configs(self) -> None:
        """POST every node its config, all at once; each refusal is named before anything starts."""
        self.out("pushing configs (clients load their data and torch: a few seconds)")
        started = time.monotonic()
        clients = self.cfg.tree.client_nodes()
        adders = [n for n in self.cfg.nodes if n not in clients]
        # clients first: their answers declare their sample counts, which the adders then check
        with ThreadPoolExecutor(max_workers=min(32, len(self.cfg.nodes))) as pool:
            errors = [e for e in pool.map(self._push, clients) if e]
            if not errors:
                errors = [e for e in pool.map(self._push, adders) if e]
        if errors:
            raise ConfigError(f"{len(errors)} node(s) refused their config: " + " | ".join(errors))
        if self.open_nodes:
            self.out(
                f"warning: {len(self.open_nodes)} node(s) run without a credential (anyone who "
                f"reaches them can configure them and post updates): {', '.join(self.open_nodes)}"
            )
        ids = {self.key_ids.get(n, "") for n in self.cfg.tree.client_nodes()}
        if len(ids) > 1:
            found = ", ".join(f"{n}={self.key_ids.get(n)}" for n in self.cfg.tree.client_nodes())
            raise ConfigError(
                f"clients hold different key pairs ({found}): copy one ./seal.sh run to all of "
                "them (ansible-playbook deploy/keys.yml)"
            )
        self.out(
            f"configured {len(self.cfg.nodes)} nodes in {time.monotonic() - started:.1f} s; "
            f"running {self.cfg.rounds} rounds"
        )

    def _push(self, node: str) -> str:
        """Push one node its config; '' when it took it, else what went wrong (one line). A 409
        answers a retried push the node had taken (its /health then tells its key id) or an
        experiment id the node has a log of already (a refusal)."""
        is_client = self.cfg.nodes[node].type == "client"
        samples = None if is_client else self.samples
        body = make_push(
            self.raw, node, self.experiment, self.endpoints, self.keyless_context, samples
        )
        try:
            resp = send_push(self.transport, node, body)
            state = _json_object(resp)
            if resp.status_code == 409:
                refusal = str(state.get("error", ""))
                state = _json_object(self.transport.call(node, Kind.HEALTH))
                if (state.get("experiment"), state.get("node")) != (self.experiment, node):
                    return f"{node} refused its config: 409 {refusal}"
        except HeflError as exc:
            return str(exc)
        key_id = str(state.get("key_id") or "")
        if is_client and self.cfg.encryption.encrypted and not key_id:
            return f"{node} did not say which key pair it loaded (no key_id in its answer)"
        self.key_ids[node] = key_id
        machine = state.get("machine")
        entry = RunNode(
            self.cfg.nodes[node].type,
            key_id or None,
            machine if isinstance(machine, dict) else None,
        )
        self.update(nodes={**self.record.nodes, node: entry})
        if is_client:
            declared = _declared_samples(state, self.cfg.tree.hosted(node))
            if isinstance(declared, str):
                return f"{node} did not declare its training samples ({declared})"
            self.samples.update(declared)
        if state.get("credential") is False:
            self.open_nodes.append(node)
        return ""

    def follow(self, shown: int = 0) -> list[RoundRow]:
        """Print each round as the aggregator closes it (after the first `shown`, printed
        already); stop on failure or a stalled round."""
        last_progress = began = time.monotonic()
        last_check = began - HEALTH_EVERY_S  # at once: the progress line shows what nodes do
        while True:
            self.watch()
            try:
                status = self.transport.call(self.cfg.tree.root, Kind.STATUS).json()
            except PeerRestarted as exc:
                raise ExperimentFailed(
                    f"{exc.headline} (seen by the controller asking for /status: {exc})"
                ) from None
            rows = rows_from_json(status.get("rounds", [])) or []
            self.rows = list(rows)
            for row in rows[shown:]:
                self.out(format_round(row, self.cfg.rounds))
            if len(rows) > shown:
                shown, last_progress = len(rows), time.monotonic()
            if self.progress is not None and status["state"] == "running":
                self.progress.draw(rows, self.cfg.rounds, time.monotonic() - began)
            if status["state"] == "failed":
                raise ExperimentFailed(status["error"])
            if status["state"] == "finished":
                write_json_atomic(self.exp_dir / "rounds.json", [row.to_json() for row in rows])
                return list(rows)
            if time.monotonic() - last_progress > self.cfg.network.round_timeout_s:
                raise ExperimentFailed(
                    f"round {shown + 1} did not finish within "
                    f"{self.cfg.network.round_timeout_s:g}s (network.round_timeout_s); "
                    f"node states: {self.states()}"
                )
            if time.monotonic() - last_check > HEALTH_EVERY_S:
                self.check_nodes(shown)
                last_check = time.monotonic()
            time.sleep(0.2)

    def check_nodes(self, round_: int) -> None:
        """Stop early when a node died (refuses connections), failed, was taken over by another
        experiment, or has answered nothing for network.round_timeout_s (hung or paused: it
        takes the connection and never answers). Every node is asked at once, briefly."""
        now = time.monotonic()
        limit = self.cfg.network.round_timeout_s
        healths = self.healths()
        if self.progress is not None:
            self.progress.phases(
                [
                    h.get("phase", "")
                    for n, h in healths.items()
                    if isinstance(h, dict) and self.cfg.nodes[n].type == "client"
                ]
            )
        for node, health in healths.items():
            if isinstance(health, dict):
                self.rejoined(node, health)
            if isinstance(health, dict) and health.get("state") == "stopped":
                health = NodeRetired(
                    f"{node} was retired during round {round_ + 1}: its /health says stopped "
                    "(an /end for this experiment reached it)"
                )
            if self.dropout(node, round_, health):
                continue
            if isinstance(health, NodeRetired):
                raise ExperimentFailed(str(health))
            if isinstance(health, PeerUnreachable) and health.silent:
                since = self.silent_since.setdefault(node, now)
                if now - since > limit:
                    raise ExperimentFailed(
                        f"{node} answered neither its round nor /health for {limit:g}s "
                        f"(network.round_timeout_s) during round {round_ + 1}: hung or paused"
                    )
                continue
            if isinstance(health, Exception):
                if not self.strikes.gone(node, health):
                    continue  # one reset or disconnect: asked again at the next probe
                raise ExperimentFailed(
                    f"{node} stopped answering during round {round_ + 1}: {health}"
                ) from None
            self.silent_since.pop(node, None)
            self.strikes.clear(node)
            if health.get("state") == "failed":
                raise ExperimentFailed(health.get("error") or f"{node} failed")
            if health.get("state") == "idle":  # it answers, with no experiment: a new process
                raise ExperimentFailed(
                    f"{restarted(node)} (seen by the controller in round {round_ + 1})"
                )
            if health.get("experiment") != self.experiment:
                raise ExperimentFailed(
                    f"{node} now runs experiment {health.get('experiment')!r}, "
                    f"not {self.experiment!r}"
                )

    def collect_logs(self) -> None:
        """Bring every node's finished log into the experiment folder (nodes that share it, as in
        local mode, wrote theirs there already); a node still writing its last round is asked
        again."""
        deadline = time.monotonic() + self.cfg.network.read_timeout_s
        healths = self.healths() if self.dropouts else {}  # a dropout may be back (rejoined)
        for node, health in healths.items():
            if node in self.dropouts and isinstance(health, dict):
                self.rejoined(node, health)
                self.dropout(node, self.cfg.rounds - 1, health)
        missing = [
            n
            for n in self.cfg.nodes
            if n not in self.dropouts and not _finished(self.exp_dir / log_name(n))
        ]
        while missing:
            missing = [n for n in missing if not self._fetch_log(n)]
            if missing and self.cfg.policy.tolerate_dropouts:  # a client gone at the very end
                healths = self.healths()
                missing = [
                    n for n in missing if not self.dropout(n, self.cfg.rounds - 1, healths[n])
                ]
            if missing and time.monotonic() > deadline and self.cfg.policy.tolerate_dropouts:
                # a client that rejoined too late for the last results (its parent stopped
                # trying): a dropout of the last rounds, its log kept as it stands
                for node in [n for n in missing if self.cfg.nodes[n].type == "client"]:
                    self.out(
                        f"{node} did not finish its log within "
                        f"{self.cfg.network.read_timeout_s:g}s (network.read_timeout_s): a "
                        "dropout of the last rounds; its log as it stands is kept"
                    )
                    self.dropouts.add(node)
                    self.fault(node, self.cfg.rounds - 1, "dropout")
                missing = [n for n in missing if n not in self.dropouts]
            if missing and time.monotonic() > deadline:
                raise ExperimentFailed(
                    f"logs not finished within {self.cfg.network.read_timeout_s:g}s "
                    f"(network.read_timeout_s) on {missing}; the rest are in {self.exp_dir}"
                )
            if missing:
                time.sleep(0.2)

    def _fetch_log(self, node: str) -> bool:
        try:
            data = self.transport.call(
                node, Kind.LOG, arg=self.experiment, timeouts=self.once
            ).json()  # asked again
        except (HeflError, ValueError) as exc:
            log.warning("log of %s not fetched: %s", node, exc)
            return False
        write_json_atomic(self.exp_dir / log_name(node), data)
        return _finished_log(data)

    def fault(self, node: str, round_: int, event: str, write: bool = True) -> None:
        """Record what happened to a node in run.json (`faults`), as the controller saw it."""
        self.update(faults=(*self.record.faults, Fault(node, round_, event, _now())))
        if not write:
            return
        try:
            self.write_record()
        except ExperimentFailed as exc:  # said; the run goes on, and run.json is tried again
            log.warning("%s", exc)

    def rejoined(self, node: str, health: dict[str, Any]) -> None:
        """A client whose process restarted and took up its state from its own disk says the
        round it rejoined at in /health: named once per restart."""
        at = health.get("rejoined_at")
        if not isinstance(at, int) or isinstance(at, bool) or health.get("node") != node:
            return
        named = self.rejoins_named.setdefault((node, at), set())
        if health.get("restart_id") not in named:  # one line per restart
            named.add(health.get("restart_id"))
            self.dropouts.discard(node)  # back: not said again as "answers again"
            self.name_rejoin(node, at)

    def name_rejoin(self, node: str, at: int, write: bool = True) -> None:
        self.out(f"{node} restarted and lost its state; rejoined at round {at + 1}")
        self.fault(node, at, "rejoined", write)

    def rejoins_in_logs(self) -> None:
        """At the end: the rejoins the nodes' logs record that no probe saw (a run that went on
        for less than a probe's interval after a restart), named as the probes would have. A
        log says what it likes: only clients' rejoins at rounds of the run count, each round at
        most a few times (a log of thousands is not thousands of lines), and run.json is
        written once."""
        named_any = False
        for node, node_log in read_logs(self.exp_dir).items():
            if node not in self.cfg.nodes or self.cfg.nodes[node].type != "client":
                continue
            said = Counter(r for r in node_log.rejoined or () if 0 <= r < self.cfg.rounds)
            for at, times in sorted(said.items()):
                named = self.rejoins_named.setdefault((node, at), set())
                while len(named) < min(times, MAX_REJOINS):
                    named.add(object())
                    self.name_rejoin(node, at, write=False)
                    named_any = True
        if named_any:
            self.write_record()

    def dropout(self, node: str, round_: int, health: dict[str, Any] | Exception) -> bool:
        """With a round deadline, a client that stops answering is a dropout, not a failure: the
        aggregator completes rounds without it while at least min_clients contribute (and stops
        the run when fewer do). Said once."""
        if not self.cfg.policy.tolerate_dropouts or self.cfg.nodes[node].type != "client":
            return False
        if not isinstance(health, Exception):
            if node in self.dropouts:  # a straggler, paused or slow: it takes part again
                self.dropouts.discard(node)
                self.out(f"{node} answers again (round {round_ + 1})")
                self.fault(node, round_, "back")
            return False
        if node not in self.dropouts:
            self.dropouts.add(node)
            self.fault(node, round_, "dropout")
            self.out(
                f"{node} stopped answering in round {round_ + 1}: a dropout (rounds go on with "
                f"at least {self.cfg.policy.min_clients} clients)"
            )
        return True

    def healths(self) -> dict[str, dict[str, Any] | Exception]:
        """Every node's /health, asked at once with a short timeout and no retries: its answer,
        or the error (PeerUnreachable.silent: it took the connection and said nothing)."""

        def ask(node: str) -> dict[str, Any] | Exception:
            try:
                return _json_object(self.transport.call(node, Kind.HEALTH, timeouts=self.brief))
            except HeflError as exc:
                return exc

        nodes = list(self.cfg.nodes)
        with ThreadPoolExecutor(max_workers=min(32, len(nodes))) as pool:
            return dict(zip(nodes, pool.map(ask, nodes), strict=True))

    def states(self) -> str:
        found = []
        for node, st in self.healths().items():
            if isinstance(st, PeerUnreachable) and st.silent:
                found.append(f"{node}=silent (no answer within {HEALTH_ANSWER_S:g}s: hung?)")
            elif isinstance(st, Exception):
                found.append(f"{node}=unreachable")
            else:
                found.append(f"{node}={st.get('state')}@{(st.get('round') or 0) + 1}")
        return ", ".join(found)


class Progress:
    """One line under the round lines, redrawn in place: round i/N, what the clients are doing,
    elapsed, ETA, the last accuracy and the clients' bytes so far."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.drawn = False
        self.doing = ""

    def phases(self, phases: list[str]) -> None:
        counts = Counter(p for p in phases if p)
        self.doing = "clients: " + ", ".join(f"{p} {n}" for p, n in sorted(counts.items()))

    def draw(self, rows: list[RoundRow], rounds: int, elapsed: float) -> None:
        done = len(rows)
        bar = "#" * (20 * done // rounds) + "." * (20 - 20 * done // rounds)
        eta = f"ETA {elapsed / done * (rounds - done):.0f} s" if done else "ETA ?"
        accuracy = rows[-1].accuracy if rows else None
        sent = sum(r.client_byte_send for r in rows)
        text = (
            f"[{bar}] round {min(done + 1, rounds)}/{rounds}  {self.doing}  {elapsed:.0f} s  "
            f"{eta}  accuracy {'n/a' if accuracy is None else format(accuracy, '.4f')}  "
            f"clients sent {human_bytes(sent)}"
        )
        width = max(20, shutil.get_terminal_size().columns - 1)
        self.stream.write("\r\x1b[K" + text[:width])
        self.stream.flush()
        self.drawn = True

    def clear(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.drawn = False


def effective_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config with every default filled in, as it was given: the tables derived from it (its
    logical clients) are left out; the primes' bit sizes are the scheme's when left to it."""
    derived = {f.name for f in dataclasses.fields(cfg) if not f.init}
    out = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in derived}
    out["encryption"]["coeff_mod_bit_sizes"] = list(coeffs(cfg.he_params()))
    return out


def run_record(experiment: str, cfg: ExperimentConfig) -> RunRecord:
    """What run.json holds when a run starts: the effective config (every default filled in),
    the code and package versions, this machine, the seeds, the command line; the nodes' machines
    and key ids are added as they take their configs, the outcome at the end. Key ids only,
    never key material."""
    return RunRecord(
        experiment=experiment,
        started=_now(),
        command=tuple(sys.argv),
        cwd=os.getcwd(),
        controller_pid=os.getpid(),
        code=code_version(),
        versions=versions(),
        controller=machine(),
        seeds={
            "training.seed": cfg.training.seed,
            "derived": "every other seed comes from training.seed, one stream per purpose "
            "(numpy SeedSequence spawn keys: hefl/seeds.py)",
            "unseeded": (
                "Paillier's r (the secrets module)"
                if cfg.encryption.scheme == "paillier"
                else "CKKS and BFV encryption noise (SEAL's own randomness)"
            )
            if cfg.encryption.encrypted
            else None,
        },
        config=effective_config(cfg),
        # what the run encrypts with, every default resolved (primes, scale, plain modulus,
        # values per ciphertext): hefl/crypto/params.py in_effect
        encryption=in_effect(cfg.he_params()),
    )


def _finished(path: Path) -> bool:
    """Whether a node log on disk is complete (its last round written)."""
    try:
        return _finished_log(json.loads(path.read_text()))
    except (OSError, ValueError, RecursionError):
        return False


def _finished_log(data: Any) -> bool:
    """Whether a node log (JSON data) is complete."""
    try:
        return NodeLog.from_json(data).finished
    except LogFormatError:
        return False


def _json_object(resp: Any) -> dict[str, Any]:
    """A node's JSON answer as a dict ({} for anything else: the caller names what is missing)."""
    try:
        data = resp.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _now() -> str:
    """Wall-clock time of this machine, ISO 8601 with its offset (for people, not for durations)."""
    return datetime.now(UTC).astimezone().isoformat(timespec="seconds")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        signum = getattr(exc, "signum", signal.SIGINT)
        return f"interrupted ({signal.Signals(signum).name})"
    return str(exc) or type(exc).__name__


def _declared_samples(state: dict[str, Any], hosted: tuple[str, ...]) -> dict[str, int] | str:
    """Each hosted client's training samples from a client node's answer (`clients`, or a node
    of one client's `samples`), or what is wrong with them."""
    counts = state.get("clients")
    if not isinstance(counts, dict):
        counts = {hosted[0]: state.get("samples")} if len(hosted) == 1 else None
    if counts is None or set(counts) != set(hosted):
        return f"expected the samples of {len(hosted)} client(s), got {state.get('clients')!r}"[
            :200
        ]
    for n in counts.values():
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            return f"got {n!r}"
    return dict(counts)
