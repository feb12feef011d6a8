"""Correlated variational posteriors: bayesian(guide="lowrank" | "full") against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro import poutine
from torch.distributions import MultivariateNormal, kl_divergence

from uncertlr import priors, select
from uncertlr.torch import bayesian
from uncertlr.torch._lowrank import MAX_FULL_PARAMS, FullNormal, LowRankNormal, make_posterior


def _net():
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()


def _randomise(q: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in q.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))


@settings(max_examples=20)
@given(seed=st.integers(0, 10_000), rank=st.integers(1, 6), prior_scale=st.floats(0.1, 3.0))
def test_lowrank_kl_matches_torch_distributions(seed, rank, prior_scale):
    q = LowRankNormal(
        {"a": torch.zeros(3, 2, dtype=torch.float64), "b": torch.zeros(4, dtype=torch.float64)},
        0.1,
        rank=rank,
    )
    _randomise(q, seed)
    p = q.num_params
    prior_loc = torch.linspace(-1, 1, p, dtype=torch.float64)
    prec = torch.full((p,), prior_scale**-2, dtype=torch.float64)
    kl_const = torch.log(prec.rsqrt()).sum() - 0.5 * p
    _, kl = q.sample_kl(torch.zeros(p, dtype=torch.float64), prior_loc, prec, kl_const)
    exact = kl_divergence(
        MultivariateNormal(q.loc, q.covariance()), MultivariateNormal(prior_loc, torch.diag(1 / prec))
    )
    assert torch.allclose(kl, exact, rtol=1e-8, atol=1e-8)
    # the marginal std is the square root of the covariance diagonal
    assert torch.allclose(q.scale, q.covariance().diagonal().sqrt())


@settings(max_examples=20)
@given(seed=st.integers(0, 10_000))
def test_full_kl_matches_torch_distributions(seed):
    q = FullNormal({"w": torch.zeros(5, dtype=torch.float64)}, 0.3)
    _randomise(q, seed)
    prec = torch.full((5,), 2.0, dtype=torch.float64)
    kl_const = torch.log(prec.rsqrt()).sum() - 2.5
    _, kl = q.sample_kl(torch.zeros(5, dtype=torch.float64), None, prec, kl_const)
    exact = kl_divergence(
        MultivariateNormal(q.loc, q.covariance()),
        MultivariateNormal(torch.zeros(5, dtype=torch.float64), torch.diag(1 / prec)),
    )
    assert torch.allclose(kl, exact, rtol=1e-8)
    assert torch.allclose(q.scale, q.covariance().diagonal().sqrt())


@pytest.mark.parametrize("guide", ["lowrank", "full"])
def test_draws_have_the_posterior_covariance(guide):
    kw = {"rank": 2} if guide == "lowrank" else {}
    q = make_posterior(guide, {"w": torch.zeros(4, dtype=torch.float64)}, 0.2, **({"rank": None} | kw))
    _randomise(q, 3)
    draws = q.draw(torch.randn(50_000, 4, dtype=torch.float64))
    emp = torch.cov(draws.T)
    assert torch.allclose(draws.mean(0), q.loc, atol=0.02)
    assert torch.allclose(emp, q.covariance(), atol=0.04 * float(q.covariance().abs().max()))


def test_bnn_predict_keeps_the_correlations():
    """predict must draw through the posterior: two perfectly correlated weights stay equal."""
    net = torch.nn.Linear(2, 1, bias=False).double()
    bnn = bayesian(net, num_data=10, likelihood="normal", guide="full")
    with torch.no_grad():  # L = [[1, 0], [1, 1e-6]]: w1 = w0 + 1e-6 * noise
        bnn.posterior.loc.zero_()
        bnn.posterior.log_scale.copy_(torch.tensor([0.0, math.log(1e-6)]))
        bnn.posterior.relative_tril[1, 0] = 1e6
    out = bnn.predict(torch.tensor([[1.0, -1.0]], dtype=torch.float64), num_samples=500).mean
    assert float(out.abs().max()) < 1e-4
    assert torch.allclose(bnn.posterior_scale()["weight"], torch.ones(1, 2, dtype=torch.float64))


@pytest.mark.parametrize("guide", ["lowrank", "full"])
def test_pyro_programs_carry_the_posterior_density(guide):
    """One guide draw replayed in bnn.model: the trace's ELBO is log p(y|w) + log p(w) - log q(w)."""
    sel = select.all() if guide == "lowrank" else select.last_layer()
    kw = {"rank": 3} if guide == "lowrank" else {}
    bnn = bayesian(_net(), num_data=8, guide=guide, select=sel, init_scale=0.3, **kw)
    _randomise(bnn.posterior, 1)
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    guide_tr = poutine.trace(bnn.guide).get_trace(x, y)
    model_tr = poutine.trace(poutine.replay(bnn.model, trace=guide_tr)).get_trace(x, y)
    w = guide_tr.nodes["_posterior"]["value"]
    loglik = -8 * torch.nn.functional.cross_entropy(bnn._outputs(w, x)[0], y)
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(w).sum()
    expected = loglik + prior - bnn.posterior.distribution().log_prob(w)
    assert torch.allclose(model_tr.log_prob_sum() - guide_tr.log_prob_sum(), expected)
    # the per-parameter Delta sites hold exactly the joint draw
    assert torch.equal(guide_tr.nodes[bnn.random_names[0]]["value"].reshape(-1), w[: bnn.posterior.sizes[0]])


