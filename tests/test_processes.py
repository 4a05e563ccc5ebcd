"""Real node processes over HTTP on 127.0.0.1: `main.py local` (`main.py agg` with standalone nodes:
tests/test_standalone.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import (
    ROOT,
    Run,
    command_line,
    experiment_dir,
    local_until_round,
    node_logs,
    node_processes,
    process_tree,
    run_main,
    tree_config,
)

pytestmark = pytest.mark.process

PY = sys.executable


def test_local_run_completes_through_two_level_tree(plain_run: Run) -> None:
    proc, exp = plain_run.proc, plain_run.exp
    assert proc.returncode == 0, proc.stderr[-2000:]
    rounds = [line for line in proc.stdout.splitlines() if line.startswith("round ")]
    assert len(rounds) == 3 and rounds[-1].startswith("round   3/3  accuracy")
    assert "aggregator got " in rounds[-1]  # what reached it (adding switches: less)
    assert "\r" not in proc.stdout  # no progress line when the output is not a terminal
    logs = node_logs(exp)
    assert len(logs) == 8 and all(d["finished"] for d in logs.values())
    assert all([r["round"] for r in d["iteration"]] == [0, 1, 2] for d in logs.values())
    final = json.loads((exp / "rounds.json").read_text())[-1]
    assert final["accuracy"] > 0.8
    aggregator_out = (exp / "stdout" / "127.0.0.1_1.out").read_text()  # -v reaches the nodes
    assert "INFO hefl.node.nodes.aggregator: 127.0.0.1:1 round 2: accuracy" in aggregator_out


def test_global_model_is_the_sample_weighted_mean(plain_run: Run) -> None:
    exp = plain_run.exp
    logs = node_logs(exp)
    clients = sorted(n for n, d in logs.items() if d["role"] == "client")
    for r in range(3):
        samples = [logs[c]["iteration"][r]["train_samples"] for c in clients]
        local = [np.load(exp / f"{c.replace(':', '_')}.r{r}.local.npy") for c in clients]
        glob = [np.load(exp / f"{c.replace(':', '_')}.r{r}.global.npy") for c in clients]
        expected = sum(m * n for m, n in zip(local, samples, strict=True)) / sum(samples)
        for g in glob:
            np.testing.assert_allclose(g, expected, atol=1e-6)


def test_bytes_are_counted_on_both_ends(plain_run: Run) -> None:
    exp = plain_run.exp
    logs = node_logs(exp)
    for r in range(3):
        recs = [d["iteration"][r] for d in logs.values()]
        assert sum(x["byte_send"] for x in recs) == sum(x["byte_received"] for x in recs)
        assert sum(x["messages_sent"] for x in recs) == sum(x["messages_received"] for x in recs)
    client = next(d for d in logs.values() if d["role"] == "client")["iteration"][1]
    params = 64 * 32 + 32 + 32 * 10 + 10
    assert client["byte_send"] >= 4 * params and client["byte_received"] >= 4 * params
    assert set(client["phases"]) >= {"train", "serialize", "send", "wait", "apply", "evaluate"}


def test_failed_config_push_names_the_node_and_stops_everything(tmp_path: Path) -> None:
    raw = tree_config(
        clients=2,
        leaves=1,
        spine=False,
        dataset={"name": "mnist", "path": str(tmp_path / "nothing")},
    )
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(raw))
    proc = run_main("local", "--config", str(cfg), "--log-dir", str(tmp_path / "log"), timeout=120)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert (
        "2 node(s) refused their config" in line
        and "127.0.0.1:100 refused POST /config: 400" in line
    )
    assert "train-images-idx3-ubyte not found" in line
    assert node_processes(str(tmp_path)) == []


def test_ctrl_c_stops_every_node_and_keeps_logs(tmp_path: Path) -> None:
    """Also: each node is two processes below `main.py local` (forked from it: gunicorn's master
    and worker, named in ps by the node's command line), and only the clients hold torch."""
    proc = local_until_round(tmp_path, tree_config(clients=2, leaves=1, spine=False, rounds=500), 2)
    below = process_tree(proc.pid)
    for node, torch in (("127.0.0.1:100", True), ("127.0.0.1:10", False), ("127.0.0.1:1", False)):
        pids = node_processes(str(tmp_path), node)
        assert len(pids) == 2 and set(pids) <= set(below), (node, pids)
        titles = sorted(command_line(pid).split(" [")[0] for pid in pids)
        assert titles == ["gunicorn: master", "gunicorn: worker"], titles
        for pid in pids:
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert ("libtorch_cpu" in maps) == torch, (node, pid)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    assert node_processes(str(tmp_path)) == []
    logs = node_logs(experiment_dir(tmp_path / "log"))
    assert len(logs) == 4 and all(len(d["iteration"]) >= 1 for d in logs.values())


FORKS = """
import os, subprocess, sys, time
from pathlib import Path
from hefl.control.fork import fork_node

def node(argv):
    fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))[:-1]  # less the listing's own
    print("env", os.environ.get("X"), "argv", argv, sys.argv, "own group",
          os.getpgid(0) == os.getpid(), "fds", fds)
    if argv == ["raise"]:
        raise ValueError("broken node")
    if argv == ["exit"]:
        raise SystemExit("said why")
    if argv == ["sleep"]:
        time.sleep(60)
    return 7

out = Path(sys.argv[1])
held = open(out / "held", "w")  # a file this process holds: not the nodes'
names = ("ok", "raise", "exit", "sleep")
procs = [fork_node(node, ["py", "main.py", a], out / f"{a}.out", {"X": "y"}) for a in names]
try:
    procs[-1].wait(timeout=0.2)
except subprocess.TimeoutExpired:
    procs[-1].kill()
try:
    fork_node(node, ["py", "main.py", "ok"], out / "no-folder" / "x.out", {})
except FileNotFoundError as exc:
    print("refused here:", exc.strerror)
print("codes", [p.wait(timeout=30) for p in procs], "X" in os.environ)
"""


def test_a_forked_node_exits_with_its_status_and_never_returns_into_its_parent(
    tmp_path: Path,
) -> None:
    """Local mode's fork: the node's status (a return, an exception, SystemExit with a message, a
    kill) as Popen gives it, its output in its own file (one it cannot make is the parent's
    error), its own environment, argv, process group and no other file; whatever it does, it
    never runs on in the code that forked it."""
    proc = subprocess.run(
        [PY, "-c", FORKS, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.stdout == (
        "refused here: No such file or directory\ncodes [7, 1, 1, -9] False\n"
    ), proc.stdout + proc.stderr
    out = {p.stem: p.read_text().strip().splitlines() for p in tmp_path.glob("*.out")}
    said = "env y argv ['ok'] ['main.py', 'ok'] own group True fds [0, 1, 2]"
    assert out["ok"] == [said]
    assert out["raise"][0].startswith("env y") and out["raise"][-1] == "ValueError: broken node"
    assert out["exit"] == [said.replace("ok", "exit"), "said why"]


NODES = """
import json, sys, threading, time
from pathlib import Path
import requests
import main
from hefl.config import parse_config
from hefl.control.fork import Forked
from hefl.control.local import local_nodes

work, thread = Path(sys.argv[1]), sys.argv[2] == "thread"
release = threading.Event()
if thread:  # another thread here: a fork would copy it mid-step, so each node is started afresh
    threading.Thread(target=release.wait).start()
cfg = parse_config(json.loads(sys.argv[3]))
for run in range(1 if thread else 2):  # a second run here (a sweep's) starts its nodes afresh
    with local_nodes(cfg, work / "log", work / f"out{run}", node_main=main.main) as nodes:
        for url in nodes.endpoints.values():
            for _ in range(600):
                try:
                    requests.get(url + "/health", timeout=2)
                    break
                except requests.RequestException:
                    time.sleep(0.05)
        print(json.dumps({n: isinstance(p, Forked) for n, p in nodes.procs.items()}))
release.set()
"""


@pytest.mark.parametrize("thread", [False, True], ids=["forked", "another-thread-started"])
def test_local_nodes_are_forked_unless_another_thread_runs(tmp_path: Path, thread: bool) -> None:
    """Each local node answers, forked from the local run or, with another thread running there
    or for a second run in the same process (a sweep's: its switches would copy torch and what
    is left of the first run's keys), started as `python main.py node ...`; each has its output
    file, and none is left after."""
    raw = tree_config(clients=1, leaves=1, spine=False)
    proc = subprocess.run(
        [PY, "-c", NODES, str(tmp_path), "thread" if thread else "-", json.dumps(raw)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = [json.loads(line) for line in proc.stdout.splitlines()]
    nodes = ("127.0.0.1:100", "127.0.0.1:10", "127.0.0.1:1")
    assert runs == [{n: f for n in nodes} for f in ([False] if thread else [True, False])]
    assert node_processes(str(tmp_path)) == []
    for run in range(len(runs)):
        outs = sorted(p.name for p in (tmp_path / f"out{run}").iterdir())
        assert outs == ["127.0.0.1_1.out", "127.0.0.1_10.out", "127.0.0.1_100.out"], outs


def test_node_killed_mid_run_is_named_and_logs_are_kept(tmp_path: Path) -> None:
    """A client SIGKILLed in round 3 of local mode (no deadline): the run stops with one line
    naming it, every node process is gone, and every node's log is kept."""
    proc = local_until_round(tmp_path, tree_config(clients=2, leaves=1, spine=False, rounds=500), 3)
    victim = "127.0.0.1:101"
    victims = node_processes(str(tmp_path), victim)
    assert len(victims) == 2, victims  # its gunicorn master and worker
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and victim in line, line
    assert node_processes(str(tmp_path)) == []
    logs = node_logs(experiment_dir(tmp_path / "log"))
    assert len(logs) == 4 and all(len(d["iteration"]) >= 3 for d in logs.values())


def test_original_config_runs_unchanged(tmp_path: Path) -> None:
    proc = run_main(
        "local",
        "--config",
        str(ROOT / "tests/data/cs277-base-case.json"),
        "--log-dir",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sum(line.startswith("round ") for line in proc.stdout.splitlines()) == 10
    assert len(node_logs(experiment_dir(tmp_path))) == 7


SEEDED_RUNS = {"ckks", "bfv", "seal_ckks", "seal_bfv"}  # the runs that send seeded ciphertexts


@pytest.mark.parametrize("run_name", ["ckks", "bfv", "seal_ckks", "seal_bfv", "paillier"])
def test_encrypted_run_matches_the_plaintext_run(
    plain_run: Run, request: pytest.FixtureRequest, run_name: str
) -> None:
    """Same seed, same tree: the encrypted global model follows the plaintext one, with every HE
    library (SEAL-Python's and Paillier's where installed); only clients can decrypt; no byte of
    the secret key reaches a log."""
    from hefl.crypto.keydir import SECRET

    run: Run = request.getfixturevalue(f"{run_name}_run")
    scheme = run_name.split("_")[-1]
    assert run.proc.returncode == 0, run.proc.stderr[-2000:]
    exp, plain_exp = run.exp, plain_run.exp
    plain = json.loads((plain_exp / "rounds.json").read_text())[-1]["accuracy"]
    enc = json.loads((exp / "rounds.json").read_text())[-1]["accuracy"]
    assert abs(plain - enc) <= (0.005 if scheme == "ckks" else 0.01)

    def gap(name: str) -> float:
        return float(np.abs(np.load(exp / name) - np.load(plain_exp / name)).max())

    # round 0 starts from the same local models in both runs: the gap is the scheme's error alone
    assert gap("127.0.0.1_100.r0.local.npy") == 0.0
    # bfv and paillier: one quantization step (2 / (2^16 - 1)) per client at most
    assert gap("127.0.0.1_100.r0.global.npy") <= (2e-5 if scheme == "ckks" else 5e-3)
    # later rounds train on the result: SGD can amplify the unseeded CKKS noise (7e-4 by round 2)
    assert gap("127.0.0.1_100.r2.global.npy") <= 1e-2
    logs = node_logs(exp)
    assert {(d["role"], d["can_decrypt"], d["scheme"]) for d in logs.values()} == {
        ("client", True, scheme),
        ("switch", False, scheme),
        ("aggregator", False, scheme),
    }
    # how the ciphertexts travelled (ckks, bfv: seeded updates, seed lists up and down)
    forms = {
        m.get("form")
        for d in logs.values()
        for rec in d["iteration"]
        for m in rec["messages"]
        if m["kind"] in ("update", "global")
    }
    assert forms == ({"seeded", "seed_list"} if run_name in SEEDED_RUNS else {"full"})
    assert run.keys is not None
    secret = (run.keys / SECRET).read_bytes()
    windows = [
        secret[i : i + 32] for i in range(len(secret) // 8, len(secret) - 32, len(secret) // 8)
    ]
    for path in exp.parent.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(w in data for w in windows), path


@pytest.mark.parametrize(
    ("run_name", "want"),
    [
        ("plain", {"scheme": "none", "clip": 1.0}),
        (
            "ckks",
            {
                "library": "TenSEAL",
                "coeff_mod_bit_sizes": [40, 20],
                "coeff_modulus": [1099511480321, 1032193],  # SEAL's CoeffModulus.Create
                "scale_bits": 30,
                "scale": 2**30,
                "slots_per_ciphertext": 2048,
                "values_per_ciphertext": 2048,
            },
        ),
        (
            "seal_bfv",
            {
                "library": "SEAL-Python",
                "coeff_mod_bit_sizes": [60, 20],
                "coeff_modulus": [1152921504606830593, 1032193],
                "plain_modulus": 140737488273409,
                "slots_per_ciphertext": 4096,
                "values_per_ciphertext": 8192,
            },
        ),
        ("paillier", {"key_bits": 1024, "lane_bits": 16 + 2, "values_per_ciphertext": 56}),
    ],
)
def test_the_run_records_the_encryption_parameters_in_effect(
    request: pytest.FixtureRequest, run_name: str, want: dict[str, Any]
) -> None:
    """run.json and summary.json hold the parameters the run encrypted with, defaults resolved
    (not the config's empty `coeff_mod_bit_sizes`); bfv's plain modulus is the one its keys were
    made with."""
    run: Run = request.getfixturevalue(f"{run_name}_run")
    assert run.proc.returncode == 0, run.proc.stderr[-2000:]
    record = json.loads((run.exp / "run.json").read_text())
    summary = json.loads((run.exp / "summary.json").read_text())
    found = record["encryption"]
    assert summary["encryption"] == found
    assert {k: found[k] for k in want} == want
    if run_name != "plain":
        assert record["config"]["encryption"]["coeff_mod_bit_sizes"] == found.get(
            "coeff_mod_bit_sizes", []
        )
    if run_name == "seal_bfv":
        assert run.keys is not None
        made = json.loads((run.keys / "params.json").read_text())
        assert made["plain_modulus"] == found["plain_modulus"]
    # the report's first line says it too
    report = run_main("report", str(run.exp))
    assert report.returncode == 0, report.stderr[-2000:]
    first = report.stdout.splitlines()[0]
    if run_name == "plain":
        assert first.endswith("forwarding)")  # nothing to say of no encryption
    else:
        assert f"{found['values_per_ciphertext']} values per ciphertext" in first
        assert found["library"] in first


@pytest.mark.parametrize("run_name", ["seal_bfv", "paillier"])
def test_integer_schemes_of_every_library_give_tenseal_bfv_models_bit_for_bit(
    bfv_run: Run, request: pytest.FixtureRequest, run_name: str
) -> None:
    """The same seed quantizes the same way, and integer sums are exact: SEAL-Python's bfv and
    Paillier end each round at TenSEAL's bfv global model, to the last bit."""
    run: Run = request.getfixturevalue(f"{run_name}_run")
    assert run.proc.returncode == 0, run.proc.stderr[-2000:]
    for r in range(3):
        name = f"127.0.0.1_100.r{r}.global.npy"
        np.testing.assert_array_equal(np.load(run.exp / name), np.load(bfv_run.exp / name))


def test_cnn_on_label_skewed_slices_with_bfv(tmp_path: Path) -> None:
    """A CNN on Dirichlet (label-skewed) slices of digits goes through a switch with bfv (one
    round: what the model and the slices change is there from the first)."""
    raw = tree_config(
        clients=2,
        leaves=1,
        spine=False,
        rounds=1,
        model={"name": "cnn"},
        dataset={"name": "digits", "partition": "dirichlet", "alpha": 0.5},
        encryption={"scheme": "bfv"},
    )
    (tmp_path / "c.json").write_text(json.dumps(raw))
    proc = run_main(
        "local", "--config", str(tmp_path / "c.json"), "--log-dir", str(tmp_path / "log")
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    logs = node_logs(experiment_dir(tmp_path / "log"))
    samples = sorted(
        d["iteration"][0]["train_samples"] for d in logs.values() if d["role"] == "client"
    )
    # label skew: unequal slices of one split
    assert sum(samples) == 1438 and samples[0] != samples[-1]
    assert all(len(d["iteration"]) == 1 and d["scheme"] == "bfv" for d in logs.values())


def test_every_link_reconciles_from_links_alone(plain_run: Run) -> None:
    """What a node logged as sent to a peer is what that peer logged as received from it, per round
    and link (a dumb switch's forwarded updates included); the links add up to the node's totals."""
    exp = plain_run.exp
    logs = node_logs(exp)
    for r in range(3):
        recs = {n: d["iteration"][r] for n, d in logs.items()}
        for node, rec in recs.items():
            links = rec["links"]
            assert set(links) <= set(recs) and links, (node, links)
            for peer, counts in links.items():
                mirrored = {  # what the peer counted on the same link, seen from this side
                    k.replace("received", "x").replace("sent", "received").replace("x", "sent"): n
                    for k, n in recs[peer]["links"][node].items()
                }
                assert counts == mirrored, (r, node, peer)
            for key in ("send", "received"):
                assert (
                    sum(c["sent" if key == "send" else "received"] for c in links.values())
                    == rec[f"byte_{key}"]
                )
                assert (
                    sum(rec[f"byte_{key}_{d}"] for d in ("up", "down", "control"))
                    == rec[f"byte_{key}"]
                )
        client = recs["127.0.0.1:100"]
        assert (
            client["byte_send_up"] > 0
            and client["byte_received_down"] > 0
            and client["byte_send_control"] > 0
        )
        assert set(recs["127.0.0.1:2"]["links"]) == {"127.0.0.1:10", "127.0.0.1:11", "127.0.0.1:1"}


def test_local_node_that_cannot_start_is_named_at_once(tmp_path: Path) -> None:
    """A node process that dies (here: its gunicorn does not import) is named with its last output
    line, instead of a wait for /health until network.startup_timeout_s."""
    fake = tmp_path / "fake" / "gunicorn"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no gunicorn in this test')\n")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(tree_config(clients=2, leaves=1, spine=False)))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "fake")}
    started = time.monotonic()
    proc = run_main("local", "--config", str(cfg), "--log-dir", str(tmp_path / "log"), env=env)
    assert proc.returncode == 1 and time.monotonic() - started < 60
    (line,) = proc.stderr.strip().splitlines()
    assert "exited with code 1: ImportError: no gunicorn in this test" in line, line
    assert node_processes(str(tmp_path)) == []


@pytest.mark.parametrize("run_name", ["bfv", "seal_bfv"])
def test_seeded_and_full_bfv_runs_give_the_same_models_and_round_figures(
    request: pytest.FixtureRequest, run_name: str, tmp_path: Path
) -> None:
    """`encryption.seeded: false` on the seeded run's config and keys, with each library: every
    global model equal to the last bit, the same accuracy and loss on every round line, and about
    twice the update bytes."""
    seeded_run: Run = request.getfixturevalue(f"{run_name}_run")
    raw = json.loads(seeded_run.config.read_text())
    raw["encryption"]["seeded"] = False
    config = tmp_path / "full.json"
    config.write_text(json.dumps(raw))
    proc = run_main("local", "--config", str(config), "--log-dir", str(tmp_path / "log"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    full, seeded = experiment_dir(tmp_path / "log"), seeded_run.exp

    def figures(out: str) -> list[str]:  # a round line up to its byte counts
        lines = out.splitlines()
        return [line.split("clients sent")[0] for line in lines if line.startswith("round ")]

    assert figures(proc.stdout) == figures(seeded_run.proc.stdout) != []
    models = sorted(p.name for p in seeded.glob("*.global.npy"))
    assert models and models == sorted(p.name for p in full.glob("*.global.npy"))
    for name in models:
        np.testing.assert_array_equal(np.load(full / name), np.load(seeded / name))
    sent = [
        sum(rec["byte_send_up"] for rec in d["iteration"])
        for exp in (full, seeded)
        for d in node_logs(exp).values()
        if d["role"] == "client"
    ]
    half = len(sent) // 2
    assert 1.8 < sum(sent[:half]) / sum(sent[half:]) < 2.2
