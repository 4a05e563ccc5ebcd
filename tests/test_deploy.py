"""Deployment: the Ansible playbooks run against this machine (connection local, one folder per
"host", hosts 127.0.0.x), the Python range the requirements claim, and the inventory they share."""

from __future__ import annotations

import json
import os
import re
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

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


def test_data_stages_a_cifar_tarball_in_its_datasets_folder(site: Site, tmp_path: Path) -> None:
    """A CIFAR-10 config: the tarball goes to each client's data/cifar10/ (dataset.path's
    default for it), as published; IDX files and anything else beside it are not its dataset's
    but are staged by name pattern as for MNIST."""
    src = tmp_path / "cifar"
    src.mkdir()
    (src / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b a tarball")
    (src / "README").write_text("not a dataset file")
    raw = json.loads(site.config.read_text())
    raw["dataset"] = {"name": "cifar10"}
    cfg = tmp_path / "cifar.json"
    cfg.write_text(json.dumps(raw))
    done = playbook(
        "data.yml", site.settings, "-e", f"hefl_data_src={src}", "-e", f"hefl_config={cfg}"
    )
    assert done.returncode == 0, done.stdout[-2000:]
    for host, role in site.roles.items():
        staged = site.dir(host) / "data" / "cifar10"
        if role == "client":
            assert sorted(p.name for p in staged.iterdir()) == ["cifar-10-python.tar.gz"]
            assert (staged / "cifar-10-python.tar.gz").read_bytes().endswith(b"a tarball")
        else:
            assert not staged.exists(), host


# ----------------------------------------------------------- the controller's bootstrap script

BOOTSTRAP = ROOT / "deploy" / "bootstrap.sh"
UBUNTU = 'NAME="Ubuntu"\nVERSION_ID="{v}"\nID=ubuntu\nPRETTY_NAME="Ubuntu {v} LTS"\n'
TORCH = re.findall(r"^torch==(\S+)", (ROOT / "requirements.txt").read_text(), re.M)[0]


def fake_python(path: Path, version: str, log: Path) -> None:
    """A stand-in Python that says `version` ("3.12 final"), logs its arguments, and makes a venv
    of itself (with an ansible-playbook) when asked to."""
    path.write_text(
        "#!/bin/sh\n"
        f'echo "${{0##*/}} $*" >> {log}\n'
        'case "$*" in\n'
        f'  *version_info*) echo "{version}" ;;\n'
        '  "-m venv "*) /bin/mkdir -p "$3/bin" && /bin/cp "$0" "$3/bin/python" &&'
        ' printf \'#!/bin/sh\\necho "ansible-playbook [core 2.19]"\\n\' > "$3/bin/ansible-playbook"'
        ' && /bin/chmod +x "$3/bin/ansible-playbook" ;;\n'
        "  *importlib.metadata*) exit 1 ;;\n"
        '  --version) echo "Python 3.12.3" ;;\n'
        "esac\n"
    )
    path.chmod(0o755)


@dataclass
class Machine:
    """A made-up machine for deploy/bootstrap.sh: an os-release, a PATH of stand-in programs
    (nothing else: no real Python, apt-get or nvidia-smi is found), and the log they write."""

    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def log(self) -> Path:
        return self.root / "calls.log"

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def bootstrap(self, release: str, *args: str) -> subprocess.CompletedProcess[str]:
        (self.root / "os-release").write_text(release)
        return subprocess.run(
            [
                shutil.which("bash") or "/bin/bash",
                str(BOOTSTRAP),
                "--os-release",
                str(self.root / "os-release"),
                "--venv",
                str(self.root / "venv"),
                *args,
            ],
            env={"PATH": str(self.bin), "HOME": str(self.root)},
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    made = Machine(tmp_path)
    made.bin.mkdir()
    (made.bin / "env").symlink_to(shutil.which("env") or "/usr/bin/env")
    (made.bin / "sudo").write_text('#!/bin/sh\nexec "$@"\n')  # where the tests do not run as root
    (made.bin / "sudo").chmod(0o755)
    return made


@pytest.mark.parametrize(
    ("release", "plan"),
    [
        (
            UBUNTU.format(v="22.04"),
            [
                "Ubuntu 22.04 LTS: Python: python3.12 (Ubuntu 22.04's python3 is 3.10",
                "apt: add ppa:deadsnakes/ppa; install python3.12 python3.12-venv",
            ],
        ),
        (
            UBUNTU.format(v="24.04"),
            [
                "Ubuntu 24.04 LTS: Python: python3.12 (Ubuntu 24.04's own python3.12)",
                "apt: install python3.12 python3.12-venv",
            ],
        ),
    ],
)
def test_bootstrap_plans_the_python_of_each_ubuntu(
    machine: Machine, release: str, plan: list[str]
) -> None:
    proc = machine.bootstrap(release, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    said = [line.removeprefix("bootstrap: ") for line in proc.stdout.splitlines()]
    assert said[0].startswith(plan[0]) and said[1] == plan[1]
    assert said[2:] == [
        f"venv: {machine.root / 'venv'}, made by python3.12",
        f"torch: the CPU build of {TORCH} from https://download.pytorch.org/whl/cpu (a CUDA"
        " build is several GB)",
        "pip: install -r requirements.txt -r deploy/requirements.txt",
        "dry run: nothing done",
    ]
    assert machine.calls() == [] and not (machine.root / "venv").exists()


def test_bootstrap_takes_a_python_it_finds_and_refuses_what_it_cannot_use(machine: Machine) -> None:
    debian = 'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n'
    none = machine.bootstrap(UBUNTU.format(v="20.04"), "--dry-run")
    assert (none.returncode, none.stderr.splitlines()) == (
        1,
        [
            "bootstrap: error: unsupported release 'Ubuntu 20.04 LTS' without a Python 3.11-3.13:"
            " this script installs one on Ubuntu 22.04 and 24.04 only; elsewhere install one and"
            " run it with --python PYTHON"
        ],
    )
    fake_python(machine.bin / "python3", "3.10 final", machine.log)  # too old: passed over
    fake_python(machine.bin / "python3.11", "3.11 final", machine.log)
    found = machine.bootstrap(debian, "--dry-run")
    assert found.returncode == 0, found.stderr
    assert "Python: python3.11 (found on PATH" in found.stdout
    assert "apt: nothing to install (python3.11 can make a venv)" in found.stdout
    old = machine.bootstrap(debian, "--dry-run", "--python", "python3")
    assert old.stderr == (
        "bootstrap: error: --python python3 is 3.10 final: a final release of Python 3.11-3.13 is"
        " needed\n"
    )
    fake_python(machine.bin / "python3.12", "3.12 candidate", machine.log)  # as 22.04's 3.11.0rc1
    rc = machine.bootstrap(debian, "--dry-run", "--python", "python3.12")
    assert rc.returncode == 1 and "is 3.12 candidate: a final release" in rc.stderr
    (machine.root / "venv" / "bin").mkdir(parents=True)  # an earlier `python3 -m venv` of 3.10
    (machine.root / "venv" / "bin" / "python").symlink_to(machine.bin / "python3")
    stale = machine.bootstrap(UBUNTU.format(v="24.04"), "--dry-run", "--python", "python3.11")
    assert stale.returncode == 1
    assert (
        f"{machine.root / 'venv'} is Python 3.10 final (3.11-3.13 needed): remove it"
        in stale.stderr
    )


def test_bootstrap_on_ubuntu_22_04_adds_the_ppa_then_makes_the_venv_and_again_only_pip(
    machine: Machine,
) -> None:
    """The whole run against stand-ins of apt-get and add-apt-repository: installing python3.12
    brings a stand-in Python, which makes the venv and takes the pip installs."""
    log = machine.log
    (machine.bin / "apt-get").write_text(
        "#!/bin/sh\n"
        f'echo "apt-get $*" >> {log}\n'
        'case "$*" in *"install python3.12 python3.12-venv"*)'
        f" /bin/cp {machine.root / 'python3.12'} {machine.bin / 'python3.12'} ;; esac\n"
    )
    (machine.bin / "add-apt-repository").write_text(
        f'#!/bin/sh\necho "add-apt-repository $*" >> {log}\n'
    )
    for name in ("apt-get", "add-apt-repository"):
        (machine.bin / name).chmod(0o755)
    fake_python(machine.root / "python3.12", "3.12 final", log)  # what the PPA's package brings
    first = machine.bootstrap(UBUNTU.format(v="22.04"))
    assert first.returncode == 0, first.stdout + first.stderr
    apt = "apt-get -o DPkg::Lock::Timeout=300 -y -qq"
    venv = machine.root / "venv"
    steps = [c for c in machine.calls() if "version_info" not in c and "ensurepip" not in c]
    req = f"-r {ROOT / 'requirements.txt'} -r {ROOT / 'deploy' / 'requirements.txt'}"
    assert steps == [
        f"{apt} update",
        "add-apt-repository -y ppa:deadsnakes/ppa",
        f"{apt} update",
        f"{apt} install python3.12 python3.12-venv",
        f"python3.12 -m venv {venv}",
        f"python -m pip install -q --force-reinstall --no-deps torch=={TORCH} --index-url"
        " https://download.pytorch.org/whl/cpu",
        f"python -m pip install -q {req}",
        "python -c import numpy, tenseal, torch, flask, ansible",
        "python --version",
    ]
    assert first.stdout.splitlines()[-2] == (
        f"bootstrap: done: Python 3.12.3, ansible-playbook [core 2.19], in {venv}"
    )
    log.unlink()
    again = machine.bootstrap(UBUNTU.format(v="22.04"))
    assert again.returncode == 0, again.stderr
    assert "apt: nothing to install (python3.12 can make a venv)" in again.stdout
    assert not [c for c in machine.calls() if c.startswith(("apt-get", "add-apt", "python3.12 -m"))]
    assert f"python -m pip install -q {req}" in machine.calls()


# ---------------------------------------------------------------------- the CloudLab profile


class _Portal:
    """The part of geni-lib's portal module (CloudLab's, not installed here) the profile uses: a
    context that records the parameters, binds the given values (or the defaults) as CloudLab
    does, and keeps the request it prints."""

    class ParameterType:
        INTEGER, IMAGE, NODETYPE, BANDWIDTH = "integer", "image", "nodetype", "bandwidth"

    class ParameterError(Exception):
        def __init__(self, message: str, names: list[str]) -> None:
            super().__init__(message, names)

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.defined: dict[str, dict[str, Any]] = {}
        self.errors: list[Exception] = []
        self.printed: Any = None
        portal = self

        class Context:
            def defineParameter(  # noqa: N802 (geni-lib's names)
                self,
                name: str,
                description: str,
                typ: str,
                default: Any,
                legal: Any = None,
                **kw: Any,
            ) -> None:
                if legal:
                    assert default in [v[0] if isinstance(v, tuple) else v for v in legal]
                portal.defined[name] = {"type": typ, "default": default, "legal": legal, **kw}

            def bindParameters(self) -> SimpleNamespace:  # noqa: N802
                bound = {n: portal.values.get(n, p["default"]) for n, p in portal.defined.items()}
                return SimpleNamespace(**bound)

            def reportError(self, error: Exception) -> None:  # noqa: N802
                portal.errors.append(error)

            def verifyParameters(self) -> None:  # noqa: N802
                assert not portal.errors, portal.errors

            def makeRequestRSpec(self) -> Any:  # noqa: N802
                return _Request()

            def printRequestRSpec(self, request: Any) -> None:  # noqa: N802
                portal.printed = request

        self.Context = Context


class _Request:
    def __init__(self) -> None:
        self.nodes: list[SimpleNamespace] = []

    def LAN(self, name: str) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(addInterface=lambda iface: None)

    def RawPC(self, name: str) -> SimpleNamespace:  # noqa: N802
        node = SimpleNamespace(name=name, disk_image=None, addresses=[])
        iface = SimpleNamespace(addAddress=lambda a: node.addresses.append(a))
        node.addInterface = lambda name: iface
        self.nodes.append(node)
        return node


def run_profile(monkeypatch: pytest.MonkeyPatch, **values: Any) -> _Portal:
    portal = _Portal(values)
    pg = ModuleType("geni.rspec.pg")
    pg.IPv4Address = lambda address, mask: address  # type: ignore[attr-defined]
    geni, rspec, portal_module = (
        ModuleType("geni"),
        ModuleType("geni.rspec"),
        ModuleType("geni.portal"),
    )
    portal_module.__dict__.update(
        Context=portal.Context,
        ParameterType=portal.ParameterType,
        ParameterError=portal.ParameterError,
    )
    geni.portal, geni.rspec, rspec.pg = portal_module, rspec, pg  # type: ignore[attr-defined]
    for name, module in {
        "geni": geni,
        "geni.portal": portal_module,
        "geni.rspec": rspec,
        "geni.rspec.pg": pg,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    runpy.run_path(str(ROOT / "deploy" / "cloudlab" / "profile.py"))
    return portal


def test_the_profile_takes_the_image_ubuntu_24_04_unless_told_22_04(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    jammy = "urn:publicid:IDN+emulab.net+image+emulab-ops//UBUNTU22-64-STD"
    noble = "urn:publicid:IDN+emulab.net+image+emulab-ops//UBUNTU24-64-STD"
    default = run_profile(monkeypatch)
    image = default.defined["image"]
    assert (image["type"], image["default"]) == ("image", noble)
    assert [v for v, _ in image["legal"]] == [noble, jammy]
    nodes = default.printed.nodes
    assert [n.name for n in nodes] == [f"node{i}" for i in range(15)]
    assert [n.addresses for n in nodes] == [[f"10.10.1.{i + 1}"] for i in range(15)]
    assert {n.disk_image for n in nodes} == {noble}
    older = run_profile(monkeypatch, image=jammy, nodes=3)
    assert [n.disk_image for n in older.printed.nodes] == [jammy] * 3
