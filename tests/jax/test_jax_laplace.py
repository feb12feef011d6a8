"""uncertlr.jax.LastLayerLaplace: the torch class's posterior on the same weights (flax.linen, flax.nnx, Equinox),
Bayesian linear regression in closed form, the exact Hessian by autodiff, sampling, errors."""

from __future__ import annotations

import pickle

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_jax_density import NETS, X_NEW, X, Y, _torch

from uncertlr import metrics
from uncertlr.jax import LastLayerLaplace
from uncertlr.likelihoods import NormalPrediction
from uncertlr.torch import LastLayerLaplace as TorchLastLayerLaplace


@pytest.mark.parametrize("kind", list(NETS))
def test_the_posterior_equals_the_torch_one_on_the_same_weights(kind):
    kwargs, names = NETS[kind]()
    mine = LastLayerLaplace(**kwargs).fit(X, Y, batch_size=64)  # several batches
    ref = TorchLastLayerLaplace(_torch()).fit(torch.from_numpy(X), torch.from_numpy(Y))
    assert mine.layer_name == names[-1] and mine.num_params == ref.num_params == 3 * 7
    assert mine.prior_precision == pytest.approx(ref.prior_precision, rel=1e-6)
    for d in (0.01, 1.0, 300.0):
        assert mine.log_marginal_likelihood(d) == pytest.approx(ref.log_marginal_likelihood(d), rel=1e-7)
    np.testing.assert_allclose(mine.posterior_covariance(), ref.posterior_covariance().numpy(), atol=1e-7)
    ref_sd = ref.posterior_scale()
    sd = mine.posterior_scale()
    head = names[-1]
    w = sd[f"{head}.weight"] if f"{head}.weight" in sd else sd[f"{head}.kernel"].T  # Flax kernels are [D, C]
    np.testing.assert_allclose(w, ref_sd["4.weight"].numpy(), rtol=1e-5)
    np.testing.assert_allclose(sd[f"{head}.bias"], ref_sd["4.bias"].numpy(), rtol=1e-5)
    # the draws: a posterior predictive of the usual shape that every metric takes
    p = mine.predict(X_NEW, num_samples=16, rng_key=0)
    assert p.shape == (16, 40, 3) and isinstance(p, jax.Array)
    np.testing.assert_allclose(np.asarray(p).sum(-1), 1.0, atol=1e-5)
    assert np.isfinite(metrics.mutual_information(np.asarray(p))).all()


def _linear(d: int, out: int, w: np.ndarray, b: np.ndarray, kind: str):
    if kind == "equinox":
        lin = eqx.nn.Linear(d, out, key=jax.random.key(0))
        return {"net": eqx.tree_at(lambda m: (m.weight, m.bias), lin, (jnp.asarray(w), jnp.asarray(b)))}
    return {"net": nn.Dense(out), "params": {"params": {"kernel": jnp.asarray(w.T), "bias": jnp.asarray(b)}}}


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    noise=st.floats(0.2, 2.0),
    delta=st.floats(0.05, 50.0),
    kind=st.sampled_from(["equinox", "flax.linen"]),
)
def test_a_gaussian_last_layer_is_bayesian_linear_regression(seed, noise, delta, kind):
    """One dense layer with a Gaussian likelihood: the posterior is Bayesian linear regression's, exactly."""
    rng = np.random.default_rng(seed)
    n, d = 40, 3
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = x.astype(np.float64) @ rng.normal(size=d) + noise * rng.normal(size=n)
    xt = np.concatenate([x.astype(np.float64), np.ones((n, 1))], 1)
    precision = xt.T @ xt / noise**2 + delta * np.eye(d + 1)
    mean = np.linalg.solve(precision, xt.T @ y / noise**2)
    kwargs = _linear(d, 1, mean[None, :d].astype(np.float32), mean[d:].astype(np.float32), kind)
    la = LastLayerLaplace(**kwargs, likelihood="normal", noise_scale=noise).fit(x, y, prior_precision=delta)
    np.testing.assert_allclose(la.posterior_covariance(), np.linalg.inv(precision), rtol=1e-6, atol=1e-9)
    # near the exact MAP (float32 weights) the Laplace evidence is the exact evidence N(y | 0, σ² I + X Xᵀ / δ)
    k = noise**2 * np.eye(n) + xt @ xt.T / delta
    _, logdet = np.linalg.slogdet(2 * np.pi * k)
    exact = -0.5 * (logdet + y @ np.linalg.solve(k, y))
    assert la.log_marginal_likelihood() == pytest.approx(exact, rel=1e-4, abs=1e-3)
    pred = la.predict(x[:5], num_samples=3, rng_key=1)
    assert isinstance(pred, NormalPrediction) and pred.mean.shape == (3, 5, 1)
    np.testing.assert_allclose(np.asarray(pred.variance), noise**2, rtol=1e-6)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), classes=st.integers(2, 5))
