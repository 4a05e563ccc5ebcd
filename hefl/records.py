"""The run log and the results as a contract: every key a node log, rounds.json and summary.json
hold is a field of one of the frozen dataclasses here, written with `to_json` and read with
`from_json`. Nothing else spells those keys (tests/test_layout.py checks it).

The files keep the layout scripts and other tools read: a node log is `<node>.json` in the run
folder, its header keys at the top level (`node`, `role`, `experiment`, `format_version`,
`finished`, `iteration` and what its role adds), one record per round in `iteration`. A log
written before `format_version` existed (version 1) loads the same way: every field added since has
a default. Readers are lenient where a file was cut short or edited by hand: a number that is not
a number reads as unknown (None), a key nobody knows is ignored; a file that is not a log at all
raises `LogFormatError`.
"""

from __future__ import annotations

import functools
import math
import types
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin, get_type_hints

from hefl.errors import HeflError

FORMAT_VERSION = 2  # 1: the logs written before the field (the same keys, fewer of them)
DIRECTIONS = ("up", "down", "control")  # a message's direction: the update's, the result's, other
ROLES = ("client", "switch", "aggregator")
SPLIT = ("training", "crypto", "transfer", "waiting")  # how a round's critical path splits
UNATTRIBUTED = "unattributed"  # a split's part no log accounts for (a node's log missing)
OPTIONAL = {"optional": True}  # a field written only when it has a value (a role's figures)
WITH_REPORTS = {"optional": True, "with": "reports"}  # ... or when the record has `reports`

T = TypeVar("T")


class LogFormatError(HeflError):
    """A file that is not a node log, a rounds.json or a summary.json this version can read."""


class NewerFormat(LogFormatError):
    """A file written by a newer hefl, in a layout this one does not know."""


def check_version(data: Mapping[str, Any], what: str) -> int:
    """The `format_version` of a file's data (1 when absent): a whole number from 1 on, and no
    newer than this code's."""
    version = data.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise LogFormatError(
            f"{what}: format_version must be a whole number from 1 on, got {version!r}"
        )
    if version > FORMAT_VERSION:
        raise NewerFormat(
            f"{what} of format {version}, newer than this hefl's {FORMAT_VERSION}: read it with "
            "the hefl that wrote it, or a newer one"
        )
    return version


def to_json(obj: Any) -> Any:
    """A record as JSON data: dataclasses as objects in field order (an optional field only when
    set, or when the field its metadata names `with` is), spans as [phase, start, seconds],
    mappings and sequences as objects and lists."""
    kind = type(obj)
    if kind in _FLAT:  # scalars only (a log holds thousands of messages): their fields as they are
        out = dict(obj.__dict__)
        if kind is Message and out["form"] is None:
            del out["form"]  # optional: only updates and results of HE schemes have one
        return out
    if kind is Span:
        return [obj.phase, obj.start, obj.seconds]
    if kind is Totals and not obj.rounds:
        return {"rounds": 0}
    if is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in fields(obj):
            value = getattr(obj, f.name)
            if value is None and f.metadata.get("optional"):
                partner = f.metadata.get("with")
                if partner is None or getattr(obj, partner) is None:
                    continue
            out[f.name] = to_json(value)
        return out
    if isinstance(obj, Mapping):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    return obj


def from_json(cls: type[T], data: Any) -> T:
    """One record of `cls` from JSON data. Lenient where a file was edited or cut short: a value
    that is not what its field holds reads as the field's default (unknown, zero or empty), an
    entry of a list or an object that is not reads as absent, a key nobody knows is ignored;
    only a missing or odd required field (a node log's `node`, a round's `round`) makes the data
    not a record of `cls` (LogFormatError)."""
    if not isinstance(data, Mapping):
        raise LogFormatError(f"a {cls.__name__} must be a JSON object, not {type(data).__name__}")
    values = {}
    klass: Any = cls  # a dataclass (the cache needs it hashable, as every class is)
    for name, (tp, required) in _hints(klass).items():
        if name not in data:
            if required:
                raise LogFormatError(f"a {cls.__name__} needs `{name}`")
            continue
        try:
            values[name] = _value(tp, data[name], f"{cls.__name__}.{name}")
        except LogFormatError:
            if required:
                raise
    return cls(**values)


