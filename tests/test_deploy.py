"""Deployment: the Ansible playbooks run against this machine (connection local, one folder per
"host", hosts 127.0.0.x), the Python range the requirements claim, and the inventory they share."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hefl.config import parse_config
from hefl.control.cluster import inventory, load_settings, subnet
from hefl.control.local import free_ports
from hefl.errors import ConfigError
from tests.helpers import ROOT

pytestmark = pytest.mark.deploy

BIN = Path(sys.executable).parent
PLAYBOOKS = sorted((ROOT / "deploy").glob("*.yml"))


def playbook(
    name: str, settings: Path, *args: str, netns: str = "", timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`ansible-playbook deploy/NAME ARGS` from the repo root, on the inventory of `settings`."""
    cmd = [str(BIN / "ansible-playbook"), f"deploy/{name}", *args]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env=ansible_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{name}: {proc.stdout[-3000:]}{proc.stderr[-2000:]}"
    return proc


def ansible_env(settings: Path) -> dict[str, str]:
    """The playbooks' environment: the inventory of `settings`, and facts gathered once for the
    module's playbooks (each gathers them anew otherwise: 2 s a playbook)."""
    return {
        **os.environ,
        "HEFL_CLUSTER": str(settings),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_GATHERING": "smart",
        "ANSIBLE_CACHE_PLUGIN": "jsonfile",
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(settings.parent / "facts"),
    }


def changed(proc: subprocess.CompletedProcess[str]) -> int:
    """The recap's changed= count, summed over hosts."""
    return sum(int(n) for n in re.findall(r"changed=(\d+)", proc.stdout))


def test_every_playbook_passes_ansibles_syntax_check() -> None:
    assert {p.name for p in PLAYBOOKS} >= {
        "setup.yml",
        "keys.yml",
        "firewall.yml",
        "service.yml",
        "health.yml",
        "shape.yml",
        "data.yml",
        "collect.yml",
        "site.yml",
    }
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "--syntax-check", *map(str, PLAYBOOKS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_inventory_is_the_config_by_machine_and_role(tmp_path: Path) -> None:
    cfg = parse_config(json.loads((ROOT / "config.json").read_text()))
    pattern = {"host_pattern": "node{n}.exp.proj.utah.cloudlab.us", "ssh_user": "alice"}
    inv = inventory(cfg, pattern, "config.json")
    hostvars = inv["_meta"]["hostvars"]
    assert len(hostvars) == 15
    assert inv["clients"]["hosts"] == [f"10.10.1.{i}" for i in range(1, 9)]
    assert inv["switches"]["hosts"] == [f"10.10.1.{i}" for i in range(9, 15)]
    assert inv["aggregator"]["hosts"] == ["10.10.1.15"]
    # CloudLab's profile numbers node0..node14 for 10.10.1.1..15: node14 is the aggregator
    assert hostvars["10.10.1.15"]["ansible_host"] == "node14.exp.proj.utah.cloudlab.us"
    assert hostvars["10.10.1.1"]["ansible_user"] == "alice"
    assert hostvars["10.10.1.1"]["hefl_nodes"] == [
        {"node": "10.10.1.1", "port": 5000, "role": "client"}
    ]
    assert inv["all"]["vars"]["hefl_subnet"] == "10.10.1.0/24"
    # without settings, ssh goes to the experiment addresses; an explicit map wins over a pattern
    plain = inventory(cfg, {}, "config.json")["_meta"]["hostvars"]
    assert plain["10.10.1.3"]["ansible_host"] == "10.10.1.3"
    mapped = inventory(cfg, {**pattern, "hosts": {"10.10.1.3": "c3"}}, "c")["_meta"]["hostvars"]
    assert mapped["10.10.1.3"]["ansible_host"] == "c3"
    assert str(subnet(["10.10.1.1", "10.10.2.1"])) == "10.10.0.0/22"
    assert subnet(["node0", "10.10.1.1"]) is None
    bad = tmp_path / "cluster.json"
    bad.write_text('{"hostz": {}}')
    with pytest.raises(ConfigError, match="unknown key"):
        load_settings(bad)
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match="not readable JSON"):
        load_settings(bad)


