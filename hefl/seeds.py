"""Every seed of an experiment, derived from the config's one seed: one function per purpose.

None can collide: each purpose has its own spawn key in
`numpy.random.SeedSequence(entropy=seed, spawn_key=(purpose, ...))`, so that, say, a client's
shuffle in round 17 and its quantization noise never share a stream (hand-made sums like
`seed * p + index * q + r` did). The results are plain ints, as torch and numpy both take them.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Purpose(IntEnum):
    """The first element of each spawn key; never renumber (it would change every run's results)."""

    HOLDOUT = 1
    SYNTHETIC = 2
    DIRICHLET = 3
    MODEL_INIT = 4
    TRAIN_SHUFFLE = 5
    QUANTIZE = 6
    AUGMENT = 7
    SAMPLE = 8


def derive(seed: int, purpose: Purpose, *key: int) -> int:
    """A 63-bit seed for `purpose` (and ints that tell its uses apart) from the config's seed."""
    seq = np.random.SeedSequence(entropy=seed, spawn_key=(int(purpose), *key))
    # torch.manual_seed takes < 2^63 safely
    return int(seq.generate_state(1, np.uint64)[0] >> np.uint64(1))


def holdout_seed(seed: int) -> int:
    """The train/test split of digits and synthetic data."""
    return derive(seed, Purpose.HOLDOUT)


def synthetic_seed(seed: int) -> int:
    """The inputs and the teacher of the synthetic dataset."""
    return derive(seed, Purpose.SYNTHETIC)


def dirichlet_seed(seed: int) -> int:
    """The label-skew split between clients."""
    return derive(seed, Purpose.DIRICHLET)


def model_seed(seed: int) -> int:
    """The initial weights, the same on every client."""
    return derive(seed, Purpose.MODEL_INIT)


def shuffle_seed(seed: int, index: int, round_: int) -> int:
    """Client `index`'s batch order in round `round_`."""
    return derive(seed, Purpose.TRAIN_SHUFFLE, index, round_)


def quantize_seed(seed: int, index: int, round_: int) -> int:
    """Client `index`'s stochastic rounding in round `round_` (bfv and paillier quantize): keyed by
    round, so that a client that restarted and rejoined draws what it would have drawn."""
    return derive(seed, Purpose.QUANTIZE, index, round_)


def augment_seed(shuffle: int) -> int:
    """The crops and flips of one client's round (dataset.augment), derived from that round's
    `shuffle_seed`, so that the two never share a stream and training needs no other seed."""
    return derive(shuffle, Purpose.AUGMENT)


def sample_seed(seed: int, round_: int) -> int:
    """Which clients round `round_` draws (aggregator.clients_per_round): the same on every node."""
    return derive(seed, Purpose.SAMPLE, round_)
