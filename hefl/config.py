"""Experiment config: JSON in, frozen dataclasses or a one-line ConfigError naming the path out."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hefl.address import base_url, log_name, parse_address
from hefl.crypto.params import HeParams, check_encryption
from hefl.errors import ConfigError
from hefl.modelspec import check_model
from hefl.schema import (
    MAX_CLIENTS,
    NAME_LEN,
    bounds,
    check_keys,
    parse_section,
    parse_value,
    safe_name,
)
from hefl.seeds import sample_seed
from hefl.topology import Tree, check_topology

Role = Literal["client", "switch", "aggregator"]


@dataclass(frozen=True)
class DatasetConfig:
    """Which data the clients train on and how it is split between them."""

    name: Literal["digits", "mnist", "synthetic", "cifar10", "cifar100"] = "digits"
    # mnist: folder holding the IDX files; cifar: the tarball or its extracted folder;
    # "" takes data/cifar10 or data/cifar100 for CIFAR, data/mnist otherwise (dataset_folder)
    path: str = ""
    download: bool = False  # mnist, cifar: fetch the files when they are missing
    # mnist: side length to resize to (the original study used 12); 0 keeps 28
    resize: int = field(default=0, metadata=bounds(ge=4, le=28, also=(0,)))
    partition: Literal["iid", "dirichlet"] = "iid"
    # dirichlet: label-skew concentration (smaller is more skewed)
    alpha: float = field(default=0.5, metadata=bounds(gt=0))
    test_fraction: float = field(default=0.2, metadata=bounds(gt=0, lt=1))
    samples: int = field(default=2000, metadata=bounds(gt=0))  # synthetic: number of samples
    features: int = field(default=64, metadata=bounds(gt=0))  # synthetic: input size
    classes: int = field(default=10, metadata=bounds(ge=2))  # synthetic: number of labels
    augment: bool = False  # cifar: seeded random crop (padding 4) and horizontal flip
    # the first max_samples training rows only, and the test rows in the same share; 0: all
    max_samples: int = field(default=0, metadata=bounds(ge=0))

    def __post_init__(self) -> None:
        if self.augment and not self.name.startswith("cifar"):
            raise ConfigError(
                f"dataset.augment: only cifar10 and cifar100 are augmented, not {self.name!r}"
            )


def dataset_folder(ds: DatasetConfig) -> str:
    """`dataset.path`, or its default for the dataset (data/mnist as before CIFAR came)."""
    if ds.path:
        return ds.path
    return f"data/{ds.name}" if ds.name.startswith("cifar") else "data/mnist"


@dataclass(frozen=True)
class ModelConfig:
    """The shared model; `hidden` overrides the layer widths of an MLP."""

    name: Literal["mlp", "mlp_wide", "cnn", "resnet18", "resnet20", "nvflare_cnn"] = "mlp"
    hidden: tuple[int, ...] = field(default=(), metadata=bounds(gt=0))


@dataclass(frozen=True)
class TrainingConfig:
    """Local training on each client."""

    epochs: int = field(default=1, metadata=bounds(gt=0))
    batch_size: int = field(default=32, metadata=bounds(gt=0))
    lr: float = field(default=0.05, metadata=bounds(gt=0))
    momentum: float = field(default=0.9, metadata=bounds(ge=0))
    seed: int = field(default=0, metadata=bounds(ge=0))  # the root of every seed (hefl.seeds)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # torch threads per client, the same on every node
    threads: int = field(default=1, metadata=bounds(ge=1))
    save_models: bool = False  # write each round's local and global weights (.npy) beside the logs
    # batches per round, reshuffling at each pass over the slice, in place of epochs; 0: epochs
    steps: int = field(default=0, metadata=bounds(ge=0))


@dataclass(frozen=True)
class EncryptionConfig:
    """How updates are protected on the wire; `none` is the plaintext baseline on the same path."""

    scheme: Literal["none", "ckks", "bfv", "paillier"] = "none"
    # ckks, bfv: the HE library, TenSEAL or SEAL-Python (pip install -r requirements-he.txt)
    backend: Literal["tenseal", "seal"] = "tenseal"
    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[
        int, ...
    ] = ()  # () takes the scheme's default: ckks [40, 20], bfv [60, 20]
    scale_bits: int = 30  # ckks: values are scaled by 2^scale_bits
    plain_modulus_bits: int = 47  # bfv: t is the largest batching prime below 2^bits
    quant_bits: int = 16  # bfv, paillier: bits per quantized value
    key_bits: int = 2048  # paillier: bits of the public modulus (phe, gmpy2: requirements-he.txt)
    clip: float = 1.0  # every scheme: each value a client sends is clipped to [-clip, clip]
    key_dir: str = "keys"  # clients read secret.ctx here; `agg` reads keyless.ctx here
    processes: int = (
        1  # clients: worker processes that encrypt an update's ciphertexts (set to the cores)
    )
    # clients: make the next update's encryptions of zero while waiting for the global result
    precompute: bool = True
    # clients: at most this many of them (the rest of an update is encrypted at once): what they
    # hold stays bounded for a large model (64 KiB each at the defaults: 1024 is 64 MiB)
    precompute_window: int = field(default=1024, metadata=bounds(ge=1))
    # clients (SEAL-Python's ckks and bfv): send each fresh ciphertext as c0 and the seed of c1
    seeded: bool = True
    # switches and the aggregator (with `seeded`): a sum of at most this many seeded updates goes
    # on as c0 and their seeds (a seed list), a larger one in full; 0: always in full
    seed_list_max: int = field(default=16, metadata=bounds(ge=0, le=MAX_CLIENTS))

    @property
    def encrypted(self) -> bool:
        """Whether updates travel as ciphertexts (every scheme but the plaintext baseline)."""
        return self.scheme != "none"

    def he_params(self) -> HeParams:
        """What the crypto package needs: these parameters without the key folder."""
        return HeParams(
            **{f.name: getattr(self, f.name) for f in fields(HeParams) if f.name != "clients"}
        )


@dataclass(frozen=True)
class NetworkConfig:
    """Ports, timeouts and retries of every call between nodes."""

    # port of a node whose address names none
    port: int = field(default=5000, metadata=bounds(ge=1, le=65535))
    connect_timeout_s: float = field(default=3.0, metadata=bounds(gt=0))
    read_timeout_s: float = field(default=60.0, metadata=bounds(gt=0))
    retries: int = field(default=3, metadata=bounds(ge=0))
    # how long `agg` waits for every /health
    startup_timeout_s: float = field(default=120.0, metadata=bounds(gt=0))
    # how long the controller waits for one round
    round_timeout_s: float = field(default=900.0, metadata=bounds(gt=0))
    # 0: every round waits for every client; else, this long after a round opens the aggregator
    # completes it with the clients that contributed (at least aggregator.min_clients)
    round_deadline_s: float = field(default=0.0, metadata=bounds(ge=0))


@dataclass(frozen=True)
class AggregatorConfig:
    """The root of the tree: its address and the number of rounds (`iteration`)."""

    ip: str
    iteration: int = field(default=10, metadata=bounds(ge=1, le=100_000))
    # with network.round_deadline_s: the fewest clients a round may complete with (0: every one)
    min_clients: int = field(default=0, metadata=bounds(ge=0))
    # clients drawn each round (fixed size, without replacement, from a seeded stream of its own;
    # the same on every node): only they train and send; 0: every client, every round
    clients_per_round: int = field(default=0, metadata=bounds(ge=0))
    key: str = ""  # the original study's placeholder: accepted, never used as key material


@dataclass(frozen=True)
class NodeConfig:
    """One node of `others` (or the aggregator), keyed by its address `host[:port]`."""

    id: str
    type: Role
    send: str = ""
    receive: tuple[str, ...] = ()
    dumb: bool = False
    client_number: int = 0
    index: int = 0
    # clients: logical clients this node hosts, taking slices index .. index + clients - 1
    clients: int = field(default=1, metadata=bounds(ge=1, le=MAX_CLIENTS))
    # clients: add the node's own logical clients' updates into one message before sending it up
    local_sum: bool = False
    ip: str = ""
    key: str = ""  # placeholder in the original configs: ignored


@dataclass(frozen=True)
class RoundPolicy:
    """How a round may end, decided once from the config (network.round_deadline_s and
    aggregator.min_clients); nodes, the controller and local mode ask it, never the raw numbers.
    Without a deadline every round waits for every client and any client gone is a failure; with
    one, a round completes at its deadline with the clients that contributed (switches send up
    partial sums), and a client gone or late is a dropout, not a failure."""

    deadline_s: float  # 0: no deadline
    min_clients: int  # the fewest clients a round completes with (every client without deadline)
    partial_rounds: bool  # a round (and a switch's sum) may hold only some of the clients
    tolerate_dropouts: bool  # a client unreachable, or late (422), does not fail the run

    @classmethod
    def of(cls, network: NetworkConfig, aggregator: AggregatorConfig, clients: int) -> RoundPolicy:
        """`clients`: how many clients a round draws (every client without sampling)."""
        deadline = network.round_deadline_s
        if not deadline:
            return cls(0.0, clients, False, False)
        return cls(deadline, aggregator.min_clients or clients, True, True)


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole validated experiment: experiment-wide sections and all nodes, aggregator included."""

    aggregator: AggregatorConfig
    nodes: Mapping[str, NodeConfig]
    name: str = field(default="experiment", metadata=safe_name(NAME_LEN))
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    # who is where: the nodes' tree and the logical clients (derived from `nodes`)
    tree: Tree = field(init=False, repr=False, compare=False)
    policy: RoundPolicy = field(init=False, repr=False, compare=False)  # how a round may end

    def __post_init__(self) -> None:
        tree = Tree(self.nodes, self.aggregator.ip)
        object.__setattr__(self, "tree", tree)
        policy = RoundPolicy.of(self.network, self.aggregator, self.per_round)
        object.__setattr__(self, "policy", policy)

    @property
    def rounds(self) -> int:
        return self.aggregator.iteration

    @property
    def per_round(self) -> int:
        """How many clients each round draws: aggregator.clients_per_round, or every client."""
        return self.aggregator.clients_per_round or len(self.tree.logical)

    @property
    def samples_clients(self) -> bool:
        """Whether rounds draw some of the clients (aggregator.clients_per_round below them all)."""
        return self.per_round < len(self.tree.logical)

    def sampled(self, round_: int) -> tuple[str, ...]:
        """The clients round `round_` draws, in slice order: every client, or
        aggregator.clients_per_round of them drawn without replacement from the round's own
        seeded stream (hefl.seeds.sample_seed): the same on every node, so that each knows whom
        to expect without asking."""
        clients = self.tree.clients()
        if not self.samples_clients:
            return clients
        return _draw(clients, self.per_round, sample_seed(self.training.seed, round_))

    def he_params(self) -> HeParams:
        """The encryption's parameters for this experiment's schemes: Paillier's packing leaves
        room for the sum of every logical client."""
        return replace(self.encryption.he_params(), clients=self.per_round)

    def default_endpoints(self) -> dict[str, str]:
        """Base URL of every node: its address, with the default port where it names none."""
        return {nid: base_url(nid, self.network.port) for nid in self.nodes}


