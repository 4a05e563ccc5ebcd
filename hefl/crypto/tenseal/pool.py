"""Encryption of an update's chunks spread over worker processes (TenSEAL holds the GIL: threads do
not help). Each worker loads the client's context once, at start, and with seeded ciphertexts its
own secret key residues (hefl/crypto/tenseal/seeder.py: every worker draws its own fresh seeds);
the node keeps its one process."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import tenseal as ts

from hefl.crypto.params import HeParams
from hefl.crypto.tenseal.base import seeded_here
from hefl.crypto.tenseal.keys import context_bytes, with_scale

_CTX: Any = None
_SCHEME = ""
_SEEDER: Any = None  # hefl.crypto.tenseal.seeder.Seeder, where ciphertexts go seeded


def _start(context: bytes, enc: HeParams) -> None:
    global _CTX, _SCHEME, _SEEDER
    _CTX = with_scale(ts.context_from(context), enc)
    _SCHEME = enc.scheme
    if seeded_here(enc):
        from hefl.crypto.tenseal.seeder import Seeder, symmetric

        if not symmetric(_CTX):
            return  # an older key folder's public key: its ciphertexts go full
        loader = ts.ckks_vector_from if enc.scheme == "ckks" else ts.bfv_vector_from
        _SEEDER = Seeder(_CTX, enc, loader)


def _encrypt(chunk: np.ndarray) -> bytes:
    make = ts.ckks_vector if _SCHEME == "ckks" else ts.bfv_vector
    vector = make(_CTX, chunk.tolist())
    return bytes(vector.serialize()) if _SEEDER is None else _SEEDER.seed(vector).dump()


class EncryptPool:
    """`enc.processes` workers that turn chunks of values (or packed slots) into serialized
    ciphertexts."""

    def __init__(self, context: Any, enc: HeParams) -> None:
        # clients encrypt with the secret key (symmetric: keys.generate); the workers are this
        # client's own processes, started with `spawn`: the context goes to them through a pipe
        blob = context_bytes(context, public=True, secret=True)
        self.pool = ProcessPoolExecutor(
            enc.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start,
            initargs=(blob, enc),
        )

    def encrypt(self, chunks: list[np.ndarray]) -> list[bytes]:
        return list(self.pool.map(_encrypt, chunks))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