@functools.cache
def _hints(cls: Any) -> dict[str, tuple[Any, bool]]:
    hints = get_type_hints(cls)
    return {
        f.name: (hints[f.name], f.default is MISSING and f.default_factory is MISSING)
        for f in fields(cls)
    }


def _value(tp: Any, value: Any, where: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return None if value is None else _value(inner[0], value, where)
    if tp is Span:
        if not (isinstance(value, list | tuple) and len(value) == 3):
            raise LogFormatError(f"{where}: a span is [phase, start, seconds]")
        return Span(str(value[0]), *(_value(float, v, where) for v in value[1:]))
    if isinstance(tp, type) and is_dataclass(tp):
        return from_json(tp, value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise LogFormatError(f"{where}: not a list")
        return tuple(_kept(args[0], value, where))
    if origin in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise LogFormatError(f"{where}: not an object")
        return dict(_kept(args[1], value.values(), where, list(value)))
    return _scalar(tp, value, where)


def _kept(tp: Any, items: Any, where: str, keys: list[Any] | None = None) -> Any:
    """The items that read as `tp` (with `keys`: (key, item) pairs), the others left out."""
    for i, item in enumerate(items):
        try:
            got = _value(tp, item, where)
        except LogFormatError:
            continue
        yield got if keys is None else (str(keys[i]), got)


def _scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is Any:
        return value
    number = isinstance(value, int | float) and not isinstance(value, bool)
    try:
        if tp is float and number and math.isfinite(float(value)):
            return float(value)
        if tp is int and number and float(value).is_integer():
            return int(value)
    except OverflowError:  # an integer too large for a float: not a figure a log holds
        pass
    if tp not in (int, float) and isinstance(value, tp):
        return value
    raise LogFormatError(f"{where}: {value!r} is not a {getattr(tp, '__name__', tp)}")


class Record:
    """to_json/from_json as methods, for every record below."""

    def to_json(self) -> Any:
        return to_json(self)

    @classmethod
    def from_json(cls: type[T], data: Any) -> T:
        return from_json(cls, data)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))  # type: ignore[arg-type]


# ---- a node log -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkBytes(Record):
    """A round's body bytes with one peer: in all, and by direction."""

    sent: int = 0
    received: int = 0
    sent_up: int = 0
    received_up: int = 0
    sent_down: int = 0
    received_down: int = 0
    sent_control: int = 0
    received_control: int = 0

    @staticmethod
    def of(sent: Mapping[str, int], received: Mapping[str, int]) -> LinkBytes:
        """From the bytes by direction (`DIRECTIONS`)."""
        by = {
            f"{k}_{d}": n.get(d, 0)
            for k, n in (("sent", sent), ("received", received))
            for d in DIRECTIONS
        }
        return LinkBytes(sum(sent.values()), sum(received.values()), **by)

    def sent_in(self, direction: str) -> int:
        return int(getattr(self, f"sent_{direction}"))


@dataclass(frozen=True)
class Message(Record):
    """One message a node sent or received: `t` seconds from its round's start (its clock),
    `dir` sent or received, the message `kind`, the `peer`, the body `bytes` and, for an update or
    a result of an HE scheme, the `form` its ciphertexts travel in (full, seeded, seed_list)."""

    t: float
    dir: str
    kind: str
    peer: str
    bytes: int
    form: str | None = field(default=None, metadata=OPTIONAL)


@dataclass(frozen=True)
class Span(Record):
    """A timed phase: its start (seconds from the round's start) and length; [phase, start, s]."""

    phase: str
    start: float
    seconds: float


@dataclass(frozen=True)
class ClientFigures(Record):
    """One client's figures in a round of a node hosting several (the record's `clients`); a
    node of one client writes the same keys into its round record itself."""

    phases: Mapping[str, float] | None = field(default=None, metadata=OPTIONAL)
    train_loss: float | None = field(default=None, metadata=OPTIONAL)
    train_samples: int | None = field(default=None, metadata=OPTIONAL)
    clipped: int | None = field(default=None, metadata=OPTIONAL)  # values cut to the clip
    late: bool | None = field(default=None, metadata=OPTIONAL)  # its update came after the close
    skipped: bool | None = field(default=None, metadata=OPTIONAL)  # not trained: round closed
    idle: bool | None = field(default=None, metadata=OPTIONAL)  # not drawn this round
    update_bytes: int | None = field(default=None, metadata=OPTIONAL)
    loss: float | None = field(default=None, metadata=OPTIONAL)  # of the round's global model
    accuracy: float | None = field(default=None, metadata=OPTIONAL)
    test_samples: int | None = field(default=None, metadata=OPTIONAL)


