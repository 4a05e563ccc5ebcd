"""What a run record says about where a run happened: the code, the packages, each machine."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "torch",
    "tenseal",
    "numpy",
    "flask",
    "gunicorn",
    "requests",
    "scikit-learn",
    # optional HE libraries (requirements-he.txt)
    "seal-python",
    "zstandard",
    "phe",
    "gmpy2",
)
ROOT = Path(__file__).resolve().parent.parent  # the checkout main.py runs from


def versions() -> dict[str, str | None]:
    """Python's version and each package's (None: not installed in this environment)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


VERSION_FILE = "VERSION.json"  # a copy without .git (deploy/setup.yml's): code_version at packing


@functools.cache
def code() -> dict[str, Any]:
    """code_version() of this checkout, asked once per process (a node's /health tells it)."""
    return code_version()


def code_version(root: Path = ROOT) -> dict[str, Any]:
    """The git commit the code runs from, whether the work tree differs from it, and then the
    sha256 of what differs (`git diff HEAD` plus the names and contents of untracked files), so
    that two runs from the same dirty tree can be told apart from two different ones. A copy
    without .git (deploy/setup.yml's) says what its VERSION.json says it was packed from."""
    if not (root / ".git").exists():
        try:
            packed = json.loads((root / VERSION_FILE).read_text())
            if isinstance(packed, dict) and "commit" in packed:
                return {**packed, "copy": True}
        except (OSError, ValueError):
            pass
    try:
        commit = _git(root, "rev-parse", "HEAD").decode().strip()
        status = _git(root, "status", "--porcelain", "--untracked-files=all", "-z")
        diff = _git(root, "diff", "HEAD", "--binary")
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return {"commit": None, "dirty": None, "why": f"no git checkout here: {exc}"[:200]}
    if not status.strip(b"\0"):
        return {"commit": commit, "dirty": False, "diff_sha256": None}
    digest = hashlib.sha256(diff)
    for line in sorted(status.split(b"\0")):
        if line.startswith(b"??"):
            path = root / os.fsdecode(line[3:])
            digest.update(line)
            try:
                digest.update(path.read_bytes())
            except OSError:
                pass
    return {"commit": commit, "dirty": True, "diff_sha256": digest.hexdigest()}


def _git(root: Path, *args: str) -> bytes:
    """git's output as bytes: a diff or a file name need not be UTF-8."""
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, timeout=10, check=True
    )
    return done.stdout


@functools.cache
def machine() -> dict[str, Any]:
    """This machine as a node reports it: host name, CPU model, cores, memory, GPUs, and the
    versions it runs (nodes of one cluster can differ). Asked once per process."""
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": _memory_bytes(),
        "gpus": _gpus(),
        "versions": versions(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gpus() -> list[str]:
    """GPU names: torch's view where this process loaded torch (a client), else nvidia-smi's."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        except Exception:  # a broken driver: say no GPU rather than fail the push
            return []
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [
        line.split(":", 1)[1].split("(UUID")[0].strip() for line in out.splitlines() if ":" in line
    ]


def bench_line() -> str:
    """The first line a benchmark prints: the machine, its load and the commit measured."""
    import os

    m = machine()
    return (
        f"machine: {m['cpu_model']}, {m['usable_cores']} usable cores, "
        f"{m['memory_bytes'] / 2**30:.0f} GiB; load {os.getloadavg()[0]:.2f}; "
        f"commit {code_version()['commit']}"
    )
