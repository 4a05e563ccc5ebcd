"""A client's metrics report: the config's declarative parser, every refusal a ProtocolError."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hefl.errors import ProtocolError
from hefl.node.metrics import MetricsReport, parse_metrics

SENDER = "127.0.0.1:100"
GOOD: dict[str, Any] = {
    "loss": 0.25,
    "accuracy": 0.9,
    "test_samples": 90,
    "byte_send": 1000,
    "byte_received": 0,
}


def test_a_report_round_trips() -> None:
    report = parse_metrics(json.dumps(GOOD).encode(), SENDER)
    assert report == MetricsReport(0.25, 0.9, 90, 1000, 0)
    assert parse_metrics(report.encode(), SENDER) == report
    assert (
        parse_metrics(json.dumps({**GOOD, "loss": 2, "accuracy": 1}).encode(), SENDER).accuracy
        == 1.0
    )


def _with(**changes: Any) -> bytes:
    body = {**GOOD, **changes}
    return json.dumps({k: v for k, v in body.items() if v is not KeyError}).encode()


BAD = [
    (b"", "not a JSON metrics report"),
    (b"{loss: 1}", "not a JSON metrics report"),
    (b"\xff\xfe", "not a JSON metrics report"),
    (b"[" * 100_000 + b"]" * 100_000, "not a JSON metrics report"),
    (b"[1, 2]", r"report: expected an object, got \[1, 2\]"),
    (b"null", "report: expected an object, got null"),
    (_with(loss=KeyError), "report: missing key 'loss'"),
    (_with(extra=1), "report: unknown key 'extra'"),
    (_with(los=1.0, loss=KeyError), r"report: unknown key 'los' \(did you mean 'loss'\?\)"),
    (_with(loss="0.5"), 'report.loss: expected float, got "0.5"'),
    (_with(loss=None), "report.loss: expected float, got null"),
    (
        b'{"loss": NaN, "accuracy": 0.5, "test_samples": 1, "byte_send": 0, "byte_received": 0}',
        "report.loss: expected a finite number, got nan",
    ),
    (
        (
            b'{"loss": Infinity, "accuracy": 0.5, "test_samples": 1, "byte_send": 0, '
            b'"byte_received": 0}'
        ),
        "report.loss: expected a finite number, got inf",
    ),
    (_with(accuracy=1.5), r"report.accuracy: must be in 0..1, got 1.5"),
    (_with(accuracy=-0.1), r"report.accuracy: must be in 0..1, got -0.1"),
    (_with(accuracy=True), "report.accuracy: expected float, got true"),
    (_with(test_samples=0), "report.test_samples: must be positive, got 0"),
    (_with(test_samples=2.5), "report.test_samples: expected int, got 2.5"),
    (_with(byte_send=-1), "report.byte_send: must not be negative, got -1"),
    (_with(byte_received=-5), "report.byte_received: must not be negative, got -5"),
]


@pytest.mark.parametrize(("body", "message"), BAD)
def test_bad_reports_are_one_line_protocol_errors_naming_the_sender(
    body: bytes, message: str
) -> None:
    with pytest.raises(ProtocolError, match=message) as err:
        parse_metrics(body, SENDER)
    text = str(err.value)
    assert text.startswith(f"metrics from '{SENDER}': ")
    assert "\n" not in text
    assert err.value.status_code == 400
