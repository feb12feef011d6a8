"""Last-layer Laplace against closed forms: Bayesian linear regression, the softmax Hessian, the evidence."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.distributions import MultivariateNormal

from uncertlr.likelihoods import NormalPrediction
from uncertlr.torch import LastLayerLaplace, PointNetwork


def _linear_regression(seed: int, n: int = 40, d: int = 3, noise: float = 0.3, delta: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = (
        x @ torch.randn(d, generator=g, dtype=torch.float64)
        + noise * torch.randn(n, generator=g, dtype=torch.float64)
    )[:, None]
    xt = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], 1)
    precision = xt.T @ xt / noise**2 + delta * torch.eye(d + 1, dtype=torch.float64)
    mean = torch.linalg.solve(precision, xt.T @ y / noise**2)[:, 0]
    net = torch.nn.Linear(d, 1).double()
    with torch.no_grad():
        net.weight.copy_(mean[:d][None])
        net.bias.copy_(mean[d:])
    return net, x, y, xt, precision


@given(seed=st.integers(0, 10_000), noise=st.floats(0.1, 2.0), delta=st.floats(0.01, 50.0))
def test_gaussian_last_layer_is_bayesian_linear_regression(seed, noise, delta):
    net, x, y, xt, precision = _linear_regression(seed, noise=noise, delta=delta)
    la = LastLayerLaplace(net, likelihood="normal", noise_scale=noise).fit(x, y, prior_precision=delta)
    assert torch.allclose(la.posterior_covariance(), torch.linalg.inv(precision), rtol=1e-6, atol=1e-10)
    # at the exact MAP the Laplace evidence is the exact evidence log N(y | 0, σ² I + X Xᵀ / δ)
    k = noise**2 * torch.eye(len(x), dtype=torch.float64) + xt @ xt.T / delta
    exact = MultivariateNormal(torch.zeros(len(x), dtype=torch.float64), k).log_prob(y[:, 0])
    assert la.log_marginal_likelihood() == pytest.approx(float(exact), rel=1e-8, abs=1e-8)


def test_marginal_likelihood_fit_finds_the_evidence_maximum():
    """The fitted δ maximises the (exact, for linear-Gaussian with the MAP refitted) evidence on a grid."""
    net, x, y, xt, _ = _linear_regression(0, n=60, noise=0.5)
    la = LastLayerLaplace(net, likelihood="normal", noise_scale=0.5).fit(x, y)
    grid = torch.logspace(-4, 6, 400, dtype=torch.float64)
    best = max(grid, key=lambda d: la.log_marginal_likelihood(float(d)))
    assert la.log_marginal_likelihood() >= la.log_marginal_likelihood(float(best)) - 1e-6
    assert 1e-4 < la.prior_precision < 1e6


@given(seed=st.integers(0, 10_000), classes=st.integers(2, 5))
def test_categorical_ggn_is_the_exact_hessian_of_the_last_layer(seed, classes):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, classes)).double()
    x, y = torch.randn(30, 4, dtype=torch.float64), torch.randint(0, classes, (30,))
    la = LastLayerLaplace(net).fit(x, y, prior_precision=0.7, batch_size=7)
    phi = torch.tanh(net[0](x)).detach()

    def nll(theta):
        w = theta.view(classes, 6)
        return torch.nn.functional.cross_entropy(phi @ w[:, :5].T + w[:, 5], y, reduction="sum")

    theta = torch.cat([net[2].weight, net[2].bias[:, None]], 1).reshape(-1).detach()
    h = torch.autograd.functional.hessian(nll, theta)
    expected = torch.linalg.inv(h + 0.7 * torch.eye(len(theta), dtype=torch.float64))
    assert torch.allclose(la.posterior_covariance(), expected, atol=1e-8)
    sd = la.posterior_scale()
    assert torch.allclose(sd["2.weight"].double(), expected.diagonal().sqrt().view(classes, 6)[:, :5])
    # another prior precision set after the fit: the posterior follows it (the factor is cached per δ)
    la.prior_precision = 3.0
    expected = torch.linalg.inv(h + 3.0 * torch.eye(len(theta), dtype=torch.float64))
    assert torch.allclose(la.posterior_covariance(), expected, atol=1e-8)


def test_predict_samples_the_posterior():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.randn(100, 3), torch.randint(0, 3, (100,))
    la = LastLayerLaplace(net).fit(x, y, prior_precision=1.0)
    out = la.sample_outputs(x[:4], num_samples=40_000).double()
    phi = torch.cat([torch.relu(net[0](x[:4])), torch.ones(4, 1)], 1).detach().double()
    # mean: the network's outputs; covariance of output c of input n: (φ̃ ⊗ e_c)ᵀ Σ (φ̃ ⊗ e_c)
    assert torch.allclose(out.mean(0), net(x[:4]).double().detach(), atol=0.05)
    cov = la.posterior_covariance().view(3, 9, 3, 9)
    var = torch.einsum("nd,cdce,ne->nc", phi, cov, phi)
    assert torch.allclose(out.var(0), var, rtol=0.05)
    probs = la.predict(x[:4], num_samples=10)
    assert probs.shape == (10, 4, 3) and torch.allclose(probs.sum(-1), torch.ones(10, 4))


def test_point_network_regression_uses_its_learned_noise():
    pn = PointNetwork(
        torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)), "normal"
    )
    with torch.no_grad():
        pn.likelihood_module.log_noise.fill_(math.log(0.2))
    x, y = torch.randn(20, 2), torch.randn(20, 1)
    la = LastLayerLaplace(pn).fit(x, y)
    pred = la.predict(x, num_samples=3)
    assert isinstance(pred, NormalPrediction) and torch.allclose(pred.variance, torch.full((3, 20, 1), 0.04))
    # without a given noise a plain network's noise is the RMS training residual
    la2 = LastLayerLaplace(pn.net, likelihood="normal").fit(x, y)
    assert la2.noise_scale == pytest.approx(float((pn.net(x) - y).square().mean().sqrt()), rel=1e-5)


def test_parameter_scale_keys_are_the_networks_own_parameters():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    la = LastLayerLaplace(net).fit(torch.randn(10, 3), torch.randint(0, 2, (10,)))
    sig = la.parameter_scale()
    assert list(map(id, sig)) == [id(net[2].weight), id(net[2].bias)]
    assert sig[net[2].weight].shape == (2, 4)


def test_errors_name_the_problem():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    la = LastLayerLaplace(net)
    with pytest.raises(RuntimeError, match="call fit"):
        la.predict(torch.randn(2, 3))
    with pytest.raises(ValueError, match="not an nn.Linear"):
        LastLayerLaplace(net, last_layer="1")
    with pytest.raises(ValueError, match="no nn.Linear"):
        LastLayerLaplace(torch.nn.Conv1d(1, 1, 3))
    with pytest.raises(ValueError, match="output of its last Linear layer"):
        LastLayerLaplace(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())).fit(
            torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
        )
    with pytest.raises(ValueError, match="prior_precision must be"):
        la.fit(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), prior_precision=-1.0)
    with pytest.raises(ValueError, match="labels|label"):
        la.fit(torch.randn(4, 3), torch.tensor([0, 1, 0, 5]))
    with pytest.raises(ValueError, match="at most"):
        LastLayerLaplace(torch.nn.Linear(1000, 10))
