"""Protocol scenarios on the in-memory network (tests/memnet.py): every node of a tree, the real
classes and transport, the plain scheme, seeded updates instead of torch. Deadlines, dropouts,
stragglers, flushes and partial sums, min_clients, retries, duplicates and refusals, in well under
a second each; tests/test_dropouts.py keeps the same faults over real processes. One run with real
ciphertexts of each library checks how seeded updates and seed lists travel."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hefl.config import parse_config
from hefl.errors import PeerRefused
from hefl.node.aggregation import apply_sum
from hefl.node.wire import Envelope, Kind
from tests.helpers import tree_config
from tests.memnet import EXPERIMENT, FakeTraining, MemoryNetwork

C = [f"127.0.0.1:{100 + i}" for i in range(4)]  # tree_config's clients; leaves 10 and 11
LEAF0, LEAF1 = "127.0.0.1:10", "127.0.0.1:11"
AGG = "127.0.0.1:1"


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Any]:
    """Factory: the in-memory network of a tree_config; every node closed after the test."""
    made: list[MemoryNetwork] = []

    def build(min_clients: int = 0, **kw: Any) -> MemoryNetwork:
        raw = tree_config(**kw)
        if min_clients:
            raw["aggregator"]["min_clients"] = min_clients
        net = MemoryNetwork(parse_config(raw), tmp_path / f"run{len(made)}")
        made.append(net)
        return net

    yield build
    for net in made:
        net.close()


def fedavg(rounds: int, clients: int = 4) -> np.ndarray:
    """The model every client ends with when all contribute: FedAvg of FakeTraining's steps."""
    cfg = parse_config(tree_config(clients=clients, rounds=rounds))
    parts = [FakeTraining(cfg, c) for c in cfg.tree.client_nodes()]
    base = parts[0].initial()
    for r in range(rounds):
        total = np.zeros(base.size)
        for part in parts:
            (slot,) = part.slots
            local, _ = part.train(slot, base, r)
            total += np.clip((local - base) * slot.weight, -1, 1)
        samples = sum(p.slots[0].samples for p in parts)
        base = apply_sum(base, total, clients, parts[0].all_samples, samples).astype(np.float32)
    return base


def test_every_round_is_the_sample_weighted_mean_of_every_update(network: Any) -> None:
    net = network(rounds=3)
    status = net.run()
    assert status["state"] == "finished", status["error"]
    rows = status["rounds"]
    assert [(row["contributors"], row["missing"], row["reports"]) for row in rows] == [
        (4, [], 4)
    ] * 3
    want = fedavg(3)
    for c in C:
        np.testing.assert_allclose(net.nodes[c].base, want, rtol=0, atol=1e-6)
    # each update crossed one link up, each result one link down: no message refused
    assert {status for *_, status in net.messages} == {202}


def test_a_client_gone_makes_each_round_complete_at_its_deadline_with_a_partial_sum(
    network: Any,
) -> None:
    net = network(rounds=3, network={"round_deadline_s": 0.3}, min_clients=3)
    net.down.add(C[3])  # before begin: its switch cannot even tell it the run began
    status = net.run()
    assert status["state"] == "finished", status["error"]
    assert [(row["contributors"], row["missing"]) for row in status["rounds"]] == [(3, [C[3]])] * 3
    # its switch sent up the one update it had when the aggregator's flush came, as a partial sum
    assert [s for _, s in net.statuses(Kind.FLUSH)] == [202] * 3 * 3  # each switch, each round
    leaf = net.nodes[LEAF1].runlog.snapshot()["iteration"]
    assert [(rec["contributors"], rec["missing"]) for rec in leaf] == [([C[2]], [C[3]])] * 3
    assert net.statuses(Kind.UPDATE, LEAF1) == [(0, 202), (1, 202), (2, 202)]