# ---------------------------------------------------------------- the experiment

_SECTIONS: dict[str, type] = {
    "dataset": DatasetConfig,
    "model": ModelConfig,
    "training": TrainingConfig,
    "encryption": EncryptionConfig,
    "network": NetworkConfig,
}
_NODE_KEYS: dict[str, tuple[str, ...]] = {
    "client": ("type", "client_number", "index", "clients", "local_sum", "send", "ip", "key"),
    "switch": ("type", "receive", "send", "dumb", "ip", "key"),
    "aggregator": ("type", "ip", "key"),
}


def parse_config(raw: Any) -> ExperimentConfig:
    """Validate a whole experiment config (a parsed JSON object)."""
    if not isinstance(raw, dict):
        raise ConfigError("config: expected a JSON object at the top level")
    check_keys(raw, ["name", "aggregator", "others", *_SECTIONS], "config")
    if "aggregator" not in raw:
        raise ConfigError("config: missing key 'aggregator'")
    agg = parse_section(raw["aggregator"], AggregatorConfig, "aggregator")
    sections = {k: parse_section(raw[k], cls, k) for k, cls in _SECTIONS.items() if k in raw}
    name = parse_value(ExperimentConfig, "name", raw.get("name", "experiment"), "name")
    nodes = _parse_nodes(raw.get("others"), agg)
    check_topology(nodes, agg.ip)
    cfg = ExperimentConfig(aggregator=agg, nodes=nodes, name=name, **sections)
    check_model(cfg.model, cfg.dataset)
    if agg.clients_per_round > len(cfg.tree.clients()):
        raise ConfigError(
            f"aggregator.clients_per_round: {agg.clients_per_round} is more than the "
            f"{len(cfg.tree.clients())} clients of this config"
        )
    check_encryption(cfg.he_params(), cfg.per_round)
    if agg.min_clients > cfg.per_round:
        what = "clients drawn each round" if cfg.samples_clients else "clients of this config"
        raise ConfigError(
            f"aggregator.min_clients: {agg.min_clients} is more than the {cfg.per_round} {what}"
        )
    return cfg


