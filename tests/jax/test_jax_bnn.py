"""uncertlr.jax.bayesian: wrapping Flax/Equinox/plain networks, the NumPyro programs, the ELBO."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
import torch
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from numpyro import handlers
from numpyro.infer import TraceMeanField_ELBO

from uncertlr import likelihoods, metrics, priors, select
from uncertlr.jax import ELBOTerms, NormalPrediction, bayesian, mcmc, svi
from uncertlr_models.eqx_mlp import EqxMLP
from uncertlr_models.flax_mlp import FlaxMLP

KEY = jax.random.key(0)
X = jax.random.normal(KEY, (12, 5))
Y = jnp.arange(12) % 3


class NnxMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(5, 4, rngs=rngs)
        self.out = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


def _flax():
    net = FlaxMLP(hidden=(4,), out_features=3, activation="tanh")
    variables = net.init(KEY, X)
    return net, variables, lambda x: net.apply(variables, x)


def _nnx():
    net = NnxMLP(nnx.Rngs(0))
    return net, None, net


def _eqx():
    net = EqxMLP(5, (4,), 3, activation="tanh", key=KEY)
    return net, None, jax.vmap(net)


NETS = {"flax.linen": _flax, "flax.nnx": _nnx, "equinox": _eqx}


@pytest.mark.parametrize("kind", list(NETS))
def test_wrapped_network_reproduces_the_original(kind):
    net, params, reference = NETS[kind]()
    bnn = bayesian(net, params=params, num_data=12)
    assert bnn.network.kind == kind
    out = bnn.apply(bnn.initial_values(), X)
    np.testing.assert_allclose(np.asarray(out), np.asarray(reference(X)), rtol=1e-6, atol=1e-6)
    assert bnn.num_params == 5 * 4 + 4 + 4 * 3 + 3


@pytest.mark.parametrize("kind", list(NETS))
def test_fan_in_and_last_layer_follow_each_frameworks_layout(kind):
    net, params, _ = NETS[kind]()
    bnn = bayesian(net, params=params, num_data=12, select=select.last_layer(), prior=priors.FanInNormal())
    assert len(bnn.random_names) == 2 and len(bnn.fixed_names) == 2
    # the output layer has fan-in 4 (its input width) for its weight and its bias, whatever the layout
    assert sorted(bnn.network.fan_in[n] for n in bnn.random_names) == [4, 4]
    assert all(bnn.prior_scale[n] == pytest.approx(0.5) for n in bnn.random_names)  # FanInNormal: 1/sqrt(4)
    # the default prior is N(0, 1), as on the torch side
    assert set(bayesian(net, params=params, num_data=12).prior_scale.values()) == {1.0}


@pytest.mark.parametrize("kind", list(NETS))
def test_flax_and_equinox_modules_wrap_and_sample(kind):
    net, params, _ = NETS[kind]()
    bnn = bayesian(net, params=params, num_data=12, select=select.last_layer())
    res = mcmc(bnn, X, Y, num_warmup=30, num_samples=20, progress=False)
    assert set(res.samples) == set(bnn.random_names)
    probs = res.predict(X, num_samples=10)
    assert probs.shape == (10, 12, 3)
    np.testing.assert_allclose(np.asarray(probs.sum(-1)), 1.0, rtol=1e-5)
    # the draws differ from each other: the posterior is not a point mass
    assert float(metrics.mutual_information(probs).mean()) > 0


def test_plain_function_with_a_pytree_and_constants():
    params = {"w": jnp.ones((5, 3)), "b": jnp.zeros(3), "steps": jnp.array(3)}  # an int leaf stays constant
    bnn = bayesian(lambda p, x: x @ p["w"] * p["steps"] + p["b"], params=params, num_data=12)
    assert bnn.random_names == ["w", "b"]
    np.testing.assert_allclose(
        np.asarray(bnn.apply(bnn.initial_values(), X)),
        np.asarray(3 * X.sum(1, keepdims=True).repeat(3, 1)),
        rtol=1e-6,
    )


def test_user_parameters_are_never_modified():
    net, variables, _ = _flax()
    before = jax.tree_util.tree_map(np.array, variables)
    bnn = bayesian(net, params=variables, num_data=12)
    svi(bnn, X, Y, optimizer=__import__("optax").adam(0.1), num_steps=5, progress=False)
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, jax.tree_util.tree_map(np.array, variables))


def test_model_and_guide_sites():
    net, variables, _ = _flax()
    bnn = bayesian(net, params=variables, num_data=100, select=select.last_layer())
    tr = handlers.trace(handlers.seed(bnn.model, 0)).get_trace(X, Y)
    sample_sites = {k for k, s in tr.items() if s["type"] == "sample"}
    param_sites = {k for k, s in tr.items() if s["type"] == "param"}
    assert sample_sites == {*bnn.random_names, "obs"}
    assert param_sites == set(bnn.fixed_names)
    # minibatch: the plate scales the 12-row likelihood up to num_data=100
    assert tr["obs"]["scale"] == pytest.approx(100 / 12)


@pytest.mark.parametrize(
    "prior",
    [
        priors.Normal(0.7),
        priors.FanInNormal(),
        priors.Normal(0.5, centered=True),
        priors.ScaleMixtureNormal(),
    ],
    ids=["normal", "fanin", "centered", "mixture"],
)
def test_meanfield_loss_equals_numpyro_trace_meanfield_elbo(prior):
    """bnn.elbo is NumPyro's TraceMeanField_ELBO / N (many particles: both are unbiased; the KL is analytic,
    or for the mixture an exact entropy plus a Monte Carlo cross-entropy)."""
    net, variables, _ = _flax()
    bnn = bayesian(net, params=variables, num_data=40, prior=prior, init_scale=0.05)
    params = {}
    for n in bnn.random_names:
        params[f"{n}_loc"] = bnn.network.values[n] + 0.1
        params[f"{n}_scale"] = jnp.full(bnn.shapes[n], 0.05)
    # both jitted: the same numbers as eager, in a fifth of the time
    terms = jax.jit(lambda p, k: bnn.elbo(p, k, X, Y, num_particles=4000))(params, jax.random.key(1))
    assert isinstance(terms, ELBOTerms) and terms.outputs.shape == (4000, 12, 3)
    ours = float(terms.loss)
    elbo = TraceMeanField_ELBO(num_particles=4000)
    ref = float(jax.jit(lambda p, k: elbo.loss(k, p, bnn.model, bnn.guide, X, Y))(params, jax.random.key(2)))
    assert ours == pytest.approx(ref / 40, rel=2e-3)


def test_elbo_is_jittable_and_splits_into_its_terms():
    """bnn.elbo under jit gives the eager numbers, and loss = nll + kl_weight * kl / num_data."""
    bnn = bayesian(
        lambda p, x: x @ p["w"] + p["b"],
        params={"w": jnp.zeros((5, 2)), "b": jnp.zeros(2)},
        num_data=30,
        kl_weight=0.5,
        likelihood=likelihoods.Normal(),
    )
    params = {"w_loc": jnp.ones((5, 2)), "w_scale": jnp.full((5, 2), 0.1), "b_loc": jnp.zeros(2)}
    params |= {"b_scale": jnp.full(2, 0.2), "noise_scale": jnp.asarray(0.5)}
    y = jnp.zeros((12, 2))
    eager = bnn.elbo(params, 3, X, y, num_particles=2)
    jitted = jax.jit(bnn.elbo, static_argnames="num_particles")(
        params, jax.random.key(3), X, y, num_particles=2
    )
    for a, b in zip(eager, jitted):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert eager.outputs.shape == (2, 12, 2)
    assert float(eager.loss) == pytest.approx(float(eager.nll + 0.5 * eager.kl / 30), rel=1e-6)


@settings(max_examples=15)
@given(
    loc=st.floats(-2, 2),
    scale=st.floats(0.05, 2),
    p_loc=st.floats(-1, 1),
    p_scale=st.floats(0.2, 3),
)
def test_meanfield_kl_term_matches_numpyro_kl_divergence(loc, scale, p_loc, p_scale):
    """The KL part of the loss (kl_weight=1, a 1x1 weight) against numpyro's kl_divergence."""
    bnn = bayesian(
        lambda p, x: x @ p["w"],
        params={"w": jnp.full((1, 1), p_loc)},
        num_data=1,
        prior=priors.Normal(p_scale, centered=True),
        likelihood=likelihoods.Normal(scale=1.0),
    )
    params = {"w_loc": jnp.full((1, 1), loc), "w_scale": jnp.full((1, 1), scale)}
    kl = float(bnn.elbo(params, KEY, jnp.ones((1, 1)), jnp.ones((1, 1))).kl)
    ref = float(dist.kl_divergence(dist.Normal(loc, scale), dist.Normal(p_loc, p_scale)))
    assert kl == pytest.approx(ref, rel=1e-4, abs=1e-6)