def test_the_categorical_ggn_is_the_exact_hessian_of_the_last_layer(seed, classes):
    """H against jax.hessian of the training NLL in the last layer's [W | b] (independent of the code's formula)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    y = rng.integers(0, classes, 30)
    w = (rng.normal(size=(classes, 4)) / 2).astype(np.float32)
    b = (rng.normal(size=classes) / 2).astype(np.float32)
    delta = 0.7
    la = LastLayerLaplace(**_linear(4, classes, w, b, "equinox")).fit(
        x, y, prior_precision=delta, batch_size=7
    )
    xt = np.concatenate([x.astype(np.float64), np.ones((30, 1))], 1)

    def nll(theta):
        logits = jnp.asarray(xt) @ theta.reshape(classes, 5).T
        return -jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(30), y])

    with jax.enable_x64(True):
        theta = jnp.asarray(np.concatenate([w, b[:, None]], 1).reshape(-1), dtype=jnp.float64)
        hess = np.asarray(jax.hessian(nll)(theta))
    precision = hess + delta * np.eye(5 * classes)
    # (the network computes its logits in float32, the Hessian here in float64)
    np.testing.assert_allclose(np.linalg.inv(la.posterior_covariance()), precision, rtol=1e-5, atol=1e-6)


def test_predict_samples_the_posterior():
    """The draws' outputs for one input have the covariance φ̃ᵀ Σ φ̃ and mean at the trained outputs."""
    kwargs, _ = NETS["equinox"]()
    la = LastLayerLaplace(**kwargs).fit(X, Y, prior_precision=5.0)
    out = np.asarray(la.sample_outputs(X_NEW[:1], num_samples=20_000, rng_key=jax.random.key(3)), np.float64)[
        :, 0
    ]
    phi = np.concatenate([la._density.features(X_NEW[:1])[0][0], [1.0]])
    cov = la.posterior_covariance().reshape(3, 7, 3, 7)
    want = np.einsum("d,adbe,e->ab", phi, cov, phi)
    np.testing.assert_allclose(np.cov(out.T), want, rtol=0.06, atol=1e-4)
    logits = np.asarray(jax.vmap(kwargs["net"])(jnp.asarray(X_NEW[:1])))[0]
    np.testing.assert_allclose(out.mean(0), logits, atol=4 * np.sqrt(np.diag(want).max() / 20_000) + 1e-5)


def test_keys_seed_and_pickle():
    kwargs, _ = NETS["flax.linen"]()
    la = LastLayerLaplace(**kwargs, seed=7).fit(X, Y)
    a = np.asarray(la.predict(X_NEW, num_samples=4, rng_key=1))
    np.testing.assert_array_equal(a, np.asarray(la.predict(X_NEW, num_samples=4, rng_key=jax.random.key(1))))
    first, second = (np.asarray(la.predict(X_NEW, num_samples=4)) for _ in range(2))
    assert not np.array_equal(first, second)  # each call without a key draws afresh
    again = LastLayerLaplace(**kwargs, seed=7).fit(X, Y)
    np.testing.assert_array_equal(first, np.asarray(again.predict(X_NEW, num_samples=4)))  # ... from the seed
    copy = pickle.loads(pickle.dumps(la))
    np.testing.assert_array_equal(a, np.asarray(copy.predict(X_NEW, num_samples=4, rng_key=1)))
    assert copy.prior_precision == la.prior_precision


def test_errors_name_the_problem():
    kwargs, names = NETS["equinox"]()
    with pytest.raises(RuntimeError, match="fit"):
        LastLayerLaplace(**kwargs).predict(X)
    with pytest.raises(ValueError, match="prior_precision"):
        LastLayerLaplace(**kwargs).fit(X, Y, prior_precision=-1.0)
    with pytest.raises(ValueError, match="same number of rows"):
        LastLayerLaplace(**kwargs).fit(X, Y[:-1])
    with pytest.raises(ValueError, match="label"):
        LastLayerLaplace(**kwargs).fit(X, Y + 5)
    with pytest.raises(ValueError, match="NaN or inf"):
        LastLayerLaplace(**kwargs).fit(np.full_like(X, np.nan), Y)
    with pytest.raises(ValueError, match="noise_scale"):
        LastLayerLaplace(**kwargs, likelihood="normal", noise_scale=0.0)
    with pytest.raises(ValueError, match="likelihood"):
        LastLayerLaplace(**kwargs, likelihood="poisson")
    with pytest.raises(TypeError, match="flax.linen or flax.nnx module or an Equinox module"):
        LastLayerLaplace(lambda x: x)
    # a hidden layer named as the last layer: the network's output is not its output
    with pytest.raises(ValueError, match="must be the output of layer 'layers.1'"):
        LastLayerLaplace(**kwargs, last_layer="layers.1").fit(X, Y)

    class Softmaxed(eqx.Module):
        inner: eqx.Module

        def __call__(self, x):
            return jax.nn.softmax(self.inner(x))

    with pytest.raises(ValueError, match="output of its last dense layer"):
        LastLayerLaplace(Softmaxed(kwargs["net"])).fit(X, Y)
    big = eqx.nn.Linear(700, 12, key=jax.random.key(0))  # 12 x 701 > MAX_PARAMS
    with pytest.raises(ValueError, match="at most 8192"):
        LastLayerLaplace(big).fit(np.zeros((4, 700), np.float32), np.arange(4))
