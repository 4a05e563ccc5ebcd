"""What the benches read of their processes in /proc (CPU seconds, resident memory, which node a
process belongs to), and `main.py local` run with its processes sampled as it goes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLE_S = 0.1  # /proc sampling period during a local run


def proc_stats() -> dict[int, tuple[int, float]]:
    """Every process: its parent and its own CPU seconds (utime + stime)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(os.path.join("/proc", name, "stat"), "rb") as fh:
                raw = fh.read()
        except OSError:
            continue  # gone since the listing
        fields = raw[raw.rindex(b")") + 2 :].split()  # the command name may hold spaces and ')'
        out[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def descendants(root: int, stats: dict[int, tuple[int, float]]) -> list[int]:
    """The processes below `root`, each after its parent."""
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (ppid, _) in stats.items():
        children[ppid].append(pid)
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process in kB; empty once it is gone."""
    try:
        lines = Path("/proc", str(pid), "status").read_text().splitlines()
    except OSError:
        return {}
    return {
        key: int(rest.split()[0])
        for key, _, rest in (line.partition(":") for line in lines)
        if key in ("VmRSS", "VmHWM")
    }


def label_of(pid: int) -> str | None:
    """The node id a process was started with (`main.py node ... --label <node id>`, or the title
    `gunicorn: master [main.py node ... --label <node id>]` a node's processes take)."""
    try:
        raw = Path("/proc", str(pid), "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return None
    command = raw.replace("\0", " ").strip()
    if command.startswith("gunicorn: ") and command.endswith("]"):
        command = command[:-1]
    args = command.split()
    if "--label" in args[:-1]:
        return args[args.index("--label") + 1]
    return None


def children_cpu() -> dict[int, float]:
    """CPU seconds of each process below this one (an encrypting pool's workers)."""
    stats = proc_stats()
    return {pid: stats[pid][1] for pid in descendants(os.getpid(), stats)}


@dataclass
class NodeUsage:
    """What /proc showed of one node's processes during a run, per process id."""

    cpu: dict[int, float] = field(default_factory=dict)  # the last CPU seconds seen
    hwm_kb: dict[int, int] = field(default_factory=dict)  # VmHWM: peak RSS
    rss: dict[int, list[tuple[float, int]]] = field(default_factory=dict)  # (time.time(), kB)

    @property
    def cpu_s(self) -> float:
        return sum(self.cpu.values())

    @property
    def peak_kb(self) -> int:
        """The largest peak RSS of the node's processes (its gunicorn worker's, in practice)."""
        return max(self.hwm_kb.values(), default=0)

    def rss_before(self, moment: float) -> int | None:
        """VmRSS (kB) of the process with the largest peak, in its last sample before `moment` (a
        time.time()): that process's own baseline, not its parent's."""
        if not self.hwm_kb:
            return None
        pid = max(self.hwm_kb, key=lambda p: self.hwm_kb[p])
        before = [kb for t, kb in self.rss[pid] if t < moment]
        return before[-1] if before else None


class Sampler:
    """Samples the processes below a local run: each belongs to the node whose `--label` it, or an
    ancestor, was started with (the node process, its gunicorn worker, encrypting workers)."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.labels: dict[int, str] = {}
        self.nodes: dict[str, NodeUsage] = {}

    def sample(self) -> None:
        stats = proc_stats()
        now = time.time()
        for pid in descendants(self.root, stats):
            label = self.label(pid, stats[pid][0])
            mem = memory_kb(pid)
            if label is None or not mem:
                continue
            node = self.nodes.setdefault(label, NodeUsage())
            node.cpu[pid] = stats[pid][1]
            node.hwm_kb[pid] = max(node.hwm_kb.get(pid, 0), mem.get("VmHWM", 0))
            node.rss.setdefault(pid, []).append((now, mem.get("VmRSS", 0)))

    def find(self, pid: int) -> str | None:
        """The node a process says it is, from its own command line (None: it does not say)."""
        return label_of(pid)

    def label(self, pid: int, parent: int) -> str | None:
        """Kept once known (a process between fork and exec shows its parent's command line)."""
        if pid not in self.labels:
            found = self.find(pid) or self.labels.get(parent)
            if found is None:
                return None
            self.labels[pid] = found
        return self.labels[pid]


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C for a local run (it stops its nodes), then a kill."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def sampled(
    command: list[str], out: Path, timeout_s: float = float("inf")
) -> tuple[int, float, Sampler]:
    """Run `command` (a `main.py local`) with its output into `out`, its processes sampled every
    SAMPLE_S until it ends or `timeout_s` passes (then stopped as Ctrl-C would): its exit code,
    its wall seconds and what the samples saw."""
    t0 = time.monotonic()
    with open(out, "wb") as sink:
        proc = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT
        )
        sampler = Sampler(proc.pid)
        try:
            while proc.poll() is None:
                sampler.sample()
                if time.monotonic() - t0 > timeout_s:
                    break
                time.sleep(SAMPLE_S)
        finally:
            if proc.poll() is None:
                stop(proc)
    return proc.returncode, time.monotonic() - t0, sampler