def test_predictions_match_the_torch_backend():
    """Same weights, a near-point-mass posterior: both backends give the same [S, N, C] probabilities."""
    torch.manual_seed(0)
    from uncertlr.torch import bayesian as torch_bayesian

    lin = torch.nn.Linear(5, 3)
    tbnn = torch_bayesian(lin, num_data=12, init_scale=1e-6)
    xt = torch.from_numpy(np.array(X))
    t_probs = tbnn.predict(xt, num_samples=4).detach().numpy()
    w, b = lin.weight.detach().numpy(), lin.bias.detach().numpy()
    jbnn = bayesian(
        lambda p, x: x @ p["w"] + p["b"],
        params={"w": jnp.asarray(w.T), "b": jnp.asarray(b)},
        num_data=12,
        init_scale=1e-6,
    )
    j_probs = np.asarray(
        svi(jbnn, X, Y, optimizer=__import__("optax").sgd(0.0), num_steps=0, progress=False).predict(
            X, num_samples=4
        )
    )
    assert j_probs.shape == t_probs.shape == (4, 12, 3)
    np.testing.assert_allclose(j_probs, t_probs, atol=1e-4)
    # same metrics, unchanged, on both
    for fn in (metrics.predictive_entropy, metrics.expected_entropy):
        np.testing.assert_allclose(np.asarray(fn(jnp.asarray(j_probs))), fn(t_probs), atol=1e-4)
    # regression: NormalPrediction(mean, variance = noise^2) on both sides
    tr = torch_bayesian(torch.nn.Linear(5, 1), num_data=12, likelihood=likelihoods.Normal(scale=0.3))
    t_pred = tr.predict(xt, num_samples=3)
    jr = bayesian(
        lambda p, x: x @ p["w"],
        params={"w": jnp.zeros((5, 1))},
        num_data=12,
        likelihood=likelihoods.Normal(scale=0.3),
    )
    j_pred = svi(
        jr, X, jnp.zeros((12, 1)), optimizer=__import__("optax").sgd(0.0), num_steps=0, progress=False
    ).predict(X, num_samples=3)
    assert isinstance(j_pred, NormalPrediction) and isinstance(t_pred, NormalPrediction)
    assert j_pred.mean.shape == tuple(t_pred.mean.shape) == (3, 12, 1)
    np.testing.assert_allclose(np.asarray(j_pred.variance), t_pred.variance.numpy(), rtol=1e-6)
    assert float(jnp.abs(j_pred.variance - 0.09).max()) < 1e-6


