"""Many logical clients on one client node (`clients: k`, `local_sum`): the config's arithmetic, the
aggregator's checks of a node's report, and real local runs that must equal single-client nodes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hefl.config import host_clients, parse_config
from hefl.errors import ConfigError, ProtocolError
from hefl.node.metrics import ClientMetrics, MetricsReport, parse_metrics
from hefl.node.nodes.aggregator import AggregatorNode
from hefl.node.wire import Envelope, Kind
from hefl.records import RoundRow
from hefl.results.summary import summarize
from tests.helpers import EXP, Run, experiment_dir, make, node_logs, run_main, tree_config
from tests.memnet import MemoryNetwork

LEAF0, LEAF1, SPINE, AGG = "127.0.0.1:10", "127.0.0.1:11", "127.0.0.1:2", "127.0.0.1:1"
N0, N1 = "127.0.0.1:100", "127.0.0.1:101"


def hosting(per_node: int, nodes: int = 2, leaves: int = 2, **kw: Any) -> dict[str, Any]:
    """`nodes` client nodes under `leaves` leaf switches and a spine, each hosting `per_node`."""
    return host_clients(tree_config(clients=nodes, leaves=leaves, **kw), per_node)


# ---------------------------------------------------------------- the config


def test_each_node_takes_consecutive_slices_under_ids_of_its_address() -> None:
    raw = hosting(3)
    assert [raw["others"][n]["index"] for n in (N0, N1)] == [0, 3]
    cfg = parse_config(raw)
    assert cfg.tree.clients() == tuple(f"{n}#{j}" for n in (N0, N1) for j in range(3))
    assert cfg.tree.client_nodes() == (N0, N1)
    assert [cfg.tree.logical[c].index for c in cfg.tree.clients()] == list(range(6))
    assert cfg.tree.node_of(f"{N1}#2") == N1
    assert cfg.tree.mask([f"{N1}#0", f"{N0}#1"]) == 0b1010
    assert cfg.tree.members(0b1010) == (f"{N0}#1", f"{N1}#0")
    # each client sends under its own id: the leaf counts and dedupes them one by one
    assert cfg.tree.contributors(LEAF0) == (f"{N0}#0", f"{N0}#1", f"{N0}#2")
    assert cfg.tree.clients_under(SPINE) == cfg.tree.clients()
    assert cfg.tree.clients_under(f"{N0}#1") == (f"{N0}#1",)
    assert cfg.tree.clients_under("127.0.0.1:100#7") == ()  # no such client
    assert cfg.policy.min_clients == 6


def test_a_node_that_adds_its_own_clients_sends_once_under_its_address() -> None:
    raw = hosting(3)
    raw["others"][N0]["local_sum"] = True
    cfg = parse_config(raw)
    assert cfg.tree.contributors(LEAF0) == (N0,)
    assert cfg.tree.clients_under(N0) == (f"{N0}#0", f"{N0}#1", f"{N0}#2")
    assert cfg.tree.contributors(LEAF1) == (f"{N1}#0", f"{N1}#1", f"{N1}#2")


def test_one_client_per_node_keeps_the_config_and_ids_as_they_were() -> None:
    raw = tree_config(clients=4, leaves=2)
    assert host_clients(raw, 1)["others"] == raw["others"]
    cfg = parse_config(raw)
    assert (
        cfg.tree.clients()
        == cfg.tree.client_nodes()
        == tuple(f"127.0.0.1:{100 + i}" for i in range(4))
    )


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({N1: {"index": 2}}, rf"others\['{N1}'\].index: slice 2 is also a slice of '{N0}'"),
        (
            {N1: {"index": 4}},
            rf"others\['{N1}'\].index: 4 with 3 clients \(slices 4..6\) is not in 0..5",
        ),
        (
            {N0: {"clients": 2}, N1: {"index": 2}},
            r"others: client_number is 6 but the config has 5 logical clients",
        ),
        ({N0: {"clients": 0}}, rf"others\['{N0}'\].clients: must be in 1..16384, got 0"),
    ],
)
def test_slices_that_overlap_leave_gaps_or_overflow_are_refused(
    change: dict[str, dict[str, Any]], error: str
) -> None:
    raw = hosting(3)
    for node, values in change.items():
        raw["others"][node].update(values)
    with pytest.raises(ConfigError, match=error):
        parse_config(raw)


def test_an_experiment_holds_at_most_16384_clients() -> None:
    raw = hosting(8192)
    assert len(parse_config(raw).tree.clients()) == 16384
    raw = hosting(8193)
    with pytest.raises(
        ConfigError, match="16386 clients in all; an experiment holds at most 16384"
    ):
        parse_config(raw)


def test_local_sum_is_a_client_key_only() -> None:
    raw = hosting(2)
    raw["others"][LEAF0]["local_sum"] = True
    with pytest.raises(ConfigError, match=r"others\['127.0.0.1:10'\]: unknown key 'local_sum'"):
        parse_config(raw)


# ckks: clients x clip below 2^(40 - 1 - 30) = 512; bfv: 2^(23-bit lane - 16 quant bits) = 128
@pytest.mark.parametrize(("scheme", "most"), [("ckks", 511), ("bfv", 128)])
def test_the_schemes_headroom_counts_logical_clients(scheme: str, most: int) -> None:
    raw = hosting(most - most // 2, encryption={"scheme": scheme})
    raw["others"][N1]["clients"] = most // 2
    for node in (N0, N1):
        raw["others"][node]["client_number"] = most
    assert len(parse_config(raw).tree.clients()) == most
    raw["others"][N1]["clients"] += 1
    for node in (N0, N1):
        raw["others"][node]["client_number"] = most + 1
    with pytest.raises(ConfigError, match=f"holds the sum of at most {most} clients"):
        parse_config(raw)


def test_min_clients_counts_logical_clients() -> None:
    raw = hosting(3, network={"round_deadline_s": 5})
    raw["aggregator"]["min_clients"] = 6
    assert parse_config(raw).policy.min_clients == 6
    raw["aggregator"]["min_clients"] = 7
    with pytest.raises(ConfigError, match="7 is more than the 6 clients"):
        parse_config(raw)


def test_a_sweep_varies_the_clients_per_node() -> None:
    from hefl.control.sweep import apply

    out = apply(
        tree_config(clients=2, leaves=2), {"others.*.clients": 4, "others.*.local_sum": True}
    )
    cfg = parse_config(out)
    assert len(cfg.tree.clients()) == 8 and cfg.tree.contributors(LEAF0) == (N0,)
    one = parse_config(apply(tree_config(clients=2, leaves=2), {"others.*.local_sum": True}))
    assert one.tree.contributors(LEAF0) == (N0,) and one.tree.clients() == (
        N0,
        N1,
    )  # nothing to add
    with pytest.raises(ConfigError, match="not a positive whole number"):
        apply(tree_config(clients=2, leaves=2), {"others.*.clients": 0})


# ---------------------------------------------------------------- the aggregator's checks


def test_the_aggregator_takes_one_report_per_node_with_each_clients_figures(
    tmp_path: Path,
) -> None:
    cfg = parse_config(hosting(2, rounds=1))
    agg, _ = make(AggregatorNode, AGG, cfg, tmp_path)
    agg.begin_experiment()
    total = agg.scheme.encrypt(np.zeros(agg.scheme.size))
    agg.on_update(Envelope(EXP, 0, SPINE, 100, 4), total)

    def report(node: str, figures: list[tuple[str, float, int]], tests: int = 0) -> bytes:
        clients = tuple(ClientMetrics(c, 0.5, acc, n) for c, acc, n in figures)
        return MetricsReport(
            0.5, 0.5, tests or sum(n for *_, n in figures), 10, 20, clients
        ).encode()

    env = Envelope(EXP, 0, N0, 30, 2, 0b11)
    with pytest.raises(ProtocolError, match=r"'clients' must be 127.0.0.1:100#0 .. .*#1 in order"):
        agg.on_metrics(env, report(N0, [(f"{N0}#1", 1.0, 10), (f"{N0}#0", 1.0, 20)]))
    with pytest.raises(ProtocolError, match="is not the sum of its clients'"):
        agg.on_metrics(env, report(N0, [(f"{N0}#0", 1.0, 10), (f"{N0}#1", 1.0, 20)], tests=31))
    with pytest.raises(ProtocolError, match="'clients' must be"):  # the figures are not optional
        agg.on_metrics(env, report(N0, [], tests=30))
    agg.on_metrics(env, report(N0, [(f"{N0}#0", 1.0, 10), (f"{N0}#1", 0.7, 20)]))
    assert not agg.status()["rounds"]  # the other node's report is still due
    agg.on_metrics(
        Envelope(EXP, 0, N1, 40, 2, 0b1100),
        report(N1, [(f"{N1}#0", 0.2, 30), (f"{N1}#1", 0.0, 10)]),
    )
    (row,) = agg.status()["rounds"]
    assert row["accuracy"] == pytest.approx((10 + 0.7 * 20 + 0.2 * 30) / 70)
    assert row["reports"] == 4 and row["contributors"] == 4
    assert row["client_byte_send"] == 20  # what the two nodes sent, not per client


def test_a_report_of_one_client_is_the_message_it_always_was() -> None:
    body = MetricsReport(0.5, 0.75, 9, 1, 2).encode()
    assert json.loads(body) == {
        "loss": 0.5,
        "accuracy": 0.75,
        "test_samples": 9,
        "byte_send": 1,
        "byte_received": 2,
    }
    got = parse_metrics(
        MetricsReport(0.5, 0.75, 9, 1, 2, (ClientMetrics("a", 0.5, 1.0, 9),)).encode(), "n"
    )
    assert got.figures("n") == [("a", 9, 0.5, 1.0)]
    with pytest.raises(ProtocolError, match=r"report.clients\[0\].accuracy: must be in 0..1"):
        parse_metrics(
            b'{"loss": 1, "accuracy": 1, "test_samples": 1, "byte_send": 0, "byte_received": 0,'
            b' "clients": [{"client": "a", "loss": 1, "accuracy": 2, "test_samples": 1}]}',
            "n",
        )


# ---------------------------------------------------------------- real runs


def run(tmp_path: Path, name: str, raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`main.py local` on `raw`; the run's node logs by node id, plus the folder (`exp`)."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(raw))
    proc = run_main("local", "--config", str(path), "--log-dir", str(tmp_path / name), timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return node_logs(experiment_dir(tmp_path / name))


def check_links(logs: dict[str, dict[str, Any]], rounds: int) -> None:
    """Per round and link, what one end logged as sent the other logged as received, in bytes and
    messages; a node's links add up to its totals."""
    for r in range(rounds):
        recs = {n: d["iteration"][r] for n, d in logs.items()}
        for node, rec in recs.items():
            for peer, counts in rec["links"].items():
                other = recs[peer]["links"][node]
                for d in ("up", "down", "control"):
                    assert counts[f"sent_{d}"] == other[f"received_{d}"], (r, node, peer, d)
                    assert counts[f"received_{d}"] == other[f"sent_{d}"], (r, node, peer, d)
            for key, side in (("send", "sent"), ("received", "received")):
                assert sum(c[side] for c in rec["links"].values()) == rec[f"byte_{key}"]


