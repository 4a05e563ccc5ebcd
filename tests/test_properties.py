"""Property-based tests (hypothesis) of what parses input from outside: configs, addresses,
envelope headers and ciphertext frames. Whatever comes in, the answer is a value or the one error
class of that parser (a one-line 4xx at a node), never another exception."""

from __future__ import annotations

import copy
import io
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hefl.address import check_base_url, file_stem, log_name, parse_address
from hefl.config import parse_config
from hefl.crypto.frame import frame, frame_lengths, read_parts, unframe
from hefl.errors import ConfigError, ProtocolError
from hefl.node.push import parse_push
from hefl.node.wire import PREFIX, Envelope
from tests.helpers import tree_config

RAW = tree_config(clients=2, leaves=1, spine=False)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# text that looks like addresses often: their alphabet, plus anything
address_text = st.one_of(
    st.text(alphabet="0123456789abcdefxyz.:-_[]/%@ ", max_size=40),
    st.text(max_size=40),
)
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


def one_line(exc: Exception) -> None:
    text = str(exc)
    assert text and "\n" not in text, repr(text)


@FAST
@given(address_text)
def test_an_address_parses_or_is_a_config_error(text: str) -> None:
    try:
        addr = parse_address(text)
    except ConfigError as exc:
        one_line(exc)
        return
    # what parsed is a host and maybe a port, and names a file in the log folder, nothing else
    assert "/" not in addr.host and "\\" not in addr.host and addr.host not in (".", "..")
    assert "/" not in log_name(text) and file_stem(text) not in ("", ".", "..")
    assert addr.port is None or 0 < addr.port < 65536
    again = parse_address(addr.netloc(5000))
    assert (again.host, again.port) == (addr.host, addr.port or 5000)


@FAST
@given(st.one_of(address_text.map(lambda t: "http://" + t), st.text(max_size=40)))
def test_a_peer_url_is_http_host_port_or_a_config_error(url: str) -> None:
    try:
        assert check_base_url(url, "push.endpoints['x']") == url
    except ConfigError as exc:
        one_line(exc)
        return
    assert url.startswith("http://") and "/" not in url[len("http://") :]
    parse_address(url[len("http://") :])


def _paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path inside a JSON value."""
    found = [at]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*at, i))
    return found


def _set(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    value[path[0]] = _set(value[path[0]], path[1:], new)
    return value


@FAST
@given(st.data())
def test_a_config_with_any_value_anywhere_parses_or_is_one_config_error(data: Any) -> None:
    """A valid config with one value (or key) replaced by anything: a config or a one-line
    ConfigError, never another exception."""
    raw = tree_config(clients=2, leaves=1, spine=False)
    path = data.draw(st.sampled_from(_paths(raw)[1:]))
    mutated = _set(copy.deepcopy(raw), path, data.draw(json_value))
    if data.draw(st.booleans()):
        mutated[data.draw(st.text(max_size=10))] = data.draw(json_value)
    try:
        cfg = parse_config(json.loads(json.dumps(mutated)))
    except ConfigError as exc:
        one_line(exc)
        return
    for node in cfg.nodes:  # every address of a parsed config is one the parser takes
        parse_address(node)


@FAST
@given(json_value)
def test_any_json_is_a_config_or_a_config_error(value: Any) -> None:
    try:
        parse_config(value)
    except ConfigError as exc:
        one_line(exc)


push_bodies = st.one_of(
    st.dictionaries(st.text(max_size=12), json_value, max_size=6),
    st.fixed_dictionaries(
        {
            "node": st.one_of(st.sampled_from(list(RAW["others"])), st.text(max_size=12)),
            "experiment": st.one_of(st.just("e-1"), st.text(max_size=12)),
            "config": st.one_of(st.just(RAW), json_value),
        },
        optional={
            "endpoints": st.one_of(
                st.dictionaries(st.sampled_from(list(RAW["others"])), st.text(max_size=20)),
                json_value,
            ),
            "samples": st.one_of(
                st.dictionaries(st.sampled_from(list(RAW["others"])), json_value), json_value
            ),
            "context": st.one_of(st.text(max_size=12), json_value),
        },
    ),
)


@FAST
@given(push_bodies)
def test_any_push_body_is_a_push_or_a_config_error(body: dict[str, Any]) -> None:
    try:
        push = parse_push(body)
    except ConfigError as exc:
        one_line(exc)
        return
    assert push.node in push.cfg.nodes
    assert not push.samples or set(push.samples) == set(push.cfg.tree.clients())


envelopes = st.builds(
    Envelope,
    experiment=st.text(min_size=1, max_size=30).filter(lambda t: t.isprintable()),
    round=st.integers(min_value=0, max_value=10**12 - 1),
    sender=st.text(min_size=1, max_size=30).filter(lambda t: t.isprintable()),
    samples=st.integers(min_value=0, max_value=10**12 - 1),
    contributors=st.integers(min_value=0, max_value=10**12 - 1),
)


@FAST
@given(envelopes)
def test_an_envelope_survives_its_headers(env: Envelope) -> None:
    assert Envelope.from_headers(env.headers()) == env


@FAST
@given(
    st.dictionaries(
        st.sampled_from(
            [f"{PREFIX}{n}" for n in ("Experiment", "Round", "Sender", "Samples", "Contributors")]
        ),
        st.one_of(st.text(max_size=15), st.integers().map(str)),
    )
)
def test_any_headers_are_an_envelope_or_a_protocol_error(headers: dict[str, str]) -> None:
    try:
        env = Envelope.from_headers(headers)
    except ProtocolError as exc:
        one_line(exc)
        return
    assert min(env.round, env.samples, env.contributors) >= 0


@FAST
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_a_frame_gives_back_its_parts(parts: list[bytes]) -> None:
    body = frame(parts)
    assert list(unframe(body, len(parts))) == parts
    assert list(unframe(bytearray(body), len(parts))) == parts
    if parts:
        with pytest.raises(ProtocolError):
            frame_lengths(body, len(parts) + 1)


@FAST
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=8))
def test_any_bytes_are_parts_or_a_protocol_error(payload: bytes, count: int) -> None:
    try:
        parts = list(unframe(payload, count))
    except ProtocolError as exc:
        one_line(exc)
        return
    assert len(parts) == count and 8 + 4 * count + sum(map(len, parts)) == len(payload)
    assert list(read_parts(io.BytesIO(payload).read, count)) == parts  # as read from a socket


@FAST
@given(st.lists(st.binary(max_size=32), min_size=1, max_size=6), st.data())
def test_a_changed_frame_header_is_caught(parts: list[bytes], data: Any) -> None:
    """Any change to a frame's declared count or lengths is refused, or still matches the size."""
    body = bytearray(frame(parts))
    framing, at_part = list(range(8)), 8  # magic and count, then each part's length before it
    for p in parts:
        framing += range(at_part, at_part + 4)
        at_part += 4 + len(p)
    at = data.draw(st.sampled_from(framing))
    body[at] = data.draw(st.integers(min_value=0, max_value=255))
    try:
        got = list(unframe(bytes(body), len(parts)))
    except ProtocolError:
        return
    assert b"".join(got) == b"".join(parts)  # only how the bytes split changed, if anything