def test_metrics_work_unchanged_on_jax_outputs():
    net, variables, _ = _flax()
    bnn = bayesian(net, params=variables, num_data=12)
    res = svi(bnn, X, Y, optimizer=__import__("optax").adam(0.05), num_steps=30, progress=False)
    probs = res.predict(X, num_samples=8)
    assert isinstance(probs, jax.Array)
    ref = np.asarray(probs)
    for fn in (metrics.accuracy, metrics.nll, metrics.brier, metrics.ece):
        assert float(fn(probs, Y)) == pytest.approx(float(fn(ref, np.asarray(Y))), rel=1e-5, abs=1e-6)
    d = metrics.uncertainty_decomposition(probs)
    np.testing.assert_allclose(
        np.asarray(d.total), np.asarray(d.aleatoric + d.epistemic), rtol=1e-5, atol=1e-6
    )
    assert math.isfinite(float(metrics.mutual_information(probs).mean()))
    spread = res.posterior_spread()
    assert set(spread) == {"Dense_0", "Dense_1"}


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"num_data": 0}, ValueError, "num_data"),
        ({"num_data": 12, "kl_weight": 0.0}, ValueError, "kl_weight"),
        ({"num_data": 12, "init_scale": -1.0}, ValueError, "init_scale"),
        ({"num_data": 12, "likelihood": "poisson"}, ValueError, "likelihood"),
        ({"num_data": 12, "select": select.by_name("nothing_matches")}, ValueError, "chose none"),
        ({"num_data": 12, "prior": "normal"}, TypeError, "prior"),
    ],
)
def test_bad_bayesian_arguments_are_named(kwargs, err, match):
    net, variables, _ = _flax()
    with pytest.raises(err, match=match):
        bayesian(net, params=variables, **kwargs)


def test_bad_networks_are_named():
    net, variables, _ = _flax()
    with pytest.raises(ValueError, match="module.init"):
        bayesian(net, num_data=3)
    with pytest.raises(ValueError, match="needs its parameters"):
        bayesian(lambda p, x: x, num_data=3)
    with pytest.raises(TypeError, match="flax.linen or flax.nnx"):
        bayesian(42, num_data=3)
    with pytest.raises(ValueError, match="NaN or inf"):
        bayesian(lambda p, x: x @ p, params=jnp.array([[jnp.nan]]), num_data=3)
