"""Seeds: one stream per purpose from the config's seed; none collide; same inputs, same seed."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from hefl.seeds import (
    Purpose,
    augment_seed,
    dirichlet_seed,
    holdout_seed,
    model_seed,
    quantize_seed,
    shuffle_seed,
    synthetic_seed,
)


def _all(seed: int) -> dict[str, int]:
    seeds = {
        "holdout": holdout_seed(seed),
        "synthetic": synthetic_seed(seed),
        "dirichlet": dirichlet_seed(seed),
        "model": model_seed(seed),
    }
    for index, round_ in itertools.product(range(16), range(40)):
        seeds[f"shuffle {index} {round_}"] = shuffle_seed(seed, index, round_)
    for index, round_ in itertools.product(range(16), range(40)):
        seeds[f"quantize {index} {round_}"] = quantize_seed(seed, index, round_)
        seeds[f"augment {index} {round_}"] = augment_seed(shuffle_seed(seed, index, round_))
    return seeds


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_no_two_purposes_rounds_or_clients_share_a_seed(seed: int) -> None:
    seeds = _all(seed)
    assert len(set(seeds.values())) == len(seeds)


def test_round_17_shuffle_differs_from_the_quantization_seed() -> None:
    # the old formulas: seed * 1_000_003 + index * 7919 + r for the shuffle, + 17 for the quantizer
    assert shuffle_seed(0, 0, 17) != quantize_seed(0, 0, 17)
    assert shuffle_seed(0, 1, 0) != shuffle_seed(0, 0, 7919)


def test_same_inputs_same_seed_and_seeds_differ_between_configs() -> None:
    assert _all(3) == _all(3)
    assert not set(_all(3).values()) & set(_all(4).values())


def test_seeds_are_plain_ints_that_torch_and_numpy_take() -> None:
    for value in _all(2**40).values():
        assert type(value) is int and 0 <= value < 2**63
    torch.Generator().manual_seed(shuffle_seed(7, 3, 2))
    np.random.default_rng(quantize_seed(7, 3, 2))


def test_purposes_keep_their_numbers() -> None:
    # renumbering would change every run's results: new purposes go at the end
    assert [(p.name, p.value) for p in Purpose] == [
        ("HOLDOUT", 1),
        ("SYNTHETIC", 2),
        ("DIRICHLET", 3),
        ("MODEL_INIT", 4),
        ("TRAIN_SHUFFLE", 5),
        ("QUANTIZE", 6),
        ("AUGMENT", 7),
        ("SAMPLE", 8),
    ]