def updates_from(rec: dict[str, Any], peer: str) -> int:
    """Update messages a node logged as received from `peer` in a round."""
    return sum(
        1
        for m in rec["messages"]
        if m["kind"] == "update" and m["dir"] == "received" and m["peer"] == peer
    )


SECTIONS: dict[str, Any] = {"dataset": {"name": "digits"}, "rounds": 2}


def in_memory(tmp: Path, name: str, raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`raw` run on the in-memory network with real torch training, models saved, in tmp/name
    beside its config (as a run folder): every node's log by node id."""
    from hefl.node.nodes.local_training import LocalTraining

    raw["training"]["save_models"] = True
    folder = tmp / name
    net = MemoryNetwork(parse_config(raw), folder, training=LocalTraining)
    try:
        status = net.run(timeout=120)
    finally:
        net.close()
    assert status["state"] == "finished", status["error"]
    (folder / "config.json").write_text(json.dumps(raw))
    return node_logs(folder)


def test_sixteen_clients_on_eight_nodes_equal_sixteen_client_nodes(tmp_path: Path) -> None:
    """Done-when: 2 logical clients on each of 8 nodes give, in plaintext with one seed, the
    global model of the same 16 clients as 16 nodes under the same 4 leaf switches (4 each),
    to float32 precision (a node adding its own clients' updates, over real processes: the bfv
    test below). In memory: the real nodes and their torch training, no processes."""
    raw = hosting(2, nodes=8, leaves=4, **SECTIONS)
    multi = in_memory(tmp_path, "multi", raw)
    single = in_memory(tmp_path, "single", tree_config(clients=16, leaves=4, **SECTIONS))
    cfg = parse_config(raw)
    exp, one = tmp_path / "multi", tmp_path / "single"
    for r in range(2):
        want = np.load(one / f"127.0.0.1_100.r{r}.global.npy")
        for node in cfg.tree.client_nodes():
            got = np.load(exp / f"{node.replace(':', '_')}.r{r}.global.npy")
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        for c in cfg.tree.clients():  # each client trained as the single-client node of its slice
            index = cfg.tree.logical[c].index
            got = np.load(exp / f"{c.replace(':', '_')}.r{r}.local.npy")
            np.testing.assert_allclose(
                got, np.load(one / f"127.0.0.1_{100 + index}.r{r}.local.npy"), atol=1e-6
            )
        accuracy = [logs["iteration"][r]["accuracy"] for logs in (multi[AGG], single[AGG])]
        assert accuracy[0] == pytest.approx(accuracy[1], abs=1e-6)

    check_links(multi, 2)
    leaf = multi[LEAF0]["iteration"][0]
    assert updates_from(leaf, N0) == 2  # one message up per client
    head = multi[N0]
    assert [c["client"] for c in head["clients"]] == [f"{N0}#0", f"{N0}#1"]
    assert head["local_sum"] is False and "index" not in head
    rec = head["iteration"][1]
    mine = rec["clients"][f"{N0}#1"]
    assert {"train", "encrypt", "evaluate"} <= set(mine["phases"])
    assert mine["test_samples"] + rec["clients"][f"{N0}#0"]["test_samples"] == rec["test_samples"]
    summary = summarize(exp).to_json()
    assert summary["clients"] == 16 and summary["rounds"][1]["clients"] == 16
    # the HE error check redoes FedAvg from each client's saved local model: plaintext, so ~0
    assert summary["rounds"][1]["he_error"]["max_abs"] < 1e-6


def test_bfv_clients_on_one_node_round_as_their_own_nodes_would(
    tmp_path: Path, bfv_run: Run
) -> None:
    """BFV sums are exact integers: with each client's own rounding stream, 2 nodes of 2 clients
    (one of them adding its own, the other's forwarded by a dumb switch under their own ids) give
    bit for bit the global models of 4 single-client nodes (the shared bfv run: two_level)."""
    raw = hosting(2, nodes=2, leaves=2, rounds=3, dumb=(1,), encryption={"scheme": "bfv"})
    raw["others"][N0]["local_sum"] = True
    raw["training"].update(save_models=True, epochs=2)  # as two_level's
    multi = run(tmp_path, "multi", raw)
    for r in range(3):
        name = f"{N1.replace(':', '_')}.r{r}.global.npy"
        got = np.load(experiment_dir(tmp_path / "multi") / name)
        want = np.load(bfv_run.exp / f"127.0.0.1_100.r{r}.global.npy")
        assert np.array_equal(got, want), r
    check_links(multi, 3)
    assert updates_from(multi[LEAF0]["iteration"][1], N0) == 1
    assert updates_from(multi[LEAF1]["iteration"][1], N1) == 2
    assert updates_from(multi[SPINE]["iteration"][1], LEAF1) == 2  # forwarded as they came
    assert multi[AGG]["iteration"][1]["contributors"] == list(parse_config(raw).tree.clients())


def test_a_round_line_names_at_most_eight_missing_clients() -> None:
    from hefl.results.report import format_round

    row = {
        "round": 0,
        "accuracy": 0.5,
        "loss": 1.0,
        "client_byte_send": 1,
        "client_byte_received": 1,
        "duration_s": 1.0,
        "contributors": 500,
        "missing": [f"{N0}#{j}" for j in range(11)],
        "reports": 500,
    }
    line = format_round(RoundRow.from_json(row), 3)
    assert f"missing {N0}#0, " in line and f"{N0}#7, ... (11 in all))" in line
    assert f"{N0}#8" not in line


def test_at_a_deadline_a_round_counts_the_metrics_of_its_contributors_only(
    tmp_path: Path,
) -> None:
    raw = hosting(2, rounds=2, network={"round_deadline_s": 600})
    raw["aggregator"]["min_clients"] = 3
    cfg = parse_config(raw)
    agg, _ = make(AggregatorNode, AGG, cfg, tmp_path)
    agg.begin_experiment()
    partial = agg.scheme.encrypt(np.zeros(agg.scheme.size))
    # the spine's partial sum at the deadline: both of N0's clients and N1's first
    agg.on_update(Envelope(EXP, 0, SPINE, 90, 3, 0b0111), partial)
    agg.deadline_passed(0)
    # each node evaluates the round's result on all its clients' slices, N1#1's included
    for node in (N0, N1):
        figures = tuple(
            ClientMetrics(c, 0.5, 0.0 if c == f"{N1}#1" else 0.8, 20) for c in cfg.tree.hosted(node)
        )
        body = MetricsReport(0.5, 0.6, 40, 0, 0, figures).encode()
        agg.on_metrics(Envelope(EXP, 0, node, 40, 2), body)
    (row,) = agg.status()["rounds"]
    assert row["contributors"] == 3 and row["missing"] == [f"{N1}#1"] and row["reports"] == 3
    assert row["accuracy"] == pytest.approx(0.8)  # N1#1 did not contribute: not counted
    assert agg.status()["nodes"][N1]["text"] == "1 of its 2 clients missing from round 1"


def test_more_clients_than_test_samples_is_refused_in_one_line() -> None:
    from hefl.config import DatasetConfig
    from hefl.data import client_slices

    ds = DatasetConfig(name="synthetic", samples=100)  # 20 test samples
    slices, total = client_slices(ds, 0, 20, [0, 19])
    assert total == 80 and [len(test) for _, test in slices] == [1, 1]
    with pytest.raises(ConfigError, match="client 20 of 21 gets no test samples"):
        client_slices(ds, 0, 21, [20])


def test_run_json_holds_the_config_not_the_tables_derived_from_it() -> None:
    from hefl.control.experiment import effective_config

    cfg = parse_config(hosting(3))
    got = effective_config(cfg)
    assert set(got) == {
        "aggregator",
        "nodes",
        "name",
        "dataset",
        "model",
        "training",
        "encryption",
        "network",
    }
    assert got["nodes"][N0]["clients"] == 3
    json.dumps(got)


def test_a_nodes_clients_skip_a_round_that_closed_before_their_turn(tmp_path: Path) -> None:
    """With a deadline, once the round's result is in, the node's remaining clients do not train
    (their updates would only be refused); the others' went up under their own ids."""
    from hefl.node.nodes.client import ClientNode

    cfg = parse_config(hosting(3, rounds=2, network={"round_deadline_s": 600}))
    node, transport = make(ClientNode, N0, cfg, tmp_path)
    sent: list[str] = []

    def send(peer: str, kind: Any, env: Envelope, body: bytes = b"") -> None:
        sent.append(env.sender)
        if len(sent) == 1:  # the round closes as the first client's update arrives
            node.downward.take((Kind.GLOBAL, 0), "global of round 1")

    transport.send = send  # type: ignore[method-assign]
    node.train_round(0)
    assert sent == [f"{N0}#0"]
    rec = node.runlog.record(0).to_json()["clients"]
    assert "skipped" not in rec[f"{N0}#0"] and "train" in rec[f"{N0}#0"]["phases"]
    for c in (f"{N0}#1", f"{N0}#2"):
        assert rec[c] == {"late": True, "skipped": True}
    assert node.runlog.record(0).to_json()["train_samples"] == rec[f"{N0}#0"]["train_samples"]
    node.close()


def test_a_node_that_adds_its_clients_sends_nothing_for_a_round_closed_before_its_sum(
    tmp_path: Path,
) -> None:
    from hefl.node.nodes.client import ClientNode

    raw = hosting(3, rounds=2, network={"round_deadline_s": 600})
    raw["others"][N0]["local_sum"] = True
    node, transport = make(ClientNode, N0, parse_config(raw), tmp_path)
    trained: list[str] = []
    train_one = node.train_one

    def closing(r: int, slot: Any, **kw: Any) -> Any:
        trained.append(slot.id)
        node.downward.take((Kind.GLOBAL, 0), "global of round 1")  # closes during the first
        return train_one(r, slot, **kw)

    node.train_one = closing  # type: ignore[method-assign]
    node.train_round(0)
    assert trained == [f"{N0}#0"] and transport.sent == []
    assert node.runlog.record(0).to_json()["late"] is True
    node.close()
