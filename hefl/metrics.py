"""A client's metrics report, POSTed to the aggregator's /metrics: shape, parser and encoding."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from hefl.errors import ProtocolError
from hefl.schema import bounds, parse_section
from hefl.wire import Body


@dataclass(frozen=True)
class MetricsReport:
    """One client's evaluation of a round's global model, and the bytes it moved in that round."""

    loss: float  # finite: the parser refuses NaN and infinities
    accuracy: float = field(metadata=bounds(ge=0, le=1))
    test_samples: int = field(metadata=bounds(gt=0))
    byte_send: int = field(metadata=bounds(ge=0))
    byte_received: int = field(metadata=bounds(ge=0))

    def encode(self) -> bytes:
        """The JSON body a client sends."""
        return json.dumps(asdict(self)).encode()


def parse_metrics(body: Body, sender: str) -> MetricsReport:
    """Validate a metrics body; anything off is a one-line ProtocolError starting
    `metrics from '<sender>'`."""
    where = f"metrics from {sender!r}"
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, or nested too deep
        raise ProtocolError(
            f"{where}: not a JSON metrics report ({type(exc).__name__}: {exc})"
        ) from None
    report: MetricsReport = parse_section(
        raw, MetricsReport, f"{where}: report", error=ProtocolError
    )
    return report
