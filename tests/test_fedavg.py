"""FedAvg's arithmetic (client weight, applying the decrypted sum, weighted metrics) vs Flower's."""

from __future__ import annotations

import numpy as np
import pytest

from hefl.config import parse_config
from hefl.node.aggregation import apply_sum, client_weight, expected_contributors, weighted_metrics
from tests.helpers import tree_config

aggregate = pytest.importorskip("flwr.server.strategy.aggregate")


@pytest.mark.parametrize("samples", [[100, 100, 100], [719, 719], [3, 50, 1000, 7], [1]])
def test_weighted_deltas_summed_and_applied_equal_flowers_fedavg(samples: list[int]) -> None:
    rng = np.random.default_rng(len(samples))
    base = rng.standard_normal(257)
    local = [base + rng.standard_normal(257) * 0.1 for _ in samples]
    m, total = len(samples), sum(samples)
    sent = [(w - base) * client_weight(n, m, total) for w, n in zip(local, samples, strict=True)]
    ours = apply_sum(base, np.sum(sent, axis=0), m, total, summed_samples=total)
    (flower,) = aggregate.aggregate([([w], n) for w, n in zip(local, samples, strict=True)])
    np.testing.assert_allclose(ours, flower, rtol=0, atol=1e-12)


def test_the_sum_stays_within_clients_times_clip() -> None:
    """Every client sends its delta x n_i x m / N: the weights average to 1 over the clients."""
    samples = [10, 30, 60]
    weights = [client_weight(n, 3, 100) for n in samples]
    assert sum(weights) == pytest.approx(3)


def test_weighted_metrics_equal_flowers_weighted_loss_average() -> None:
    reports = [(30, 0.5, 0.9), (10, 1.5, 0.6), (7, 0.25, 1.0)]
    loss, accuracy = weighted_metrics(reports)
    assert loss == pytest.approx(
        aggregate.weighted_loss_avg([(n, lo) for n, lo, _ in reports]), abs=1e-15
    )
    assert accuracy == pytest.approx(
        aggregate.weighted_loss_avg([(n, a) for n, _, a in reports]), abs=1e-15
    )


def test_expected_contributors_are_the_clients_under_a_node() -> None:
    cfg = parse_config(tree_config(clients=4, leaves=2, spine=True, dumb=(1,)))
    assert expected_contributors(cfg, "127.0.0.1:100") == 1
    assert expected_contributors(cfg, "127.0.0.1:10") == 2
    # dumb: it forwards, its clients still count
    assert expected_contributors(cfg, "127.0.0.1:11") == 2
    assert expected_contributors(cfg, "127.0.0.1:2") == 4
    assert expected_contributors(cfg, cfg.tree.root) == 4
