"""A client's metrics report, POSTed to the aggregator's /metrics: shape, parser and encoding."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from hefl.errors import ProtocolError
from hefl.node.wire import Body
from hefl.schema import MAX_CLIENTS, bounds, parse_section


@dataclass(frozen=True)
class ClientMetrics:
    """One logical client's evaluation, in the report of a node hosting several."""

    client: str
    loss: float
    accuracy: float = field(metadata=bounds(ge=0, le=1))
    test_samples: int = field(metadata=bounds(gt=0))


@dataclass(frozen=True)
class MetricsReport:
    """A client node's evaluation of a round's global model, and the bytes it moved in that
    round. A node hosting several clients gives each one's figures in `clients`; loss, accuracy
    and test samples are then theirs together (weighted by test samples)."""

    loss: float  # finite: the parser refuses NaN and infinities
    accuracy: float = field(metadata=bounds(ge=0, le=1))
    test_samples: int = field(metadata=bounds(gt=0))
    byte_send: int = field(metadata=bounds(ge=0))
    byte_received: int = field(metadata=bounds(ge=0))
    clients: tuple[ClientMetrics, ...] = ()

    def encode(self) -> bytes:
        """The JSON body a client node sends (a node of one client: no `clients` key)."""
        body = asdict(self)
        if not self.clients:
            del body["clients"]
        return json.dumps(body).encode()

    def figures(self, sender: str) -> list[tuple[str, int, float, float]]:
        """(client, test samples, loss, accuracy) of each client the report covers."""
        if not self.clients:
            return [(sender, self.test_samples, self.loss, self.accuracy)]
        return [(c.client, c.test_samples, c.loss, c.accuracy) for c in self.clients]


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
    clients = raw.pop("clients", []) if isinstance(raw, dict) else []
    if not isinstance(clients, list) or len(clients) > MAX_CLIENTS:
        raise ProtocolError(f"{where}: report.clients: expected a list of at most {MAX_CLIENTS}")
    parsed = tuple(
        parse_section(c, ClientMetrics, f"{where}: report.clients[{i}]", error=ProtocolError)
        for i, c in enumerate(clients)
    )
    report: MetricsReport = parse_section(
        raw,
        MetricsReport,
        f"{where}: report",
        skip=("clients",),
        error=ProtocolError,
        clients=parsed,
    )
    return report
