"""A node hands large freed buffers back to the system (glibc keeps them resident by default)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.process

PROBE = """
import sys
from hefl.node.host import return_large_buffers

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
if sys.argv[1] == "on":
    assert return_large_buffers()
for _ in range(3):  # a 24 MB body, freed, as each update's is
    body = bytearray(24 << 20)
    body[::4096] = b"x" * len(body[::4096])
    del body
print(rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc on Linux")
def test_freed_bodies_do_not_stay_resident() -> None:
    def rss(mode: str) -> int:
        command = [sys.executable, "-c", PROBE, mode]
        out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
        return int(out.stdout)

    kept, returned = rss("off"), rss("on")
    assert kept - returned >= 20  # glibc's default keeps the second and later 24 MB in its heap
