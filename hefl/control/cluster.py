"""A config's nodes as machines: what deploy/ needs to place them (Ansible's inventory, the virtual
cluster's namespaces). Run as `python -m hefl.control.cluster plan CONFIG` for the virtual
cluster."""

from __future__ import annotations

import io
import ipaddress
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hefl.address import parse_address
from hefl.config import ExperimentConfig, load_config
from hefl.errors import ConfigError, HeflError
from hefl.provenance import ROOT, VERSION_FILE, code_version


@dataclass(frozen=True)
class Placed:
    """One node of a config: its address as the config writes it, host, port and role."""

    node: str
    host: str
    port: int
    role: str


def placed(cfg: ExperimentConfig) -> list[Placed]:
    """Every node of the config in config order (clients, switches, then the aggregator)."""
    out = []
    for nid, node in cfg.nodes.items():
        addr = parse_address(nid)
        port = addr.port if addr.port is not None else cfg.network.port
        out.append(Placed(nid, addr.host, port, node.type))
    return out


def namespace_plan(cfg: ExperimentConfig) -> tuple[list[Placed], int]:
    """The nodes of a virtual cluster, one namespace each, and the prefix of the one subnet that
    holds them all (at most /24). A config whose nodes share a host, or name one by a name or a
    loopback address, cannot be given a namespace per node: ConfigError says which node."""
    nodes = placed(cfg)
    seen: set[str] = set()
    for p in nodes:
        try:
            ip = ipaddress.IPv4Address(p.host)
        except ValueError:
            raise ConfigError(
                f"node {p.node!r}: a virtual cluster needs IPv4 addresses, not {p.host!r}"
            ) from None
        if ip.is_loopback or ip.is_unspecified or ip.is_multicast:
            raise ConfigError(f"node {p.node!r}: a virtual cluster cannot give a node {p.host}")
        if p.host in seen:
            raise ConfigError(
                f"node {p.node!r}: shares host {p.host} with another node; a virtual cluster "
                f"gives every node a machine (namespace) of its own"
            )
        seen.add(p.host)
    net = subnet(seen)
    if net is None:
        raise ConfigError("the nodes' addresses share no /8: put them in one subnet")
    return nodes, net.prefixlen


def subnet(hosts: Iterable[str]) -> ipaddress.IPv4Network | None:
    """The smallest network, /24 at most, that holds every host (None: names, IPv6, or no common
    /8): the experiment's subnet, which the firewall opens the nodes' ports to."""
    try:
        ints = [int(ipaddress.IPv4Address(h)) for h in hosts]
    except ValueError:
        return None
    if not ints:
        return None
    prefix = 24
    while prefix >= 8 and len({i >> (32 - prefix) for i in ints}) > 1:
        prefix -= 1
    if prefix < 8:
        return None
    return ipaddress.IPv4Network((ints[0] >> (32 - prefix) << (32 - prefix), prefix))


def inventory(cfg: ExperimentConfig, settings: dict[str, Any], config_path: str) -> dict[str, Any]:
    """Ansible's inventory (the JSON an inventory script prints for --list): one host per machine
    of the config (a machine may run several nodes, on several ports), named by its experiment
    address, in the groups clients, switches and aggregator (and hefl, all of them), with the
    variables the playbooks read. `settings` maps experiment addresses to what ssh reaches
    (deploy/README.md, "Settings")."""
    hosts: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[str]] = {"clients": [], "switches": [], "aggregator": []}
    names = {"client": "clients", "switch": "switches", "aggregator": "aggregator"}
    ssh_map = settings.get("hosts") or {}
    pattern = settings.get("host_pattern")
    for p in placed(cfg):
        var = hosts.get(p.host)
        if var is None:
            var = hosts[p.host] = _host_vars(p.host, settings, ssh_map, pattern)
        var["hefl_nodes"].append({"node": p.node, "port": p.port, "role": p.role})
        group = groups[names[p.role]]
        if p.host not in group:
            group.append(p.host)
    out: dict[str, Any] = {
        "_meta": {"hostvars": hosts},
        "all": {
            "children": ["hefl"],
            "vars": {
                "hefl_config": config_path,
                "hefl_subnet": str(subnet(hosts) or ""),
            },
        },
        "hefl": {"hosts": list(hosts), "children": list(groups)},
    }
    for name, members in groups.items():
        out[name] = {"hosts": members}
    return out