@functools.lru_cache(maxsize=256)
def _draw(clients: tuple[str, ...], k: int, seed: int) -> tuple[str, ...]:
    """`k` of `clients` without replacement, in their order (Flower's fixed-size sampling)."""
    picked = np.random.default_rng(seed).choice(len(clients), size=k, replace=False)
    return tuple(clients[i] for i in sorted(int(i) for i in picked))


def _parse_nodes(others: Any, agg: AggregatorConfig) -> dict[str, NodeConfig]:
    if not isinstance(others, dict) or not others:
        raise ConfigError("others: expected an object mapping node addresses to node configs")
    nodes: dict[str, NodeConfig] = {}
    for node_id, body in others.items():
        nodes[node_id] = _parse_node(node_id, body)
    if agg.ip not in nodes:
        nodes[agg.ip] = NodeConfig(
            id=agg.ip, type="aggregator", ip=parse_address(agg.ip, "aggregator.ip").host
        )
    elif nodes[agg.ip].type != "aggregator":
        raise ConfigError(
            f"others[{agg.ip!r}].type: the aggregator's address must have type 'aggregator'"
        )
    _check_log_names(nodes)
    return nodes


def _check_log_names(nodes: Mapping[str, NodeConfig]) -> None:
    """Two addresses differing only where a log file name cannot (':' or '_') would share a log."""
    seen: dict[str, str] = {}
    for node_id in nodes:
        other = seen.setdefault(log_name(node_id), node_id)
        if other != node_id:
            raise ConfigError(
                f"others[{node_id!r}]: shares its log file name {log_name(node_id)!r} "
                f"with {other!r}"
            )