def test_training_reduces_the_loss_and_the_factor_learns():
    torch.manual_seed(0)
    x = torch.randn(128, 3, dtype=torch.float64)
    y = (x[:, 0] > 0).long()
    bnn = bayesian(_net(), num_data=128, guide="lowrank", rank=2, init_scale=1e-2)
    opt = torch.optim.Adam(bnn.parameters(), lr=1e-2)
    first = float(bnn.loss(x, y))
    for _ in range(100):
        opt.zero_grad()
        bnn.loss(x, y, num_particles=2).backward()
        opt.step()
    assert float(bnn.loss(x, y)) < first
    assert float(bnn.posterior.relative_factor.abs().max()) > 0.0
    probs = bnn.predict(x, num_samples=16)
    assert probs.shape == (16, 128, 2) and float((probs.mean(0).argmax(-1) == y).double().mean()) > 0.9


def test_non_analytic_prior_uses_the_exact_entropy():
    """A scale-mixture prior: KL = -H[q] - E log p; -H from the low-rank formula equals torch's entropy."""
    q = LowRankNormal({"w": torch.zeros(6, dtype=torch.float64)}, 0.2, rank=2)
    _randomise(q, 5)
    const = -0.5 * 6 * math.log(2 * math.pi * math.e)
    _, neg_entropy = q.sample_kl(
        torch.zeros(6, dtype=torch.float64), None, torch.zeros(6, dtype=torch.float64), const
    )
    assert torch.allclose(-neg_entropy, MultivariateNormal(q.loc, q.covariance()).entropy())
    bnn = bayesian(_net(), num_data=4, guide="lowrank", prior=priors.ScaleMixtureNormal())
    assert torch.isfinite(bnn.loss(torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 0, 1])))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="guide must be one of"):
        bayesian(_net(), num_data=4, guide="diagonal")
    with pytest.raises(ValueError, match="rank= applies to guide='lowrank'"):
        bayesian(_net(), num_data=4, rank=3)
    with pytest.raises(ValueError, match="rank must be an integer in"):
        bayesian(_net(), num_data=4, guide="lowrank", rank=0)
    big = torch.nn.Linear(100, 50)
    with pytest.raises(ValueError, match=f"at most {MAX_FULL_PARAMS}"):
        bayesian(big, num_data=4, guide="full")
