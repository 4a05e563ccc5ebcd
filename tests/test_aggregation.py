"""Round buffers that accept or refuse messages, and the envelope."""

from __future__ import annotations

import pytest

from hefl.errors import DuplicateMessage, OutOfWindow, ProtocolError
from hefl.node.aggregation import RoundBuffer
from hefl.node.wire import Envelope


def env(sender: str, round_: int = 0, experiment: str = "e") -> Envelope:
    return Envelope(experiment, round_, sender, samples=10, contributors=1)


def test_round_buffer_completes_when_every_sender_arrived() -> None:
    buf = RoundBuffer("e", ["a", "b"], rounds=3)
    buf.open(0)
    buf.open(1)
    assert buf.accept(env("a"), b"1") is False
    assert buf.accept(env("b", 1), b"x") is False  # another round does not complete round 0
    assert buf.accept(env("b"), b"2") is True
    assert buf.release(0).payloads == {"a": b"1", "b": b"2"}


@pytest.mark.parametrize(
    ("message", "error", "match"),
    [
        (env("a"), DuplicateMessage, "round 1 from 'a' already received"),
        (env("z"), ProtocolError, "sender 'z' is not one this node adds"),
        (
            env("b", experiment="other"),
            ProtocolError,
            "experiment 'other' is not the running experiment 'e'",
        ),
        (env("b", 3), ProtocolError, r"round 4 is outside 1..3"),
        (env("b", 1), OutOfWindow, r"round 2 from 'b' is not open here \(open: round 1\)"),
    ],
)
def test_round_buffer_refuses(message: Envelope, error: type[Exception], match: str) -> None:
    buf = RoundBuffer("e", ["a", "b"], rounds=3)
    buf.open(0)
    buf.accept(env("a"), b"1")
    with pytest.raises(error, match=match):
        buf.accept(message, b"2")


def test_released_round_refuses_late_repeat() -> None:
    buf = RoundBuffer("e", ["a", "b"], rounds=2)
    buf.open(0)
    assert not buf.accept(env("a"), b"1")
    assert buf.accept(env("b"), b"1")
    buf.release(0)
    with pytest.raises(DuplicateMessage):  # a retry of what was taken: delivered, not refused
        buf.accept(env("a"), b"1")


def test_window_moves_with_the_protocol() -> None:
    """Nothing is taken before a round opens; opening the next one (`only`) closes the last; a
    first message for a closed round is out of the window, not a duplicate."""
    buf = RoundBuffer("e", ["a", "b"], rounds=3)
    with pytest.raises(OutOfWindow, match="no round is open"):
        buf.accept(env("a"), b"1")
    buf.open(0, only=True)
    with pytest.raises(OutOfWindow, match=r"round 3 from 'a' is not open here \(open: round 1\)"):
        buf.accept(env("a", 2), b"1")
    assert not buf.accept(env("a"), b"1")
    buf.open(1, only=True)
    with pytest.raises(OutOfWindow, match=r"round 1 from 'b'"):
        buf.accept(env("b"), b"1")
    with pytest.raises(DuplicateMessage):
        buf.accept(env("a"), b"1")
    assert not buf.accept(env("b", 1), b"1")
