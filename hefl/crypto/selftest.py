"""seal.sh's checks: the HE library imports and round-trips with the experiment's parameters.

A round trip encrypts, adds and decrypts.
"""

from __future__ import annotations

import importlib
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hefl.crypto import (
    HeParams,
    add_all,
    generate_keys,
    library,
    load_keyless,
    load_secret,
    make_scheme,
    read_keyless,
)
from hefl.errors import HeflError


def round_trip(enc: HeParams, size: int = 20_000, out: Callable[[str], None] = print) -> None:
    """Encrypt two vectors on 'clients', add on a keyless 'switch', decrypt: check and time it
    (Paillier on at most 2,000 values: 20,000 would take 6 s)."""
    if enc.scheme == "paillier":
        size = min(size, 2_000)
    with tempfile.TemporaryDirectory() as tmp:
        key_dir = Path(tmp)
        generate_keys(enc, key_dir)
        client = make_scheme(enc, size, load_secret(enc, key_dir), seed=1)
        switch = make_scheme(enc, size, load_keyless(enc, read_keyless(enc, key_dir)))
        rng = np.random.default_rng(0)
        a, b = rng.uniform(-enc.clip, enc.clip, size), rng.uniform(-enc.clip, enc.clip, size)
        t0 = time.perf_counter()
        pa, pb = client.encrypt(a), client.encrypt(b)
        t1 = time.perf_counter()
        total = add_all(switch, [switch.load(pa), switch.load(pb)])
        t2 = time.perf_counter()
        got = client.decrypt(client.load(total), 2)
        t3 = time.perf_counter()
        error = float(np.abs(got - (a + b)).max())
        tolerance = 1e-3 if enc.scheme == "ckks" else 4 * enc.clip / 2**enc.quant_bits
        try:
            switch.decrypt(switch.load(total), 2)
            keyless = False
        except ValueError as exc:
            keyless = "secret" in str(exc)  # the scheme's own refusal, not any other ValueError
        out(
            f"{enc.scheme}: {len(pa) / size:.1f} B/param, "
            f"encrypt {2 * size / (t1 - t0) / 1e6:.2f} Mparam/s, "
            f"load+add {2 * size / (t2 - t1) / 1e6:.2f} Mparam/s, "
            f"decrypt {size / (t3 - t2) / 1e6:.2f} Mparam/s, "
            f"max error {error:.1e}, keyless context cannot decrypt: {keyless}"
        )
        if error > tolerance or not keyless:
            raise HeflError(
                f"{enc.scheme} self-test failed: max error {error:.2e} "
                f"(tolerance {tolerance:.1e}), keyless context refused decryption: {keyless}"
            )


def versions(enc: HeParams) -> str:
    """Python's, the HE library's (of `enc`: TenSEAL for scheme none) and numpy's versions."""
    name = library(enc) or "tenseal"
    lib = importlib.import_module(f"hefl.crypto.{name}")
    return f"python {platform.python_version()}, {lib.version()}, numpy {np.__version__}"
