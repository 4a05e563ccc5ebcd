"""Round buffers that accept or refuse messages, and the envelope."""

from __future__ import annotations

import pytest

from hefl.aggregation import RoundBuffer
from hefl.errors import DuplicateMessage, ProtocolError
from hefl.wire import Envelope


def env(sender: str, round_: int = 0, experiment: str = "e") -> Envelope:
    return Envelope(experiment, round_, sender, samples=10, contributors=1)


def test_round_buffer_completes_when_every_sender_arrived() -> None:
    buf = RoundBuffer("e", ["a", "b"], rounds=3)
    assert buf.accept(env("a"), b"1") is False
    assert buf.accept(env("b", 1), b"x") is False  # another round does not complete round 0
    assert buf.accept(env("b"), b"2") is True
    assert buf.release(0).payloads == {"a": b"1", "b": b"2"}


@pytest.mark.parametrize(
    ("message", "error", "match"),
    [
        (env("a"), DuplicateMessage, "round 0 from 'a' already received"),
        (env("z"), ProtocolError, "sender 'z' is not one this node adds"),
        (
            env("b", experiment="other"),
            ProtocolError,
            "experiment 'other' is not the running experiment 'e'",
        ),
        (env("b", 3), ProtocolError, r"round 3 is outside 0..2"),
    ],
)
def test_round_buffer_refuses(message: Envelope, error: type[Exception], match: str) -> None:
    buf = RoundBuffer("e", ["a", "b"], rounds=3)
    buf.accept(env("a"), b"1")
    with pytest.raises(error, match=match):
        buf.accept(message, b"2")


def test_released_round_refuses_late_repeat() -> None:
    buf = RoundBuffer("e", ["a"], rounds=2)
    assert buf.accept(env("a"), b"1")
    buf.release(0)
    with pytest.raises(DuplicateMessage):
        buf.accept(env("a"), b"1")
