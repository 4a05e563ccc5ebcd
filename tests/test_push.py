"""The config push body: the same declarative parser, unknown keys refused, URLs checked by the
address module; and the controller's line for a node that refuses a push for its credential.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from hefl.config import parse_config
from hefl.errors import ConfigError, ForeignNode, PeerRefused
from hefl.node.push import Push, is_experiment_id, make_push, parse_push, send_push
from hefl.node.transport import Timeouts, Transport
from tests.helpers import push, small, tree_config

C0, S0, AGG = "127.0.0.1:100", "127.0.0.1:10", "127.0.0.1:1"


def _body(**changes: Any) -> dict[str, Any]:
    body = {**make_push(tree_config(), S0, "t-1", {}), **changes}
    return {k: v for k, v in body.items() if v is not KeyError}


def test_a_push_parses_into_its_parts() -> None:
    push = parse_push(_body(context=base64.b64encode(b"ctx").decode()))
    assert isinstance(push, Push)
    assert (push.node, push.experiment, push.context) == (S0, "t-1", b"ctx")
    assert push.endpoints == push.cfg.default_endpoints()
    assert push.endpoints[C0] == "http://127.0.0.1:100"


def test_given_endpoints_are_kept() -> None:
    endpoints = {n: f"http://[::1]:{6000 + i}" for i, n in enumerate(tree_config()["others"])} | {
        AGG: "http://agg"
    }
    assert parse_push(_body(endpoints=endpoints)).endpoints == endpoints


BAD = [
    (_body(nodee=S0), r"^push: unknown key 'nodee' \(did you mean 'node'\?\)$"),
    (_body(node=KeyError), r"^push: missing key 'node'$"),
    (_body(node=3), r"^push.node: expected str, got 3$"),
    (_body(node="127.0.0.1:99"), r"^push.node: '127.0.0.1:99' is not a node of this experiment$"),
    (_body(experiment="a" * 129), r"^push.experiment: 'a+' must be 1-128 ASCII letters"),
    (_body(experiment="../x"), r"^push.experiment: '../x' must be 1-128"),
    (_body(config=[1]), r"^push.config: expected an object, got \[1\]$"),
    (_body(config={**tree_config(), "name": "a b"}), r"^name: 'a b' must be 1-64"),
    (
        _body(endpoints={C0: "http://h:1"}),
        r"^push.endpoints: must give the URL of every node .*none for '127.0.0.1:101'",
    ),
    (_body(endpoints=[1]), r"^push.endpoints: expected an object"),
    (
        _body(endpoints={**{n: "http://h:1" for n in tree_config()["others"]}, AGG: "ftp://h"}),
        r"^push.endpoints\['127.0.0.1:1'\]: 'ftp://h' is not of the form http://host\[:port\]$",
    ),
    (
        _body(endpoints={**{n: "http://h:1" for n in tree_config()["others"]}, AGG: 5}),
        r"^push.endpoints\['127.0.0.1:1'\]: expected str, got 5$",
    ),
    (
        _body(
            endpoints={**{n: "http://h:1" for n in tree_config()["others"]}, AGG: "http://::1:5"}
        ),
        r"^push.endpoints\['127.0.0.1:1'\]: '::1:5' looks like an IPv6 address",
    ),
    (_body(context="not base64!"), r"^push.context: not base64$"),
    ("[]", r"^push: expected an object"),
]


@pytest.mark.parametrize(("body", "message"), BAD)
def test_bad_pushes_are_one_line_config_errors(body: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        parse_push(body)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("t-20240101-120000-ab12", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        ("-a", False),
        ("a/b", False),
        ("a\n", False),
        (None, False),
    ],
)
def test_experiment_ids(text: Any, ok: bool) -> None:
    assert is_experiment_id(text) is ok


# ---------------------------------------------- a node that checks another credential (401)


def _push_as(url: str, token: str, experiment: str = "ours-1") -> Any:
    """This controller's push of S0's config to the node at `url`, with `token`."""
    transport = Transport({S0: url}, Timeouts(retries=0), token)
    try:
        return send_push(transport, S0, make_push(small(), S0, experiment, {}))
    finally:
        transport.close()


def test_a_push_to_an_idle_node_of_another_credential_names_it_and_the_port_clash(
    serve_node: Any,
) -> None:
    url, _ = serve_node(token="theirs")
    port = url.rsplit(":", 1)[1]
    with pytest.raises(ForeignNode) as err:
        _push_as(url, "ours")
    line = str(err.value)
    assert line.startswith(f"{S0} ({url}) refused its config with 401: it holds another ")
    assert "and is idle: another user's node on port " + port in line
    assert "(a port clash on a shared machine)" in line
    assert "give your nodes a port of their own" in line and "push with its keys/token" in line
    assert "\n" not in line and "theirs" not in line and err.value.state == "idle"


def test_a_push_to_a_node_serving_another_experiment_says_so_and_leaves_it(
    serve_node: Any,
) -> None:
    url, server = serve_node(token="theirs")
    assert push(url, small(), S0, {}, token="theirs").status_code == 200  # their run
    with pytest.raises(ForeignNode) as err:
        _push_as(url, "ours")
    line = str(err.value)
    assert f"{S0} ({url}) refused its config with 401" in line
    assert "serves another experiment (running, a switch): another user's node on port" in line
    assert "its own keys/token would take it from that experiment" in line
    assert "push with its keys/token" not in line
    assert server.node is not None and server.node.experiment == "exp-1"  # theirs, untouched


def test_a_push_without_a_credential_says_this_controller_has_none(serve_node: Any) -> None:
    url, _ = serve_node(token="theirs")
    with pytest.raises(ForeignNode, match=r"401: it checks a credential and this controller sent"):
        _push_as(url, "")


def test_other_refusals_stay_what_the_node_said(serve_node: Any) -> None:
    url, _ = serve_node(token="ours")
    with pytest.raises(PeerRefused) as err:
        _push_as(url, "ours", experiment="../x")  # a 400 of the node's own
    assert not isinstance(err.value, ForeignNode) and err.value.status == 400
    assert _push_as(url, "ours").status_code == 200


def test_the_controller_names_each_node_of_another_credential(
    serve_node: Any, tmp_path: Path
) -> None:
    from hefl.control.experiment import Controller

    raw = small(rounds=1)
    cfg = parse_config(raw)
    endpoints = {node: serve_node(token="theirs")[0] for node in cfg.nodes}
    ctl = Controller(raw, cfg, endpoints, "ours-1", tmp_path, "ours", out=lambda line: None)
    with pytest.raises(ConfigError) as err:
        ctl.push_configs()
    said = str(err.value)
    assert said.startswith("2 node(s) refused their config: ")  # the clients, pushed first
    for client in cfg.tree.clients():
        assert (
            f"{client} ({endpoints[client]}) refused its config with 401: it holds another " in said
        )
    assert said.count("(a port clash on a shared machine)") == 2 and "\n" not in said
