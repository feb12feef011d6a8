"""uncertlr.jax.mc_dropout: draws whose mean and covariance are dropout's in closed form (flax.linen, flax.nnx,
Equinox), per-input masks, keys, the user's network left alone, errors."""

from __future__ import annotations

import pickle

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from uncertlr.jax import MCDropout, mc_dropout
from uncertlr.likelihoods import NormalPrediction

RATE = 0.3
RNG = np.random.default_rng(0)
W1, B1 = (RNG.normal(size=(5, 8)) / 2).astype(np.float32), (RNG.normal(size=8) / 4).astype(np.float32)
W2, B2 = (RNG.normal(size=(8, 3)) / 2).astype(np.float32), (RNG.normal(size=3) / 4).astype(np.float32)
X = RNG.normal(size=(6, 5)).astype(np.float32)


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Dense(8)(x))
        return nn.Dense(3)(nn.Dropout(RATE, deterministic=True)(h))  # off as built: mc_dropout turns it on


class NnxNet(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(0)
        self.a, self.b = nnx.Linear(5, 8, rngs=rngs), nnx.Linear(8, 3, rngs=rngs)
        self.a.kernel, self.a.bias = nnx.Param(jnp.asarray(W1)), nnx.Param(jnp.asarray(B1))
        self.b.kernel, self.b.bias = nnx.Param(jnp.asarray(W2)), nnx.Param(jnp.asarray(B2))
        self.drop = nnx.Dropout(RATE, rngs=rngs)

    def __call__(self, x):
        return self.b(self.drop(jnp.tanh(self.a(x))))


def _tanh(x):  # (a module-level function pickles; jnp.tanh does not)
    return jnp.tanh(x)


def _linen():
    params = {"params": {"Dense_0": {"kernel": W1, "bias": B1}, "Dense_1": {"kernel": W2, "bias": B2}}}
    return mc_dropout(LinenNet(), params=jax.tree.map(jnp.asarray, params))


def _nnx():
    return mc_dropout(NnxNet())


def _equinox():
    k = jax.random.split(jax.random.key(0))
    net = eqx.nn.Sequential(
        [
            eqx.nn.Linear(5, 8, key=k[0]),
            eqx.nn.Lambda(_tanh),
            eqx.nn.Dropout(RATE),
            eqx.nn.Linear(8, 3, key=k[1]),
        ]
    )
    net = eqx.tree_at(
        lambda m: (m.layers[0].weight, m.layers[0].bias, m.layers[3].weight, m.layers[3].bias),
        net,
        (jnp.asarray(W1.T), jnp.asarray(B1), jnp.asarray(W2.T), jnp.asarray(B2)),
    )
    return mc_dropout(net)


MODELS = {"flax.linen": _linen, "flax.nnx": _nnx, "equinox": _equinox}


@pytest.mark.parametrize("kind", list(MODELS))
def test_draws_have_dropouts_mean_and_covariance_in_closed_form(kind):
    """out = (h ⊙ m / keep) W2 + b2, m ~ Bernoulli(keep): mean h W2 + b2, cov W2ᵀ diag(h² rate / keep) W2."""
    model = MODELS[kind]()
    s = 6000
    out = np.asarray(model.sample_outputs(X[:2], num_samples=s, rng_key=0), np.float64)  # [S, 2, 3]
    h = np.tanh(X[:2].astype(np.float64) @ W1 + B1)
    for i in range(2):
        mean = h[i] @ W2 + B2
        cov = W2.T.astype(np.float64) @ np.diag(h[i] ** 2 * RATE / (1 - RATE)) @ W2
        se = np.sqrt(np.diag(cov) / s)
        np.testing.assert_allclose(out[:, i].mean(0), mean, atol=5 * se.max())
        np.testing.assert_allclose(np.cov(out[:, i].T), cov, rtol=0.1, atol=0.02 * np.abs(cov).max())


@pytest.mark.parametrize("kind", list(MODELS))
def test_each_input_gets_its_own_mask_and_keys_fix_the_draws(kind):
    model = MODELS[kind]()
    twins = np.repeat(X[:1], 2, axis=0)
    out = np.asarray(model.sample_outputs(twins, num_samples=20, rng_key=3))
    assert not np.allclose(out[:, 0], out[:, 1])  # the same input twice in a batch: other masks
    np.testing.assert_array_equal(out, np.asarray(model.sample_outputs(twins, num_samples=20, rng_key=3)))
    a, b = (np.asarray(model.predict(X, num_samples=4)) for _ in range(2))
    assert a.shape == (4, 6, 3) and not np.array_equal(a, b)  # without a key, each call draws afresh
    np.testing.assert_array_equal(
        a, np.asarray(MODELS[kind]().predict(X, num_samples=4))
    )  # ... from the seed
    copy = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(
        np.asarray(copy.predict(X, num_samples=4, rng_key=1)),
        np.asarray(model.predict(X, num_samples=4, rng_key=1)),
    )
    chunked = np.asarray(model.predict(X, num_samples=4, rng_key=1, batch_size=4))  # two batches
    assert chunked.shape == (4, 6, 3) and np.allclose(chunked.sum(-1), 1.0, atol=1e-5)


def test_the_users_network_is_left_as_it_was():
    net = NnxNet()
    before = np.asarray(net(X))
    net.eval()
    evaluated = np.asarray(net(X))
    net.train()
    mc_dropout(net).predict(X, num_samples=3)
    assert type(net.drop) is nnx.Dropout and net.drop.deterministic is False
    net.eval()
    np.testing.assert_array_equal(np.asarray(net(X)), evaluated)  # weights untouched
    assert not np.array_equal(before, evaluated)  # (dropout was on in train mode)


def test_regression_gets_its_noise_variance():
    model = MCDropout(_equinox()._net, likelihood="normal", noise_scale=0.5)
    pred = model.predict(X, num_samples=5, rng_key=0)
    assert isinstance(pred, NormalPrediction) and pred.mean.shape == (5, 6, 3)
    np.testing.assert_allclose(np.asarray(pred.variance), 0.25)


def test_errors_name_the_problem():
    no_dropout = eqx.nn.Linear(5, 3, key=jax.random.key(0))
    with pytest.raises(ValueError, match="calls no dropout layer"):
        mc_dropout(no_dropout).predict(X)
    with pytest.raises(ValueError, match="cannot be changed from outside"):
        mc_dropout(no_dropout, p=0.1)
    with pytest.raises(ValueError, match="params="):
        mc_dropout(LinenNet())
    with pytest.raises(ValueError, match="do not pass params="):
        mc_dropout(no_dropout, params={})
    with pytest.raises(ValueError, match="noise_scale"):
        mc_dropout(no_dropout, likelihood="normal")
    with pytest.raises(TypeError, match="Equinox module"):
        mc_dropout(lambda x: x)
    with pytest.raises(ValueError, match="NaN or inf"):
        _equinox().predict(np.full_like(X, np.nan))
    with pytest.raises(ValueError, match="num_samples"):
        _equinox().predict(X, num_samples=0)