@dataclass(frozen=True)
class RoundRecord(Record):
    """One round on one node: when (`start_s` on the node's monotonic clock since it started,
    `start_time`/`end_time` wall clock, `duration_s` monotonic), bytes (body bytes: in all, by
    direction, by peer in `links`), messages, phase seconds (wall and CPU) and their spans, and
    the figures of the node's role; `end_time` is set when the node closed the round."""

    round: int
    start_s: float | None = None  # None in logs from before message times were recorded
    start_time: float | None = None
    end_time: float | None = None
    duration_s: float | None = None
    byte_received: int = 0  # the original study's names: every body byte in and out
    byte_send: int = 0
    byte_send_up: int = 0
    byte_received_up: int = 0
    byte_send_down: int = 0
    byte_received_down: int = 0
    byte_send_control: int = 0
    byte_received_control: int = 0
    messages_received: int = 0
    messages_sent: int = 0
    links: Mapping[str, LinkBytes] = field(default_factory=dict)
    phases: Mapping[str, float] = field(default_factory=dict)
    phases_cpu: Mapping[str, float] = field(default_factory=dict)
    spans: tuple[Span, ...] = ()
    messages: tuple[Message, ...] = ()
    # a client's (the node of one client: its own; a node hosting several: the node's together)
    train_loss: float | None = field(default=None, metadata=OPTIONAL)
    train_samples: int | None = field(default=None, metadata=OPTIONAL)
    clipped: int | None = field(default=None, metadata=OPTIONAL)
    late: bool | None = field(default=None, metadata=OPTIONAL)
    skipped: bool | None = field(default=None, metadata=OPTIONAL)
    idle: bool | None = field(default=None, metadata=OPTIONAL)
    update_bytes: int | None = field(default=None, metadata=OPTIONAL)
    precomputed: int | None = field(default=None, metadata=OPTIONAL)
    precompute_s: float | None = field(default=None, metadata=OPTIONAL)
    precompute_cpu_s: float | None = field(default=None, metadata=OPTIONAL)
    total_samples: int | None = field(default=None, metadata=OPTIONAL)
    clients: Mapping[str, ClientFigures] | None = field(default=None, metadata=OPTIONAL)
    # a client's and the aggregator's: the round's global model (the aggregator's are null when
    # it took no report: written with its `reports`)
    loss: float | None = field(default=None, metadata=WITH_REPORTS)
    accuracy: float | None = field(default=None, metadata=WITH_REPORTS)
    test_samples: int | None = field(default=None, metadata=OPTIONAL)
    # a switch's and the aggregator's: whose updates its sum held, and who it lacked
    contributors: tuple[str, ...] | None = field(default=None, metadata=OPTIONAL)
    missing: tuple[str, ...] | None = field(default=None, metadata=OPTIONAL)
    # the aggregator's: the clients' own byte counts and how many reports its figures hold
    client_byte_send: int | None = field(default=None, metadata=OPTIONAL)
    client_byte_received: int | None = field(default=None, metadata=OPTIONAL)
    reports: int | None = field(default=None, metadata=OPTIONAL)

    def sent(self, direction: str) -> int:
        return int(getattr(self, f"byte_send_{direction}"))

    def received(self, direction: str) -> int:
        return int(getattr(self, f"byte_received_{direction}"))


@dataclass(frozen=True)
class HostedClient(Record):
    """A client of a node hosting several, in the node log's header: what the HE error check
    needs to redo its FedAvg arithmetic."""

    client: str
    index: int | None = None
    train_samples: int | None = None
    weight: float | None = None