def test_the_inventory_script_prints_what_ansible_reads(tmp_path: Path) -> None:
    def listed(settings: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "deploy/inventory.py", "--list"],
            cwd=ROOT,
            env={**os.environ, "HEFL_CLUSTER": str(settings)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    out = listed(tmp_path / "none.json")  # no settings: ssh to the experiment addresses
    assert out.returncode == 0, out.stderr
    assert set(json.loads(out.stdout)["hefl"]["hosts"]) == {f"10.10.1.{i}" for i in range(1, 16)}
    (tmp_path / "broken.json").write_text("[]")
    bad = listed(tmp_path / "broken.json")
    assert bad.returncode == 1 and "must be a JSON object" in bad.stderr


# ------------------------------------------------------------- the procedure, against localhost


@dataclass
class Site:
    """Three "hosts" of one machine: a client, a switch and the aggregator, each its own folder."""

    root: Path
    settings: Path
    config: Path
    store: Path
    hosts: dict[str, int]  # host -> port
    roles: dict[str, str]

    def dir(self, host: str) -> Path:
        return self.root / "nodes" / host


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    root = tmp_path_factory.mktemp("site")
    ports = free_ports(3)
    client, switch, agg = (f"127.0.0.{i}" for i in (2, 3, 4))
    raw = json.loads((ROOT / "config.json").read_text())
    raw["others"] = {
        f"{client}:{ports[0]}": {
            "type": "client",
            "client_number": 1,
            "index": 0,
            "send": f"{switch}:{ports[1]}",
        },
        f"{switch}:{ports[1]}": {
            "type": "switch",
            "receive": [f"{client}:{ports[0]}"],
            "send": f"{agg}:{ports[2]}",
        },
    }
    raw["aggregator"] = {"iteration": 2, "ip": f"{agg}:{ports[2]}"}
    raw["encryption"] = {"scheme": "ckks"}
    raw["training"]["device"] = "cpu"
    config = root / "config.json"
    config.write_text(json.dumps(raw))
    settings = root / "cluster.json"
    settings.write_text(
        json.dumps(
            {
                "config": str(config),
                "connection": "local",
                "dir": str(root / "nodes" / "{host}"),
                "python": sys.executable,
            }
        )
    )
    return Site(
        root,
        settings,
        config,
        root / "store",
        dict(zip((client, switch, agg), ports, strict=True)),
        {client: "client", switch: "switch", agg: "aggregator"},
    )


@pytest.fixture(scope="module")
def started(site: Site) -> Iterator[Site]:
    """setup.yml and keys.yml run, then each node started by the command line of the unit file
    service.yml writes (systemd itself is not PID 1 here)."""
    venv = str(BIN.parent)  # the venv this test runs in: pip finds everything installed
    playbook("setup.yml", site.settings, "-e", f"hefl_venv={venv}", "-e", "torch_build=cpu")
    playbook("keys.yml", site.settings, "-e", f"hefl_key_store={site.store}")
    # one unit file per "host", each in its own folder (-e values are templated per host)
    playbook(
        "service.yml",
        site.settings,
        "--tags",
        "unit",
        "-e",
        "hefl_unit_dir={{ hefl_dir }}",
        "-e",
        f"hefl_venv={venv}",
    )
    procs = []
    for host, port in site.hosts.items():
        unit = (site.dir(host) / "hefl-node@.service").read_text()
        cmd = re.search(r"^ExecStart=(.*)$", unit, re.M)
        cwd = re.search(r"^WorkingDirectory=(.*)$", unit, re.M)
        assert cmd and cwd and cwd.group(1) == str(site.dir(host))
        argv = shlex.split(cmd.group(1).replace("%i", str(port)))
        procs.append(
            subprocess.Popen(
                argv,
                cwd=cwd.group(1),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
    try:
        yield site
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)


def test_setup_copies_the_code_with_its_version_and_keys_go_by_role(started: Site) -> None:
    site = started
    for host, role in site.roles.items():
        d = site.dir(host)
        assert (d / "main.py").is_file() and (d / "deploy" / "setup.yml").is_file()
        assert not (d / ".git").exists()
        assert "commit" in json.loads((d / "VERSION.json").read_text())
        token = d / "keys" / "token"
        assert token.read_text() == (site.store / "token").read_text()
        assert token.stat().st_mode & 0o777 == 0o600
        assert (d / "keys" / "secret.ctx").exists() == (role == "client"), host
        assert (d / "keys" / "keyless.ctx").exists() == (role == "aggregator"), host
    client = next(h for h, r in site.roles.items() if r == "client")
    secret = site.dir(client) / "keys" / "secret.ctx"
    assert secret.read_bytes() == (site.store / "secret.ctx").read_bytes()
    # a rerun on one host (--limit, as deploy/README says) gives it the same key pair, not a new one
    secret.unlink()
    rerun = playbook(
        "keys.yml", site.settings, "--limit", client, "-e", f"hefl_key_store={site.store}"
    )
    assert "skipping: [" in rerun.stdout.split("a new key pair")[1].split("TASK")[0]
    assert secret.read_bytes() == (site.store / "secret.ctx").read_bytes()


def test_health_agg_and_collect_through_the_playbooks(started: Site) -> None:
    site = started
    health = playbook("health.yml", site.settings, "-e", f"hefl_key_store={site.store}")
    for host, role in site.roles.items():
        assert re.search(rf"{re.escape(host)}:\d+ \({role}\): idle", health.stdout), health.stdout
    assert site.store.joinpath("token").read_text().strip() not in health.stdout

    agg = next(h for h, r in site.roles.items() if r == "aggregator")
    run = subprocess.run(
        [
            sys.executable,
            "main.py",
            "agg",
            "--config",
            str(site.config),
            "--token-file",
            "keys/token",
        ],
        cwd=site.dir(agg),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    experiment = re.search(r"experiment (\S+)", run.stdout)
    assert experiment
    exp = experiment.group(1)
    health = playbook("health.yml", site.settings, "-e", f"hefl_key_store={site.store}")
    assert health.stdout.count("finished, role") == 3 and exp in health.stdout

    collected = site.root / "collected"
    playbook("collect.yml", site.settings, "-e", f"hefl_collect_dir={collected}")
    for host, port in site.hosts.items():
        assert (collected / host / exp / f"{host}_{port}.json").is_file(), host
    assert len(list((collected / agg / exp).glob("127.0.0.*.json"))) == 3  # agg gathered them
    # the secret key is on the client host only, and in no log
    secret = (site.store / "secret.ctx").read_bytes()
    window = secret[len(secret) // 2 : len(secret) // 2 + 32]
    for path in collected.rglob("*"):
        assert not (path.is_file() and window in path.read_bytes()), path


def test_the_unit_file_passes_systemd_analyze(started: Site) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    site = started
    host = next(iter(site.hosts))
    unit = site.dir(host) / "hefl-node@.service"
    instance = unit.with_name(f"hefl-node@{site.hosts[host]}.service")
    instance.write_text(unit.read_text())
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(instance)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify checks the unit's syntax and that ExecStart's program exists; here, without systemd
    # as PID 1, it may add lines about the machine's own units: only this unit's lines count
    ours = [line for line in proc.stderr.splitlines() if "hefl-node" in line]
    assert not ours, proc.stderr
    assert "KillMode=control-group" in unit.read_text()
    assert "Restart=on-failure" in unit.read_text()


# ------------------------------------------------------- firewall and shaping, in a namespace


def netns_or_skip() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    name = f"hefl-t{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"network namespaces are not permitted here: {made.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def netns() -> Iterator[str]:
    yield from netns_or_skip()


@pytest.mark.root
def test_firewall_opens_the_port_to_the_subnet_only_and_comes_off(site: Site, netns: str) -> None:
    if shutil.which("iptables") is None:
        pytest.skip("iptables is not installed here (.ci/run installs it)")
    host = next(iter(site.hosts))
    port = site.hosts[host]
    first = playbook("firewall.yml", site.settings, "--limit", host, netns=netns)
    rules = subprocess.run(
        ["ip", "netns", "exec", netns, "iptables", "-S"], capture_output=True, text=True, check=True
    ).stdout
    assert "-A INPUT -j HEFL" in rules
    assert f"-A HEFL -i lo -p tcp -m multiport --dports {port}" in rules
    assert f"-A HEFL -s 127.0.0.0/24 -p tcp -m multiport --dports {port}" in rules
    drop = [line for line in rules.splitlines() if line.endswith("-j DROP")]
    assert len(drop) == 1 and rules.splitlines()[-1] == drop[0]  # after the accepts
    assert changed(first) > 0
    again = playbook("firewall.yml", site.settings, "--limit", host, netns=netns)
    assert changed(again) == 0  # idempotent
    playbook("firewall.yml", site.settings, "--limit", host, "-e", "firewall=absent", netns=netns)
    rules = subprocess.run(
        ["ip", "netns", "exec", netns, "iptables", "-S"], capture_output=True, text=True, check=True
    ).stdout
    assert "HEFL" not in rules


def test_shape_puts_a_token_bucket_both_ways_and_takes_it_off(site: Site, netns: str) -> None:
    sh = ["ip", "-n", netns]
    subprocess.run([*sh, "link", "add", "e0", "type", "veth", "peer", "name", "e1"], check=True)
    subprocess.run([*sh, "addr", "add", "10.10.1.1/24", "dev", "e0"], check=True)
    subprocess.run([*sh, "link", "set", "e0", "up"], check=True)
    host = next(iter(site.hosts))
    args = ["--limit", host, "-e", "hefl_host=10.10.1.1"]
    playbook("shape.yml", site.settings, *args, "-e", "rate=100mbit", netns=netns)

    def qdiscs() -> str:
        return subprocess.run(
            ["ip", "netns", "exec", netns, "tc", "qdisc", "show"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    shown = qdiscs()
    # the same token bucket as vcluster.sh's: 4 ms of the rate in decimal units (50,000 bytes)
    assert re.search(r"qdisc tbf 10: dev e0 root .*rate 100Mbit burst 50000b", shown), shown
    assert re.search(r"qdisc tbf 10: dev hefl-ifb root .*rate 100Mbit", shown), shown
    assert "qdisc ingress ffff: dev e0" in shown
    playbook("shape.yml", site.settings, *args, "-e", "shape=absent", netns=netns)
    assert "tbf" not in qdiscs() and "hefl-ifb" not in qdiscs()


def test_data_stages_the_idx_files_on_client_hosts_only(site: Site, tmp_path: Path) -> None:
    src = tmp_path / "mnist"
    src.mkdir()
    (src / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b images")
    (src / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01 labels")
    (src / "notes.txt").write_text("not an IDX file")
    playbook("data.yml", site.settings, "-e", f"hefl_data_src={src}")
    for host, role in site.roles.items():
        staged = site.dir(host) / "data" / "mnist"
        if role == "client":
            assert sorted(p.name for p in staged.iterdir()) == [
                "t10k-labels-idx1-ubyte",
                "train-images-idx3-ubyte.gz",
            ]
            assert (staged / "t10k-labels-idx1-ubyte").read_bytes().endswith(b"labels")
        else:
            assert not staged.exists(), host
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "deploy/data.yml", "-e", f"hefl_data_src={empty}"],
        cwd=ROOT,
        env=ansible_env(site.settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0 and "no IDX files" in proc.stdout
