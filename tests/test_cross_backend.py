"""The Bayesian math is written once: torch and JAX compute the same ELBO as ``uncertlr.priors``
and ``uncertlr.likelihoods`` on the same numbers, and both ``bayesian()`` accept and refuse the
same arguments (one shared validation, ``uncertlr._spec``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats

from uncertlr import likelihoods, priors
from uncertlr.torch import bayesian as torch_bayesian

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
from uncertlr.jax import bayesian as jax_bayesian  # noqa: E402

IN, OUT, N = 3, 4, 200


def _linear(p, x):  # the JAX twin of torch.nn.Linear: weight [out, in], bias [out]
    return x @ p["weight"].T + p["bias"]


def _pair(seed: int, *, prior, likelihood="categorical", kl_weight=0.5, scale_range=(0.05, 0.6)):
    """A torch and a JAX BNN of the same linear layer, with the same posterior means and stds."""
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=(OUT, IN)), rng.normal(size=OUT)
    sw, sb = rng.uniform(*scale_range, (OUT, IN)), rng.uniform(*scale_range, OUT)
    out = 1 if likelihood != "categorical" else OUT
    w, b, sw, sb = w[:out], b[:out], sw[:out], sb[:out]
    net = torch.nn.Linear(IN, out).double()
    with torch.no_grad():
        net.weight.copy_(torch.from_numpy(w))
        net.bias.copy_(torch.from_numpy(b))
    tb = torch_bayesian(net, num_data=N, prior=prior, likelihood=likelihood, kl_weight=kl_weight)
    with torch.no_grad():
        tb.posterior.log_scale.copy_(torch.from_numpy(np.log(np.concatenate([sw.ravel(), sb]))))
    params = {"weight": jnp.asarray(w), "bias": jnp.asarray(b)}
    jb = jax_bayesian(
        _linear, params=params, num_data=N, prior=prior, likelihood=likelihood, kl_weight=kl_weight
    )
    jparams = {
        "weight_loc": jnp.asarray(w),
        "bias_loc": jnp.asarray(b),
        "weight_scale": jnp.asarray(sw),
        "bias_scale": jnp.asarray(sb),
    }
    return tb, jb, jparams, (w, b, sw, sb)


@pytest.fixture(autouse=True)
def _x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**16), scale=st.floats(0.1, 3.0), loc=st.floats(-1.0, 1.0), centered=st.booleans()
)
def test_torch_and_jax_kl_equal_priors_normal_kl(seed, scale, loc, centered):
    prior = priors.Normal(scale=scale, loc=loc, centered=centered)
    tb, jb, jparams, (w, b, sw, sb) = _pair(seed, prior=prior)
    x = torch.randn(8, IN, dtype=torch.float64)
    y = torch.randint(0, OUT, (8,))
    t = tb.elbo(x, y)
    j = jb.elbo(jparams, 0, jnp.asarray(x.numpy()), jnp.asarray(y.numpy()))
    p_loc = np.concatenate([w.ravel(), b]) if centered else loc
    expected = float(
        priors.normal_kl(np.concatenate([w.ravel(), b]), np.concatenate([sw.ravel(), sb]), p_loc, scale).sum()
    )
    # the independent closed form, written out with scipy's Normal entropies
    q = stats.norm(np.concatenate([w.ravel(), b]), np.concatenate([sw.ravel(), sb]))
    cross = -stats.norm(p_loc, scale).logpdf(q.mean()) + (q.std() ** 2) / (2 * scale**2)
    assert expected == pytest.approx(float(np.sum(cross - q.entropy())), rel=1e-9)
    assert float(t.kl.detach()) == pytest.approx(expected, rel=1e-9)
    assert float(j.kl) == pytest.approx(expected, rel=1e-9)


def test_torch_and_jax_nll_and_loss_agree_at_the_posterior_mean():
    """With σ → 0 both ELBOs evaluate the mean network: the same NLL and loss as a numpy computation."""
    tb, jb, jparams, (w, b, _, _) = _pair(1, prior=priors.Normal(1.0), scale_range=(1e-9, 2e-9))
    x = np.random.default_rng(2).normal(size=(16, IN))
    y = np.random.default_rng(3).integers(0, OUT, 16)
    t = tb.elbo(torch.from_numpy(x), torch.from_numpy(y))
    j = jb.elbo(jparams, 0, jnp.asarray(x), jnp.asarray(y))
    logits = x @ w.T + b
    nll = -np.mean(special.log_softmax(logits, axis=1)[np.arange(16), y])
    assert float(t.nll.detach()) == pytest.approx(nll, rel=1e-6) and float(j.nll) == pytest.approx(
        nll, rel=1e-6
    )
    assert float(t.loss.detach()) == pytest.approx(float(j.loss), rel=1e-6)
    assert float(t.loss.detach()) == pytest.approx(
        float(t.nll.detach()) + 0.5 * float(t.kl.detach()) / N, rel=1e-12
    )


def test_gaussian_likelihood_and_mixture_prior_are_the_shared_functions():
    y, mean, s = np.array([0.3, -1.0]), np.array([0.0, 0.5]), 0.7
    np.testing.assert_allclose(likelihoods.normal_log_prob(y, mean, s), stats.norm(mean, s).logpdf(y))
    t = likelihoods.normal_log_prob(torch.tensor(y), torch.tensor(mean), torch.tensor(s, dtype=torch.float64))
    j = likelihoods.normal_log_prob(jnp.asarray(y), jnp.asarray(mean), jnp.asarray(s))
    np.testing.assert_allclose(t.numpy(), np.asarray(j), rtol=1e-12)
    mix = priors.ScaleMixtureNormal(pi=0.3, scale1=1.0, scale2=0.1)
    w = np.linspace(-2, 2, 9)
    dens = 0.3 * stats.norm(0, 1.0).pdf(w) + 0.7 * stats.norm(0, 0.1).pdf(w)
    np.testing.assert_allclose(mix.log_prob(w), np.log(dens), rtol=1e-10)
    np.testing.assert_allclose(
        mix.log_prob(torch.tensor(w)).numpy(), np.asarray(mix.log_prob(jnp.asarray(w))), rtol=1e-12
    )


def test_regression_elbo_agrees_across_backends():
    tb, jb, jparams, (w, b, _, _) = _pair(
        4, prior=priors.Normal(1.0), likelihood=likelihoods.Normal(scale=0.5), scale_range=(1e-9, 2e-9)
    )
    x = np.random.default_rng(5).normal(size=(10, IN))
    y = np.random.default_rng(6).normal(size=(10, 1))
    t = tb.elbo(torch.from_numpy(x), torch.from_numpy(y))
    j = jb.elbo(jparams, 0, jnp.asarray(x), jnp.asarray(y))
    nll = -np.mean(stats.norm(x @ w.T + b, 0.5).logpdf(y))
    assert float(t.nll.detach()) == pytest.approx(nll, rel=1e-6) and float(j.nll) == pytest.approx(
        nll, rel=1e-6
    )


_BAD_OR_GOOD = {
    "num_data": [1, 10, np.int64(10), 0, -1, 2.5, True, "10", None],
    "kl_weight": [1.0, 0.1, 2, np.float64(0.5), 0.0, -0.1, math.inf, math.nan, True, "1"],
    "init_scale": [1e-3, 1, np.float32(0.01), 0.0, -1.0, math.inf, math.nan, False],
    "validate": [True, False, 1, None],
    "prior": [None, priors.Normal(1.0), priors.FanInNormal(), priors.ScaleMixtureNormal(), "normal", 1.0],
    "likelihood": ["categorical", likelihoods.Categorical(), "gaussian", "poisson", 3],
}


def _outcome(fn):
    try:
        fn()
    except (TypeError, ValueError) as exc:
        return type(exc).__name__, str(exc)
    return "ok", ""


@pytest.mark.parametrize("arg", sorted(_BAD_OR_GOOD))
def test_both_bayesian_functions_accept_and_refuse_the_same_arguments(arg):
    params = {"weight": jnp.zeros((OUT, IN)), "bias": jnp.zeros(OUT)}
    seen = set()
    for value in _BAD_OR_GOOD[arg]:
        kw = {"num_data": 10, arg: value}
        t = _outcome(lambda kw=kw: torch_bayesian(torch.nn.Linear(IN, OUT), **kw))
        j = _outcome(lambda kw=kw: jax_bayesian(_linear, params=params, **kw))
        assert t == j, (arg, value, t, j)
        seen.add(t[0])
    assert "ok" in seen and len(seen) > 1, (arg, seen)  # each list holds good and bad values
