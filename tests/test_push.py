"""The config push body: the same declarative parser, unknown keys refused, URLs checked by the
address module.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from hefl.errors import ConfigError
from hefl.node.push import Push, is_experiment_id, make_push, parse_push
from tests.helpers import tree_config

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