def test_below_min_clients_the_run_stops_naming_the_missing(network: Any) -> None:
    """(Over real processes, an aggregator's failure reaches the controller's one line as every
    node failure does: tests/test_faults.py.)"""
    net = network(rounds=3, network={"round_deadline_s": 0.2}, min_clients=4)
    net.down.add(C[3])
    status = net.run()
    assert status["state"] == "failed"
    assert (
        "round 1: 3 of 4 clients contributed within network.round_deadline_s (0.2s), "
        f"min_clients 4; missing: {C[3]}"
    ) in status["error"]
    assert status["rounds"] == []


def test_a_straggler_is_refused_as_late_applies_the_result_and_contributes_again(
    network: Any,
) -> None:
    net = network(rounds=3, network={"round_deadline_s": 0.3}, min_clients=3)
    slow = net.hold(C[1], Kind.UPDATE, 0)  # its round-1 update stalls on the way
    net.aggregator.begin_experiment()
    net.wait(states=("running",))
    first = _until(lambda: net.aggregator.status()["rounds"])
    assert (first[0]["contributors"], first[0]["missing"]) == (3, [C[1]])
    slow.set()  # it arrives now: the round closed at its deadline without it
    status = net.wait()
    assert status["state"] == "finished", status["error"]
    assert net.statuses(Kind.UPDATE, C[1])[0] == (0, 422)  # refused as late, not added
    assert [row["contributors"] for row in status["rounds"][1:]] == [4, 4]
    log = net.nodes[C[1]].runlog.snapshot()["iteration"]
    assert log[0]["late"] is True and "late" not in log[1]
    # it applied round 1's result like everyone: every client holds the same model
    models = [net.nodes[c].base for c in C]
    assert all(np.array_equal(models[0], m) for m in models)


def _until(get: Any, timeout: float = 10.0) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while not (got := get()):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return got


def test_messages_delivered_twice_are_taken_once(network: Any) -> None:
    """A retried message whose first answer was lost arrives twice: the second is answered 409
    and changes nothing (the sums, the metrics)."""
    net = network(rounds=3)
    net.twice = {Kind.UPDATE, Kind.GLOBAL, Kind.BEGIN, Kind.METRICS}
    status = net.run()
    assert status["state"] == "finished", status["error"]
    assert [row["reports"] for row in status["rounds"]] == [4, 4, 4]
    for c in C:
        np.testing.assert_allclose(net.nodes[c].base, fedavg(3), rtol=0, atol=1e-6)
    assert {s for *_, s in net.messages if s != 202} == {409}


def test_a_lost_connection_is_tried_again_and_counted_each_time(network: Any) -> None:
    net = network(rounds=2)
    net.refuse_once(C[0], Kind.UPDATE, 0)
    status = net.run()
    assert status["state"] == "finished", status["error"]
    assert status["rounds"][0]["contributors"] == 4
    rec = net.nodes[C[0]].runlog.record(0).to_json()
    sent = [m for m in rec["messages"] if (m["dir"], m["kind"]) == ("sent", "update")]
    assert len(sent) == 1  # a refused connection carried no bytes: one attempt counted


def test_a_message_for_a_round_not_open_is_refused_with_422(network: Any) -> None:
    """Before the run starts no round is open: an update for round 3 is not taken (422, which a
    sender must not take for delivered, unlike a 409)."""
    net = network(rounds=3)
    client = net.nodes[C[0]]
    payload = client.scheme.encrypt(np.zeros(client.scheme.size))
    with pytest.raises(PeerRefused) as late:
        client.transport.send(LEAF0, Kind.UPDATE, Envelope(EXPERIMENT, 2, C[0], 10, 1), payload)
    assert late.value.status == 422


