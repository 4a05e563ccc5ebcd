"""Drive an experiment: wait for the nodes, push their configs, start, follow the rounds, report."""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hefl.address import log_name
from hefl.config import ExperimentConfig
from hefl.errors import ConfigError, ExperimentFailed, HeflError, PeerUnreachable
from hefl.push import make_push
from hefl.report import format_round, node_table, read_logs
from hefl.runlog import write_json_atomic
from hefl.transport import Timeouts, Transport
from hefl.wire import Kind

log = logging.getLogger(__name__)


HEALTH_EVERY_S = 3.0  # how often the controller checks that every node is alive


def new_experiment_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def keyless_context(cfg: ExperimentConfig) -> bytes:
    """The keyless context from the key folder, for switches and the aggregator (b"" for `none`)."""
    if cfg.encryption.scheme == "none":
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
    ) -> None:
        """`watch` raises when the nodes cannot go on (local mode: a node process exited)."""
        self.raw, self.cfg, self.endpoints = raw, cfg, dict(endpoints)
        self.experiment = experiment
        self.exp_dir = log_dir / experiment
        self.out = out
        self.watch = watch
        self.transport = Transport(endpoints, Timeouts.of(cfg.network), token)
        # polls retry anyway
        self.probe = Transport(endpoints, Timeouts.of(cfg.network).once(), token)
        self.keyless_context = keyless_context(cfg)
        self.key_ids: dict[str, str] = {}
        self.open_nodes: list[str] = []  # nodes that said they check no credential
        self.samples: dict[str, int] = {}  # each client's training samples, from its answer

    def run(self) -> list[dict[str, Any]]:
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.exp_dir / "config.json", self.raw)
        self.wait_for_nodes()
        self.push_configs()
        self.transport.call(self.cfg.root, Kind.START)
        rows = self.follow()
        self.collect_logs()
        self.out(f"logs: {self.exp_dir}")
        for line in node_table(read_logs(self.exp_dir), self.cfg):
            self.out(line)
        return rows

    def wait_for_nodes(self) -> None:
        """Poll /health until every node answers; at the deadline name every silent node."""
        deadline = time.monotonic() + self.cfg.network.startup_timeout_s
        pending = {n: "not tried" for n in self.cfg.nodes}
        while pending:
            self.watch()
            for node in list(pending):
                try:
                    self.probe.call(node, Kind.HEALTH)
                    del pending[node]
                except HeflError as exc:
                    pending[node] = str(exc)
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
        clients = self.cfg.clients()
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
        ids = {self.key_ids.get(n, "") for n in self.cfg.clients()}
        if len(ids) > 1:
            found = ", ".join(f"{n}={self.key_ids.get(n)}" for n in self.cfg.clients())
            raise ConfigError(
                f"clients hold different key pairs ({found}): copy one ./seal.sh run to all of "
                "them (deploy/cluster.sh keys)"
            )
        self.out(
            f"configured {len(self.cfg.nodes)} nodes in {time.monotonic() - started:.1f} s; "
            f"running {self.cfg.rounds} rounds"
        )

    def _push(self, node: str) -> str:
        """Push one node its config; '' when it took it, else what went wrong (one line). A 409
        answers a retried push the node had taken (its /health then tells its key id) or an
        experiment id the node has a log of already (a refusal)."""
        samples = None if node in self.cfg.clients() else self.samples
        body = make_push(
            self.raw, node, self.experiment, self.endpoints, self.keyless_context, samples
        )
        try:
            resp = self.transport.call(node, Kind.CONFIG, json.dumps(body).encode())
            state = _json_object(resp)
            if resp.status_code == 409:
                refusal = str(state.get("error", ""))
                state = _json_object(self.transport.call(node, Kind.HEALTH))
                if (state.get("experiment"), state.get("node")) != (self.experiment, node):
                    return f"{node} refused its config: 409 {refusal}"
        except HeflError as exc:
            return str(exc)
        key_id = str(state.get("key_id") or "")
        if node in self.cfg.clients() and self.cfg.encryption.scheme != "none" and not key_id:
            return f"{node} did not say which key pair it loaded (no key_id in its answer)"
        self.key_ids[node] = key_id
        if node in self.cfg.clients():
            samples = state.get("samples")
            if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
                return f"{node} did not declare its training samples (got {samples!r})"
            self.samples[node] = samples
        if state.get("credential") is False:
            self.open_nodes.append(node)
        return ""

    def follow(self) -> list[dict[str, Any]]:
        """Print each round as the aggregator closes it; stop on failure or a stalled round."""
        shown = 0
        last_progress = last_check = time.monotonic()
        while True:
            self.watch()
            status = self.transport.call(self.cfg.root, Kind.STATUS).json()
            rows = status.get("rounds", [])
            for row in rows[shown:]:
                self.out(format_round(row, self.cfg.rounds))
            if len(rows) > shown:
                shown, last_progress = len(rows), time.monotonic()
            if status["state"] == "failed":
                raise ExperimentFailed(status["error"])
            if status["state"] == "finished":
                write_json_atomic(self.exp_dir / "rounds.json", rows)
                return list(rows)
            if time.monotonic() - last_progress > self.cfg.network.round_timeout_s:
                raise ExperimentFailed(
                    f"round {shown} did not finish within {self.cfg.network.round_timeout_s:g}s "
                    f"(network.round_timeout_s); node states: {self.states()}"
                )
            if time.monotonic() - last_check > HEALTH_EVERY_S:
                self.check_nodes(shown)
                last_check = time.monotonic()
            time.sleep(0.2)

    def check_nodes(self, round_: int) -> None:
        """Stop early when a node died, failed, or was taken over by another experiment."""
        for node in self.cfg.nodes:
            try:
                health = self.transport.call(node, Kind.HEALTH).json()
            except HeflError as exc:
                raise ExperimentFailed(
                    f"{node} stopped answering during round {round_ + 1}: {exc}"
                ) from None
            if health.get("state") == "failed":
                raise ExperimentFailed(health.get("error") or f"{node} failed")
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
        missing = [n for n in self.cfg.nodes if not _finished(self.exp_dir / log_name(n))]
        while missing:
            missing = [n for n in missing if not self._fetch_log(n)]
            if missing and time.monotonic() > deadline:
                raise ExperimentFailed(
                    f"logs not finished within {self.cfg.network.read_timeout_s:g}s "
                    f"(network.read_timeout_s) on {missing}; the rest are in {self.exp_dir}"
                )
            if missing:
                time.sleep(0.2)

    def _fetch_log(self, node: str) -> bool:
        try:
            data = self.transport.call(node, Kind.LOG, arg=self.experiment).json()
        except (HeflError, ValueError) as exc:
            log.warning("log of %s not fetched: %s", node, exc)
            return False
        write_json_atomic(self.exp_dir / log_name(node), data)
        return bool(data.get("finished"))

    def states(self) -> str:
        found = []
        for node in self.cfg.nodes:
            try:
                st = self.transport.call(node, Kind.HEALTH).json()
                found.append(f"{node}={st.get('state')}@{st.get('round')}")
            except HeflError:
                found.append(f"{node}=unreachable")
        return ", ".join(found)


def _finished(path: Path) -> bool:
    """Whether a node log on disk is complete (its last round written)."""
    try:
        return bool(json.loads(path.read_text()).get("finished"))
    except (OSError, ValueError, AttributeError):
        return False


def _json_object(resp: Any) -> dict[str, Any]:
    """A node's JSON answer as a dict ({} for anything else: the caller names what is missing)."""
    try:
        data = resp.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
