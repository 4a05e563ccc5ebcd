"""Config validation: the original study's files, the default config, one-line errors with paths."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from hefl.config import load_config, parse_config
from hefl.errors import ConfigError
from tests.helpers import DATA, ROOT, tree_config


@pytest.mark.parametrize(
    "name",
    [
        "cs277-base-case.json",
        "cs277-base-case_in-network-processing.json",
        "cs277-base-case_fhe_in-network-processing.json",
    ],
)
def test_original_configs_load_unchanged(name: str) -> None:
    cfg = load_config(DATA / name)
    assert cfg.rounds == 10
    assert cfg.tree.root == "10.10.1.1"
    assert cfg.tree.clients() == ("10.10.1.2", "10.10.1.3", "10.10.1.4", "10.10.1.5")
    assert cfg.tree.contributors(cfg.tree.root) == ("10.10.1.6", "10.10.1.7")
    assert cfg.encryption.scheme == "none"  # no experiment-wide section: defaults fill it in
    assert all(n.key == "put public key here" for n in cfg.nodes.values() if n.type == "client")


def test_invalid_original_names_first_missing_comma(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(DATA / "cs277-root-invalid.json")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(
        f"{DATA / 'cs277-root-invalid.json'}: line 36 column 23: invalid JSON: missing ','"
    )
    lines = (DATA / "cs277-root-invalid.json").read_text().splitlines()
    # the comma belongs right after this value
    assert lines[35].rstrip().endswith('"send": "10.10.1.7"')


def test_invalid_original_with_commas_fixed_names_the_typo(tmp_path: Path) -> None:
    text = (DATA / "cs277-root-invalid.json").read_text()
    fixed = re.sub(r'("send": "[0-9.]+")\n', r"\1,\n", text)
    path = tmp_path / "fixed.json"
    path.write_text(fixed)
    with pytest.raises(
        ConfigError, match=r"unknown key 'aggregaotr' \(did you mean 'aggregator'\?\)"
    ):
        load_config(path)


def test_default_config_is_the_cloudlab_topology() -> None:
    cfg = load_config(ROOT / "config.json")
    assert sorted(cfg.nodes, key=lambda n: int(n.rsplit(".", 1)[1])) == [
        f"10.10.1.{i}" for i in range(1, 16)
    ]
    assert cfg.tree.root == "10.10.1.15"
    assert len(cfg.tree.clients()) == 8
    switches = [n for n in cfg.nodes.values() if n.type == "switch"]
    leaves = [s for s in switches if all(cfg.nodes[c].type == "client" for c in s.receive)]
    spines = [s for s in switches if s.send == cfg.tree.root]
    assert (len(leaves), len(spines)) == (4, 2)


def _set(raw: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    target = raw
    for key in path[:-1]:
        target = target.setdefault(key, {})
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return raw


C0, C1, S0, SPINE, AGG = (
    "127.0.0.1:100",
    "127.0.0.1:101",
    "127.0.0.1:10",
    "127.0.0.1:2",
    "127.0.0.1:1",
)
CASES = [
    (
        ("aggregaotr",),
        {"ip": AGG},
        r"config: unknown key 'aggregaotr' \(did you mean 'aggregator'\?\)",
    ),
    (("training", "epohcs"), 1, r"training: unknown key 'epohcs' \(did you mean 'epochs'\?\)"),
    (("training", "epochs"), "2", r'training.epochs: expected int, got "2"'),
    (("training", "epochs"), 0, r"training.epochs: must be positive"),
    (
        ("dataset", "name"),
        "cifar",
        r"dataset.name: 'cifar' is not one of 'digits' \| 'mnist' \| 'synthetic'",
    ),
    (("others", C0, "index"), 4, rf"others\['{C0}'\].index: 4 is not in 0..3"),
    (("others", C1, "index"), 0, rf"others\['{C1}'\].index: 0 is also the index of '{C0}'"),
    (
        ("others", C1, "client_number"),
        5,
        rf"others\['{C1}'\].client_number: 5 differs from 4 of '{C0}'",
    ),
    (
        ("others", C0, "send"),
        "10.10.10.15",
        rf"others\['{C0}'\].send: '10.10.10.15' is not a node of this experiment",
    ),
    (("others", C0, "send"), C1, rf"others\['{C0}'\].send: '{C1}' is a client"),
    (
        ("others", C0, "sned"),
        S0,
        rf"others\['{C0}'\]: unknown key 'sned' \(did you mean 'send'\?\)",
    ),
    (
        ("others", C0, "switch"),
        S0,
        rf"others\['{C0}'\]: unknown key 'switch' \(allowed: type, send, client_number",
    ),
    (
        ("others", C0, "ip"),
        "10.0.0.1",
        rf"others\['{C0}'\].ip: '10.0.0.1' differs from the node's address",
    ),
    (
        ("others", S0, "receive"),
        [C0],
        rf"others\['{S0}'\].receive: \['{C0}'\] disagrees with the nodes that send to it",
    ),
    (("others", C0, "type"), "router", rf"others\['{C0}'\].type: 'router' is not one of"),
    (("others", SPINE, "dumb"), "no", rf"others\['{SPINE}'\].dumb: expected bool"),
    (
        ("aggregator", "ip"),
        "127.0.0.1:9",
        rf"others\['{SPINE}'\].send: '{AGG}' is not a node of this experiment",
    ),
    (("aggregator",), KeyError, r"config: missing key 'aggregator'"),
    (("model", "name"), "cnn", None),  # valid: digits are 8x8 images
    # ranges, declared on the dataclass fields
    (("training", "epochs"), -1, r"^training.epochs: must be positive, got -1$"),
    (("training", "lr"), 0, r"^training.lr: must be positive, got 0.0$"),
    (("training", "momentum"), -0.5, r"^training.momentum: must not be negative, got -0.5$"),
    (("training", "seed"), -1, r"^training.seed: must not be negative, got -1$"),
    (("training", "threads"), 0, r"^training.threads: must be at least 1, got 0$"),
    (("training", "threads"), 8, None),
    (("aggregator", "iteration"), 0, r"^aggregator.iteration: must be in 1..100000, got 0$"),
    (
        ("aggregator", "iteration"),
        100_001,
        r"^aggregator.iteration: must be in 1..100000, got 100001$",
    ),
    (("aggregator", "iteration"), 100_000, None),
    (("network", "port"), 0, r"^network.port: must be in 1..65535, got 0$"),
    (("network", "port"), 65536, r"^network.port: must be in 1..65535, got 65536$"),
    (("network", "retries"), -1, r"^network.retries: must not be negative, got -1$"),
    (("network", "retries"), 0, None),
    (("network", "read_timeout_s"), 0, r"^network.read_timeout_s: must be positive, got 0.0$"),
    (
        ("dataset", "test_fraction"),
        1,
        r"^dataset.test_fraction: must be greater than 0 and less than 1, got 1.0$",
    ),
    (
        ("dataset", "test_fraction"),
        0,
        r"^dataset.test_fraction: must be greater than 0 and less than 1, got 0.0$",
    ),
    (("dataset", "classes"), 1, r"^dataset.classes: must be at least 2, got 1$"),
    (("dataset", "alpha"), 0, r"^dataset.alpha: must be positive"),
    (("dataset", "resize"), 3, r"^dataset.resize: must be 0 or in 4..28, got 3$"),
    (("dataset", "resize"), 29, r"^dataset.resize: must be 0 or in 4..28, got 29$"),
    (("dataset", "resize"), 0, None),
    (("model", "hidden"), [16, 0], r"^model.hidden\[1\]: must be positive, got 0$"),
    (("name",), "a" * 65, r"^name: 'a+' must be 1-64 ASCII letters, digits"),
    (("name",), "a/b", r"^name: 'a/b' must be 1-64"),
    (("name",), "ok\n", r"^name: 'ok\\n' must be 1-64"),
    (("name",), "-x", r"^name: '-x' must be 1-64"),
    (("name",), 7, r"^name: expected str, got 7$"),
    (("name",), "a" * 64, None),
    # addresses
    (
        ("aggregator", "ip"),
        "::1",
        r"^aggregator.ip: '::1' looks like an IPv6 address: write it in brackets",
    ),
]


@pytest.mark.parametrize(("path", "value", "message"), CASES)
def test_config_errors_name_the_path(
    path: tuple[Any, ...], value: Any, message: str | None
) -> None:
    raw = tree_config(model={"name": "mlp"}, dataset={"name": "digits"})
    bad = (
        _set(raw, path, value)
        if path != ("aggregaotr",)
        else {**_set(raw, ("aggregator",), KeyError), "aggregaotr": value}
    )
    if message is None:
        parse_config(bad)
        return
    with pytest.raises(ConfigError, match=message) as err:
        parse_config(bad)
    assert "\n" not in str(err.value)


def test_cycle_is_named() -> None:
    raw = tree_config(leaves=3, clients=3)
    raw["others"]["127.0.0.1:10"]["send"] = "127.0.0.1:11"
    raw["others"]["127.0.0.1:11"]["send"] = "127.0.0.1:10"
    with pytest.raises(
        ConfigError, match=r"send: cycle 127.0.0.1:10 -> 127.0.0.1:11 -> 127.0.0.1:10"
    ):
        parse_config(raw)


def test_no_path_to_aggregator() -> None:
    raw = tree_config(spine=False)
    raw["others"]["127.0.0.1:3"] = {"type": "aggregator"}  # a second root that nobody configured
    raw["others"]["127.0.0.1:11"]["send"] = "127.0.0.1:3"
    raw["others"]["127.0.0.1:11"]["receive"] = ["127.0.0.1:102", "127.0.0.1:103"]
    with pytest.raises(
        ConfigError, match=r"its path ends at '127.0.0.1:3', not at the aggregator '127.0.0.1:1'"
    ):
        parse_config(raw)


def test_cnn_needs_images() -> None:
    with pytest.raises(ConfigError, match="'cnn' needs an image dataset"):
        parse_config(tree_config(model={"name": "cnn"}, dataset={"name": "synthetic"}))


def test_dumb_switch_passes_its_childrens_messages_through() -> None:
    cfg = parse_config(tree_config(dumb=(0,)))
    assert cfg.tree.contributors(SPINE) == (C0, C1, "127.0.0.1:11")
    assert cfg.tree.clients_under(SPINE) == (C0, C1, "127.0.0.1:102", "127.0.0.1:103")


def test_config_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(_set(tree_config(), ("others", C0, "index"), 9)))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: others\['{C0}'\].index"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.json")


def test_ipv6_nodes_get_bracketed_urls_and_file_safe_log_names() -> None:
    raw = tree_config(spine=False, clients=2, leaves=1)
    text = (
        json.dumps(raw).replace('127.0.0.1:1"', '[::1]"').replace("127.0.0.1:100", "[fe80::1]:100")
    )
    cfg = parse_config(json.loads(text))
    endpoints = cfg.default_endpoints()
    assert endpoints["[::1]"] == "http://[::1]:5000"
    assert endpoints["[fe80::1]:100"] == "http://[fe80::1]:100"
    assert cfg.nodes["[::1]"].ip == "::1"


def test_bare_ipv6_node_is_refused_with_a_hint() -> None:
    raw = tree_config()
    raw["others"]["fe80::5"] = raw["others"].pop(C0)
    with pytest.raises(
        ConfigError,
        match=r"^others\['fe80::5'\]: 'fe80::5' looks like an IPv6 address: write it in brackets",
    ):
        parse_config(raw)


def test_addresses_sharing_a_log_file_name_are_refused() -> None:
    raw = tree_config()
    raw["others"]["127.0.0.1_10"] = {"type": "switch", "receive": [], "send": SPINE}
    with pytest.raises(
        ConfigError,
        match=r"^others\['127.0.0.1_10'\]: shares its log file name '127.0.0.1_10.json' "
        r"with '127.0.0.1:10'",
    ):
        parse_config(raw)


def test_the_round_policy_is_decided_once_from_the_config() -> None:
    from hefl.config import RoundPolicy

    raw = tree_config(clients=4)
    assert parse_config(raw).policy == RoundPolicy(0.0, 4, False, False)
    raw["network"] = {"round_deadline_s": 2.5}
    assert parse_config(raw).policy == RoundPolicy(2.5, 4, True, True)
    raw["aggregator"]["min_clients"] = 3
    cfg = parse_config(raw)
    assert cfg.policy == RoundPolicy(2.5, 3, True, True) and cfg.policy.min_clients == 3
    # min_clients means nothing without a deadline: every round waits for every client
    del raw["network"]
    assert parse_config(raw).policy.min_clients == 4
    assert not parse_config(raw).encryption.encrypted
    raw["encryption"] = {"scheme": "bfv"}
    assert parse_config(raw).encryption.encrypted