@dataclass(frozen=True)
class NodeLog(Record):
    """A node's log of one experiment: the header, then one record per round (`iteration`)."""

    node: str
    role: str
    experiment: str = ""
    format_version: int = 1
    scheme: str | None = field(default=None, metadata=OPTIONAL)
    can_decrypt: bool | None = field(default=None, metadata=OPTIONAL)
    machine: Mapping[str, Any] | None = field(default=None, metadata=OPTIONAL)
    # a client node's: see ClientNode (a node hosting several lists its clients)
    client_number: int | None = field(default=None, metadata=OPTIONAL)
    index: int | None = field(default=None, metadata=OPTIONAL)
    train_samples: int | None = field(default=None, metadata=OPTIONAL)
    all_samples: int | None = field(default=None, metadata=OPTIONAL)
    weight: float | None = field(default=None, metadata=OPTIONAL)
    local_sum: bool | None = field(default=None, metadata=OPTIONAL)
    clients: tuple[HostedClient, ...] | None = field(default=None, metadata=OPTIONAL)
    # the rounds at which the node rejoined after its process restarted (hefl/node/rejoin.py)
    rejoined: tuple[int, ...] | None = field(default=None, metadata=OPTIONAL)
    finished: bool = False
    iteration: tuple[RoundRecord, ...] = ()

    HEADER: ClassVar[tuple[str, ...]] = ()  # set below: the keys a header may carry

    @classmethod
    def from_json(cls, data: Any) -> NodeLog:
        """A log of any version this one reads (1: before `format_version`)."""
        if not isinstance(data, Mapping):
            raise LogFormatError(f"a node log must be a JSON object, not {type(data).__name__}")
        check_version(data, "a node log")
        return from_json(cls, data)

    def rounds_closed(self) -> int:
        """How many rounds the node closed, from round 0 on without a gap."""
        closed = {rec.round for rec in self.iteration if rec.end_time}
        count = 0
        while count in closed:
            count += 1
        return count

    def by_round(self) -> dict[int, RoundRecord]:
        return {rec.round: rec for rec in self.iteration}


NodeLog.HEADER = tuple(k for k in NodeLog.keys() if k not in ("finished", "iteration"))


# ---- rounds.json and /status ------------------------------------------------------------------


@dataclass(frozen=True)
class RoundRow(Record):
    """A round the aggregator closed, as it says on /status and the controller writes to
    rounds.json: the global model's accuracy and loss over the `test_samples` of the `reports`
    it took, the clients' own byte counts, who contributed (a count) and who did not, its
    duration on the aggregator's clock and the update bytes that reached it."""

    round: int
    accuracy: float | None = None
    loss: float | None = None
    client_byte_send: int = 0
    client_byte_received: int = 0
    contributors: int | None = None
    missing: tuple[str, ...] = ()
    reports: int | None = None
    test_samples: int | None = None
    duration_s: float | None = field(default=None, metadata=OPTIONAL)
    aggregator_received: int | None = field(default=None, metadata=OPTIONAL)
    # with aggregator.clients_per_round: the clients the round drew, in slice order
    sampled: tuple[str, ...] | None = field(default=None, metadata=OPTIONAL)


MISSING_SHOWN = 8  # the missing clients a round line names (a row lists them all)


def rows_from_json(data: Any) -> list[RoundRow] | None:
    """rounds.json's rows (None: not a list of rows)."""
    if not isinstance(data, list):
        return None
    try:
        return [RoundRow.from_json(row) for row in data]
    except LogFormatError:
        return None


# ---- summary.json -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RoleBytes(Record):
    """A role's body bytes in a round, summed over its nodes, by direction."""

    send_up: int = 0
    received_up: int = 0
    send_down: int = 0
    received_down: int = 0
    send_control: int = 0
    received_control: int = 0

    @staticmethod
    def of(records: list[RoundRecord]) -> RoleBytes:
        return RoleBytes(
            **{
                f"{k}_{d}": sum(getattr(rec, f"byte_{k}_{d}") for rec in records)
                for d in DIRECTIONS
                for k in ("send", "received")
            }
        )


@dataclass(frozen=True)
class NodeBytes(Record):
    role: str
    sent: int = 0
    received: int = 0


@dataclass(frozen=True)
class CriticalPath(Record):
    """The chain of nodes that decided a round's time (client first), whether every log on it
    was there, how its time splits (`SPLIT`, plus `unattributed` when incomplete) and its
    client."""

    nodes: tuple[str, ...] = ()
    complete: bool = False
    split: Mapping[str, float] = field(default_factory=dict)
    client: str | None = None


@dataclass(frozen=True)
class HeError(Record):
    """The max and mean absolute difference from the plaintext FedAvg of the same updates."""

    max_abs: float
    mean_abs: float