def _parse_node(node_id: str, body: Any) -> NodeConfig:
    path = f"others[{node_id!r}]"
    if not isinstance(body, dict):
        raise ConfigError(f"{path}: expected an object, got {json.dumps(body)}")
    role = body.get("type")
    if not isinstance(role, str) or role not in _NODE_KEYS:
        raise ConfigError(f"{path}.type: {role!r} is not one of 'client' | 'switch' | 'aggregator'")
    addr = parse_address(node_id, path)
    skip = tuple(f.name for f in fields(NodeConfig) if f.name not in _NODE_KEYS[role])
    node: NodeConfig = parse_section(body, NodeConfig, path, skip=(*skip, "id"), id=node_id)
    if node.ip and node.ip not in (node_id, addr.host, addr.url_host):
        raise ConfigError(f"{path}.ip: {node.ip!r} differs from the node's address {node_id!r}")
    return node


def host_clients(raw: Mapping[str, Any], per_node: int) -> dict[str, Any]:
    """A copy of a raw config whose every client node hosts `per_node` logical clients: slices are
    handed out again in the order of the nodes' indexes, and client_number becomes their total
    (the sweep key `others.*.clients`, and the benchmarks, use it)."""
    out = json.loads(json.dumps(raw))
    others = out.get("others")
    if isinstance(per_node, bool) or not isinstance(per_node, int) or per_node < 1:
        raise ConfigError(f"others.*.clients: {per_node!r} is not a positive whole number")
    if not isinstance(others, dict):
        raise ConfigError("others: expected an object mapping node addresses to node configs")
    nodes = [n for n in others.values() if isinstance(n, dict) and n.get("type") == "client"]
    nodes.sort(key=lambda n: n.get("index", 0) if isinstance(n.get("index"), int) else 0)
    for i, node in enumerate(nodes):
        node.update(client_number=per_node * len(nodes), index=per_node * i, clients=per_node)
        if per_node == 1:  # a node of one client: as a config without the key has it
            del node["clients"]
    return out  # type: ignore[no-any-return]


def load_config(
    path: str | Path, overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> ExperimentConfig:
    """Read, merge `overrides` into sections, and validate a config file; errors name the file."""
    return load_raw_config(path, overrides)[1]


def load_raw_config(
    path: str | Path,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[dict[str, Any], ExperimentConfig]:
    """The raw JSON (what gets pushed) and its validated config."""
    raw = read_raw(path, overrides)
    try:
        return raw, parse_config(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _json_error(text: str, exc: json.JSONDecodeError) -> str:
    """Place a missing comma where it belongs (after the previous value), not at the next token."""
    pos, msg = exc.pos, exc.msg
    if msg == "Expecting ',' delimiter":
        pos = len(text[:pos].rstrip())
        msg = "missing ',' after the value that ends here"
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"line {line} column {col}: invalid JSON: {msg}"


def read_raw(
    path: str | Path, overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """Read a config file as JSON; a syntax error names file, line and column in one line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: {_json_error(text, exc)}") from None
    for section, values in (overrides or {}).items():
        if isinstance(raw, dict):
            merged = dict(raw.get(section) or {})
            merged.update(values)
            raw[section] = merged
    return raw  # type: ignore[no-any-return]