def _host_vars(
    host: str, settings: dict[str, Any], ssh_map: dict[str, Any], pattern: str | None
) -> dict[str, Any]:
    if host in ssh_map:
        reach = str(ssh_map[host])
    elif pattern:
        try:
            last = int(ipaddress.IPv4Address(host)) & 0xFF
        except ValueError:
            raise ConfigError(
                f"settings: host_pattern needs IPv4 addresses, not {host!r}"
            ) from None
        reach = pattern.format(n=last - 1, host=host)
    else:
        reach = host  # from inside the experiment's LAN, its addresses are what ssh reaches
    var: dict[str, Any] = {"ansible_host": reach, "hefl_host": host, "hefl_nodes": []}
    if settings.get("connection"):
        var["ansible_connection"] = settings["connection"]
    if settings.get("ssh_user"):
        var["ansible_user"] = settings["ssh_user"]
    if settings.get("ssh_key"):
        var["ansible_ssh_private_key_file"] = settings["ssh_key"]
    if settings.get("dir"):
        var["hefl_dir"] = str(settings["dir"]).format(host=host)
    if settings.get("python"):
        var["ansible_python_interpreter"] = settings["python"]
    return var


SETTINGS_KEYS = {
    "config",
    "hosts",
    "host_pattern",
    "ssh_user",
    "ssh_key",
    "dir",
    "connection",
    "python",
}


def load_settings(path: Path) -> dict[str, Any]:
    """deploy/cluster.json (absent: ssh to the experiment addresses as they are)."""
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not readable JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a JSON object")
    unknown = sorted(set(raw) - SETTINGS_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; known: {sorted(SETTINGS_KEYS)}")
    if not isinstance(raw.get("hosts", {}), dict):
        raise ConfigError(f"{path}: hosts maps experiment addresses to ssh host names")
    return raw


def pack(out: Path, root: Path = ROOT) -> int:
    """This checkout as the nodes get it: a .tar.gz of the files git tracks or would track (no
    .venv, log/, keys/, caches: .gitignore's rules), plus VERSION.json (the commit and whether the
    tree was dirty, since the copy has no .git). Returns the number of files."""
    try:
        listed = subprocess.run(
            [
                "git",
                "-C",
                str(root),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise HeflError(f"pack: {root} is not a git checkout ({exc}); clone the repo") from None
    names = sorted(
        n
        for n in set(os.fsdecode(listed).split("\0"))
        if n and (root / n).is_file() and not _never_packed(n)
    )
    tmp = out.with_name(out.name + ".part")
    with tarfile.open(tmp, "w:gz") as tar:
        for name in names:
            tar.add(root / name, arcname=name, recursive=False)
        version = json.dumps(code_version(root), indent=1).encode()
        info = tarfile.TarInfo(VERSION_FILE)
        info.size, info.mode, info.mtime = len(version), 0o644, int(time.time())
        tar.addfile(info, io.BytesIO(version))
    tmp.replace(out)
    return len(names)


def _never_packed(name: str) -> bool:
    """Key material and credentials, wherever they lie (a key folder outside the ignored keys/),
    and a VERSION.json that a deployed copy holds: the pack writes its own."""
    base = name.rsplit("/", 1)[-1]
    return base.endswith(".ctx") or base == "token" or name == VERSION_FILE


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "pack":
        try:
            count = pack(Path(argv[1]))
        except HeflError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"packed {count} files into {argv[1]}")
        return 0
    if len(argv) != 2 or argv[0] != "plan":
        usage = "usage: python -m hefl.control.cluster {plan CONFIG | pack OUT.tar.gz}"
        print(usage, file=sys.stderr)
        return 2
    try:
        nodes, prefix = namespace_plan(load_config(argv[1]))
    except HeflError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for p in nodes:
        print(p.node, p.host, p.port, p.role)
    print("prefix", prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
