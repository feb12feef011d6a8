"""Regression signals (predictive variance and its parts) against uncertlr.metrics, on torch and JAX; entropy and
mutual information refuse regression outputs; elbo_signal picks the signal by the BNN's likelihood."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from uncertlr import likelihoods, metrics
from uncertlr.modulation import Ratio
from uncertlr.torch import (
    Modulator,
    batch_aleatoric_variance,
    batch_entropy,
    batch_epistemic_variance,
    batch_mutual_information,
    batch_predictive_variance,
    bayesian,
    elbo_signal,
)

shapes = st.tuples(st.integers(1, 5), st.integers(1, 7), st.sampled_from([(), (1,), (3,)]))


@settings(deadline=None, max_examples=40)
@given(shapes, st.integers(0, 2**31 - 1), st.booleans())
def test_variance_signals_equal_the_metrics_decomposition(shape, seed, hetero):
    k, b, tail = shape
    g = torch.Generator().manual_seed(seed)
    out = 3.0 * torch.randn(k, b, *tail, generator=g, dtype=torch.float64)
    noise = (0.1 + torch.rand(b, *tail, generator=g, dtype=torch.float64)) if hetero else 0.7
    var = (noise**2 if hetero else torch.full((b, *tail), 0.49, dtype=torch.float64)).expand_as(out)
    d = metrics.predictive_variance(out.numpy(), var.numpy())  # independent: numpy, per example
    total = batch_predictive_variance(out, noise)
    ale, epi = batch_aleatoric_variance(out, noise), batch_epistemic_variance(out)
    np.testing.assert_allclose(float(total), d.total.mean(), rtol=1e-10)
    np.testing.assert_allclose(float(ale), d.aleatoric.mean(), rtol=1e-10)
    np.testing.assert_allclose(float(epi), d.epistemic.mean(), rtol=1e-10, atol=1e-12)
    assert float(total) == pytest.approx(float(ale) + float(epi))
    assert total.dim() == 0 and not total.requires_grad
    if k == 1:
        assert float(epi) == 0.0


def test_signals_from_a_regression_bnn_use_its_learned_noise_and_particles():
    torch.manual_seed(0)
    bnn = bayesian(torch.nn.Linear(3, 1), num_data=40, likelihood=likelihoods.Normal(init_scale=0.5))
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    terms = bnn.elbo(x, y, num_particles=6)
    assert float(batch_aleatoric_variance(terms.outputs, bnn)) == pytest.approx(0.25)
    expect = 0.25 + float(terms.outputs.detach().var(0, correction=0).mean())
    assert float(batch_predictive_variance(terms.outputs, bnn)) == pytest.approx(expect)
    assert float(elbo_signal(bnn)(terms)) == pytest.approx(expect)
    assert float(elbo_signal(bnn, "epistemic_variance")(terms)) == pytest.approx(expect - 0.25)


def test_entropy_and_mutual_information_refuse_regression_outputs():
    bnn = bayesian(torch.nn.Linear(3, 1), num_data=40, likelihood=likelihoods.Normal())
    terms = bnn.elbo(torch.randn(8, 3), torch.randn(8, 1), num_particles=2)  # outputs [2, 8, 1]
    for fn in (batch_entropy, batch_mutual_information):
        with pytest.raises(ValueError, match="regression mean"):
            fn(terms.outputs)
    with pytest.raises(ValueError, match="needs a classifier"):
        elbo_signal(bnn, "entropy")
    with pytest.raises(ValueError, match="needs a classifier"):
        elbo_signal(bnn, "mutual_information")
    clf = bayesian(torch.nn.Linear(3, 4), num_data=40)
    with pytest.raises(ValueError, match="needs a regressor"):
        elbo_signal(clf, "predictive_variance")
    with pytest.raises(ValueError, match="Categorical"):
        batch_predictive_variance(torch.zeros(2, 8, 4), clf)
    with pytest.raises(ValueError, match="kind"):
        elbo_signal(clf, "variance")


def test_the_g1_recipe_on_a_regression_bnn_no_longer_doubles_the_lr():
    """The defect: batch_entropy of [K, B, 1] outputs was -0.0, so G1 sat at its maximum 2.0."""
    torch.manual_seed(0)
    bnn = bayesian(torch.nn.Linear(3, 1), num_data=64, likelihood=likelihoods.Normal())
    opt = torch.optim.Adam(bnn.parameters(), lr=1e-2)
    mod = Modulator(Ratio(warmup=2)).attach(opt)
    signal = elbo_signal(bnn)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(64, 1)
    for i in range(30):
        xb, yb = x[i % 4 * 16 :][:16], y[i % 4 * 16 :][:16]
        opt.zero_grad()
        terms = bnn.elbo(xb, yb)
        terms.loss.backward()
        mod.observe(signal(terms))
        opt.step()
    scales = [r["scale"] for r in mod.history[2:]]
    assert min(scales) < 2.0 and np.mean(scales) < 1.5


def test_bad_regression_signal_input_is_named():
    with pytest.raises(ValueError, match=r"\[K, B, \.\.\.\]"):
        batch_epistemic_variance(torch.zeros(5))
    with pytest.raises(TypeError, match="floating point"):
        batch_epistemic_variance(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="broadcast"):
        batch_predictive_variance(torch.zeros(2, 3), torch.ones(4))
    with pytest.raises(TypeError, match="noise"):
        batch_predictive_variance(torch.zeros(2, 3), "0.1")
