"""metrics.ece_consistency: the ECE a perfectly calibrated model scores, against exact and brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from uncertlr import metrics


@settings(max_examples=20, deadline=None)
@given(n=st.integers(5, 400), c=st.floats(0.15, 0.99), seed=st.integers(0, 1000))
def test_one_bin_matches_the_exact_binomial_mean_absolute_deviation(n, c, seed):
    """Every input at confidence c (one bin): ECE of a calibrated model = |Binomial(n, c)/n - c|."""
    probs = np.tile([[c] + [(1 - c) / 9] * 9], (n, 1))  # class 0 on top (c > 0.1)
    conf = probs.max(1)[0]
    res = metrics.ece_consistency(probs, np.zeros(n, dtype=int), num_draws=4000, seed=seed)
    k = np.arange(n + 1)
    pmf = stats.binom.pmf(k, n, conf)
    dev = np.abs(k / n - conf)
    exact, sd = (pmf * dev).sum(), np.sqrt((pmf * dev**2).sum() - (pmf * dev).sum() ** 2)
    assert abs(res.expected - exact) < 5 * sd / np.sqrt(4000) + 1e-12
    # the quantile and the p-value of the observed ECE (every prediction right), from the exact law
    assert res.ece == pytest.approx(1 - conf)
    assert res.p_value == pytest.approx(
        pmf[dev >= 1 - conf - 1e-12].sum(), abs=5 * 0.5 / np.sqrt(4000) + 1e-3
    )


def test_several_bins_match_a_brute_force_loop_over_simulated_labels():
    """The vectorised draws against metrics.ece itself on labels simulated one draw at a time."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 4)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    conf, pred = probs.max(1), probs.argmax(1)
    brute = []
    for _ in range(1500):
        right = rng.random(300) < conf
        labels = np.where(right, pred, (pred + 1) % 4)  # a wrong label when the coin says so
        brute.append(float(metrics.ece(probs, labels)))
    res = metrics.ece_consistency(probs, pred, num_draws=3000, seed=1)
    se = np.std(brute) * np.sqrt(1 / 1500 + 1 / 3000)
    assert abs(res.expected - np.mean(brute)) < 5 * se
    assert abs(res.upper - np.quantile(brute, 0.95)) < 0.01


def test_miscalibration_is_told_from_test_set_noise():
    rng = np.random.default_rng(2)
    n = 450
    probs = np.full((n, 10), 0.01 / 9)
    probs[:, 0] = 0.99  # 99% confident
    over = metrics.ece_consistency(probs, np.where(rng.random(n) < 0.9, 0, 1))  # right 90% of the time
    assert over.ece > over.upper and over.p_value < 0.01
    calibrated = metrics.ece_consistency(probs, np.where(rng.random(n) < 0.99, 0, 1))
    assert calibrated.p_value > 0.01 and calibrated.expected < 0.02
    # torch tensors and [S, N, C] samples give the same answer as numpy
    same = metrics.ece_consistency(
        torch.from_numpy(np.stack([probs, probs])), torch.zeros(n, dtype=torch.long)
    )
    ref = metrics.ece_consistency(probs, np.zeros(n, dtype=int))
    assert same == pytest.approx(ref)


@pytest.mark.parametrize(
    "kw, match",
    [({"num_draws": 0}, "num_draws"), ({"level": 1.0}, "level"), ({"num_bins": 0}, "num_bins")],
)
def test_bad_arguments_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        metrics.ece_consistency(np.array([[0.6, 0.4]]), np.array([0]), **kw)
    with pytest.raises(ValueError, match="labels"):
        metrics.ece_consistency(np.array([[0.6, 0.4]]), np.array([2]))
