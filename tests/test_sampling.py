"""aggregator.clients_per_round: each round draws a fixed number of clients without replacement from
a seeded stream of its own, the same on every node; only they train and send, switches wait only
for children with a drawn client below, the others idle and apply the round's result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hefl.config import parse_config
from hefl.errors import ConfigError
from hefl.node.aggregation import apply_sum
from hefl.node.wire import Kind
from tests.helpers import run_local, tree_config
from tests.memnet import FakeTraining, MemoryNetwork

CLIENTS = [f"127.0.0.1:{100 + i}" for i in range(4)]  # tree_config's; leaves 10 (0, 1), 11 (2, 3)


def sampled_config(per_round: int = 2, rounds: int = 6, seed: int = 0, **kw: Any) -> Any:
    raw = tree_config(rounds=rounds, **kw)
    raw["aggregator"]["clients_per_round"] = per_round
    raw["training"]["seed"] = seed
    return raw


def test_each_round_draws_its_clients_from_the_seed_alone() -> None:
    cfg = parse_config(sampled_config(rounds=40))
    draws = [cfg.sampled(r) for r in range(40)]
    assert all(len(d) == 2 == len(set(d)) and set(d) <= set(CLIENTS) for d in draws)
    assert all(list(d) == sorted(d, key=CLIENTS.index) for d in draws)  # in slice order
    assert draws == [parse_config(sampled_config(rounds=40)).sampled(r) for r in range(40)]
    assert len(set(draws)) > 3  # the rounds differ (6 pairs; 40 draws)
    other = parse_config(sampled_config(rounds=40, seed=1))
    assert draws != [other.sampled(r) for r in range(40)]
    # every client is drawn about half the time: fixed-size sampling without replacement
    counts = {c: sum(c in d for d in draws) for c in CLIENTS}
    assert all(8 <= n <= 32 for n in counts.values()), counts
    everyone = parse_config(tree_config())
    assert everyone.sampled(0) == tuple(CLIENTS) and not everyone.samples_clients


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"clients_per_round": 5}, "clients_per_round: 5 is more than the 4 clients"),
        ({"clients_per_round": 2, "min_clients": 3}, "min_clients: 3 is more than the 2 clients"),
    ],
)
def test_a_draw_larger_than_the_clients_is_refused(edit: dict[str, int], match: str) -> None:
    raw = tree_config()
    raw["aggregator"].update(edit)
    with pytest.raises(ConfigError, match=match):
        parse_config(raw)


def fedavg_sampled(cfg: Any) -> np.ndarray:
    """The model every client ends with: FedAvg over each round's drawn clients."""
    parts = {c: FakeTraining(cfg, c) for c in cfg.tree.client_nodes()}
    base = parts[CLIENTS[0]].initial()
    for r in range(cfg.rounds):
        total = np.zeros(base.size)
        drawn = cfg.sampled(r)
        for c in drawn:
            (slot,) = parts[c].slots
            local, _ = parts[c].train(slot, base, r)
            total += np.clip((local - base) * slot.weight, -1, 1)
        samples = sum(parts[c].slots[0].samples for c in drawn)
        all_samples = parts[CLIENTS[0]].all_samples
        base = apply_sum(base, total, len(CLIENTS), all_samples, samples).astype(np.float32)
    return base


def test_only_the_drawn_clients_train_and_every_client_applies_each_result(
    tmp_path: Path,
) -> None:
    cfg = parse_config(sampled_config(rounds=6))
    net = MemoryNetwork(cfg, tmp_path / "run")
    try:
        status = net.run()
    finally:
        net.close()
    assert status["state"] == "finished", status["error"]
    rows = status["rounds"]
    assert [tuple(row["sampled"]) for row in rows] == [cfg.sampled(r) for r in range(6)]
    assert all(row["contributors"] == 2 and row["missing"] == [] for row in rows)
    # the live page: a client not drawn in the last round says so
    last = cfg.sampled(5)
    for c in CLIENTS:
        text = status["nodes"][c]["text"]
        assert text == ("in round 6" if c in last else "not drawn in round 6"), (c, text)
    want = fedavg_sampled(cfg)
    for c in CLIENTS:
        np.testing.assert_allclose(net.nodes[c].base, want, rtol=0, atol=1e-6)
    # a client not drawn sent nothing that round and says so in its log
    for r in range(6):
        for c in CLIENTS:
            rec = net.nodes[c].runlog.record(r).to_json()
            sent = any(
                s == c and kind.value == "update" and rr == r for s, _, kind, rr, _ in net.messages
            )
            assert sent == (c in cfg.sampled(r)) and rec.get("idle", False) == (not sent)
    # a leaf switch with no drawn client below sent nothing up and was not waited for
    quiet = [r for r in range(6) if not set(cfg.sampled(r)) & set(CLIENTS[:2])]
    assert quiet  # seed 0 draws such rounds
    for r in quiet:
        up = [m for m in net.messages if m[0] == "127.0.0.1:10" and m[2] is Kind.UPDATE]
        assert not [m for m in up if m[3] == r]
        assert net.nodes["127.0.0.1:10"].runlog.record(r).to_json()["contributors"] == []


@pytest.mark.process
def test_a_local_run_draws_two_of_four_clients_per_round_the_same_on_a_second_run(
    tmp_path: Path,
) -> None:
    """Real processes: `main.py local` twice with clients_per_round 2 of 4 and one seed: each
    round of rounds.json names 2 drawn clients, the same in both runs, as do the accuracies."""
    from tests.helpers import experiment_dir

    raw = json.loads((Path(__file__).parent.parent / "config.json").read_text())
    raw["aggregator"]["iteration"] = 3
    raw["aggregator"]["clients_per_round"] = 2
    found = []
    for run in range(2):
        work = tmp_path / f"run{run}"
        work.mkdir()
        (work / "config.json").write_text(json.dumps(raw))
        proc = run_local(work)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rows = json.loads((experiment_dir(work / "log") / "rounds.json").read_text())
        found.append([(row["sampled"], row["accuracy"]) for row in rows])
    clients = [n for n, v in raw["others"].items() if v["type"] == "client"]
    assert len(found[0]) == 3
    assert all(len(s) == 2 and set(s) <= set(clients) for s, _ in found[0])
    assert found[0] == found[1]