@dataclass(frozen=True)
class RoundSummary(Record):
    """One completed round in summary.json (README, "What the logs hold")."""

    round: int
    accuracy: float | None = None
    loss: float | None = None
    clients: int = 0
    test_samples: int | None = None
    contributors: int | None = None
    round_s: float | None = None
    bytes_on_wire: int = 0
    aggregator_ingress: int = 0
    bytes_by_role: Mapping[str, RoleBytes] = field(default_factory=dict)
    bytes_by_node: Mapping[str, NodeBytes] = field(default_factory=dict)
    bytes_by_link: Mapping[str, int] = field(default_factory=dict)
    phases_by_role: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    crypto_s: float = 0.0
    critical_path: CriticalPath | None = None
    he_error: HeError | None = None


@dataclass(frozen=True)
class Totals(Record):
    """The completed rounds together; only `rounds` (0) when none completed."""

    rounds: int = 0
    final_accuracy: float | None = None
    final_loss: float | None = None
    seconds: float | None = None
    seconds_per_round: float | None = None
    bytes_on_wire: int = 0
    aggregator_ingress: int = 0
    crypto_s: float = 0.0
    critical_split: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class NotCompleted(Record):
    """A round after the last completed one that some log holds (a failed run's)."""

    round: int
    closed_by_aggregator: bool | None = None  # None: no log of the aggregator to say
    nodes_logged: int = 0
    clients_evaluated: int = 0
    accuracy: float | None = None
    loss: float | None = None


@dataclass(frozen=True)
class RunSummary(Record):
    """summary.json: the run, its completed rounds, their totals, and what the logs hold of the
    rounds after them."""

    experiment: str
    scheme: str = ""
    backend: str | None = None
    encryption: Mapping[str, Any] = field(default_factory=dict)
    clients: int = 0
    switches: int = 0
    dumb_switches: int = 0
    rounds_planned: int = 0
    rounds_completed: int = 0
    logs_missing: tuple[str, ...] = ()
    rounds: tuple[RoundSummary, ...] = ()
    totals: Totals = field(default_factory=Totals)
    rounds_not_completed: tuple[NotCompleted, ...] = ()
    format_version: int = 1  # absent: written before the field (summarize writes the current one)

    @classmethod
    def from_json(cls, data: Any) -> RunSummary:
        """A summary.json of any version this one reads."""
        if not isinstance(data, Mapping):
            raise LogFormatError(f"a summary must be a JSON object, not {type(data).__name__}")
        check_version(data, "a summary.json")
        return from_json(cls, data)


# summary.csv's first columns (RoundSummary's fields, the totals row in the same places), then
# bytes by kind of link and phase seconds by role, then CSV_CRYPTO (RoundSummary.crypto_s)
CSV_FIRST = (
    "round",
    "accuracy",
    "loss",
    "clients",
    "round_s",
    "bytes_on_wire",
    "aggregator_ingress",
)
CSV_CRYPTO = "crypto_s"
assert set(CSV_FIRST) | {CSV_CRYPTO} <= set(RoundSummary.keys())


# ---- run.json ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunNode(Record):
    """A node as it took its config: its role, the key id it loaded, its machine."""

    role: str
    key_id: str | None = None
    machine: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Fault(Record):
    """What the controller saw happen to a node during the run, in the order it saw it."""

    node: str
    round: int  # 0-based: the round the controller was in (or the node says it rejoined at)
    event: str  # dropout | back (a dropout answers again) | rejoined (restarted, took up its state)
    time: str | None = None  # wall clock, UTC, when the controller saw it


@dataclass(frozen=True)
class RunRecord(Record):
    """run.json: how the run was made (command, code, versions, machines, seeds, the effective
    config and the encryption in effect) and how it ended (`status` running, finished or
    failed with `error`; `rounds_completed`)."""

    experiment: str
    status: str = "running"
    error: str | None = None
    started: str | None = None
    ended: str | None = None
    duration_s: float | None = None
    rounds_completed: int = 0
    command: tuple[str, ...] = ()
    cwd: str = ""
    controller_pid: int | None = None
    # when the controller now driving the run took it over (`main.py follow`; None: the one that
    # started it, at `started`)
    controller_since: str | None = None
    code: Mapping[str, Any] = field(default_factory=dict)
    versions: Mapping[str, Any] = field(default_factory=dict)
    controller: Mapping[str, Any] = field(default_factory=dict)
    seeds: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    encryption: Mapping[str, Any] = field(default_factory=dict)
    nodes: Mapping[str, RunNode] = field(default_factory=dict)
    faults: tuple[Fault, ...] = ()


_FLAT = frozenset({Message, LinkBytes, HeError, NodeBytes, RoleBytes})  # scalar fields only