@pytest.mark.parametrize(
    "backend",
    [
        "tenseal",
        pytest.param(
            "seal",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("seal") is None, reason="seal not installed"
            ),
        ),
    ],
)
def test_a_run_sends_seeded_updates_seed_lists_up_and_down_and_never_one_seed_twice(
    backend: str, tmp_path: Path
) -> None:
    """Every message of a ckks run on the in-memory network with real ciphertexts of each library
    (4 clients under two leaf switches and a spine, 3 rounds, precompute on): clients send seeded
    updates, each ciphertext under a seed of its own; the sums go up and the result down as seed
    lists of exactly the round's seeds; each message's log entry says its form, on both ends."""
    from hefl.crypto import HeParams, generate_keys
    from hefl.crypto.seedlist import SeedSum

    cfg = parse_config(tree_config(rounds=3, encryption={"scheme": "ckks", "backend": backend}))
    generate_keys(HeParams(scheme="ckks", backend=backend), tmp_path / "keys")
    keep = frozenset({Kind.UPDATE, Kind.GLOBAL})
    net = MemoryNetwork(cfg, tmp_path / "run", key_dir=tmp_path / "keys", keep=keep)
    try:
        assert net.run(timeout=60)["state"] == "finished"
        adder = net.aggregator.scheme  # keyless: it reads seeds, never expands them to look
        sent: dict[tuple[str, Kind, int], tuple[str | None, list[bytes]]] = {}
        for sender, kind, r, body in net.bodies:
            parts: list[SeedSum] = adder.load(body)
            assert all(isinstance(part, SeedSum) for part in parts), (sender, kind)
            sent[sender, kind, r] = adder.form(body), [s for part in parts for s in part.seeds]
    finally:
        net.close()
    chunks = adder.chunks
    for r in range(3):
        ups = [sent[c, Kind.UPDATE, r] for c in C]
        assert [form for form, _ in ups] == ["seeded"] * 4
        every = [seed for _, seeds in ups for seed in seeds]
        assert len(every) == 4 * chunks
        for leaf, kids in ((LEAF0, C[:2]), (LEAF1, C[2:])):  # each leaf: its children's seeds
            form, seeds = sent[leaf, Kind.UPDATE, r]
            assert form == "seed_list"
            assert set(seeds) == {s for c in kids for s in sent[c, Kind.UPDATE, r][1]}
        form, seeds = sent[AGG, Kind.GLOBAL, r]  # the global result: all of them
        assert form == "seed_list" and set(seeds) == set(every)
    of_run = [s for (who, kind, _), (_, seeds) in sent.items() if who in C for s in seeds]
    assert len(set(of_run)) == len(of_run) == 4 * 3 * chunks  # no seed twice in the run
    logged = {
        (node.runlog.role, m["dir"], m["kind"], m.get("form"))
        for node in net.nodes.values()
        for rec in node.runlog.snapshot()["iteration"]
        for m in rec["messages"]
        if m["kind"] in ("update", "global")
    }
    assert logged == {
        ("client", "sent", "update", "seeded"),
        ("switch", "received", "update", "seeded"),  # the leaves' from clients
        ("switch", "sent", "update", "seed_list"),
        ("switch", "received", "update", "seed_list"),  # the spine's from the leaves
        ("aggregator", "received", "update", "seed_list"),
        ("aggregator", "sent", "global", "seed_list"),
        ("switch", "received", "global", "seed_list"),
        ("switch", "sent", "global", "seed_list"),
        ("client", "received", "global", "seed_list"),
    }


def test_a_child_that_does_not_take_the_result_holds_up_no_later_flush(network: Any) -> None:
    """A client paused after it sent its update (it takes no more messages): its switch's worker
    waits for it at most a deadline, so the switch still flushes the next rounds with what it has
    and the run goes on without it; once it resumes, the results sent meanwhile reach it in
    order (round 1's, then 2's, then 3's: a later one first it would refuse), it takes each,
    and it contributes again."""
    net = network(rounds=5, network={"round_deadline_s": 0.3}, min_clients=3)
    paused = net.hold_to(C[1], Kind.GLOBAL, 0)  # round 1's result does not reach it
    try:
        net.aggregator.begin_experiment()
        deadline = time.monotonic() + 30
        while len(net.aggregator.status()["rounds"]) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        paused.set()  # it resumes two rounds later
    status = net.wait()
    assert status["state"] == "finished", status["error"]
    rows = status["rounds"]
    assert rows[0]["contributors"] == 4 and rows[1]["missing"] == rows[2]["missing"] == [C[1]]
    assert rows[-1]["contributors"] == 4 and rows[-1]["missing"] == []  # it rejoined
