"""uncertlr.jax.Ensemble and ensemble_spread: each member's own predictions (listed or stacked, flax.linen, flax.nnx,
Equinox), the torch Ensemble's on the same weights, BNN members, the spread against numpy, errors."""

from __future__ import annotations

import pickle

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from test_jax_density import NETS, X_NEW, X, Y, _torch

from uncertlr import metrics
from uncertlr.jax import Ensemble, bayesian, ensemble_spread, svi
from uncertlr.likelihoods import NormalPrediction
from uncertlr.torch import Ensemble as TorchEnsemble
from uncertlr.torch import PointNetwork

NET = nn.Sequential([nn.Dense(16), nn.tanh, nn.Dense(3)])
KEYS = jax.random.split(jax.random.key(0), 4)


def _softmax(a):
    a = np.asarray(a, np.float64)
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_linen_members_listed_or_stacked_give_each_members_own_softmax():
    members = [NET.init(k, X[:1]) for k in KEYS]
    want = np.stack([_softmax(NET.apply(v, X_NEW)) for v in members])
    listed = Ensemble(NET, params=members)
    got = np.asarray(listed.predict(X_NEW, batch_size=16))  # several batches
    assert listed.size == 4 and got.shape == (4, 40, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    stacked = jax.vmap(NET.init, in_axes=(0, None))(KEYS, X[:1])  # how a vmapped ensemble is made
    bare = Ensemble(NET, params=[v["params"] for v in members])  # a bare parameter tree is taken too
    np.testing.assert_allclose(np.asarray(bare.predict(X_NEW)), want, rtol=1e-5, atol=1e-6)
    # it pickles when the module does (nn.Sequential holds Dense layers whose initialisers are closures)
    kwargs, _ = NETS["flax.linen"]()
    ens = Ensemble(kwargs["net"], params=[kwargs["params"], jax.tree.map(lambda a: -a, kwargs["params"])])
    copy = pickle.loads(pickle.dumps(ens))
    np.testing.assert_array_equal(np.asarray(copy.predict(X_NEW)), np.asarray(ens.predict(X_NEW)))
    np.testing.assert_allclose(
        np.asarray(Ensemble(NET, params=stacked, stacked=True).predict(X_NEW)), want, atol=1e-6
    )
    # what every method's predictions feed: the members disagree, so the epistemic part is positive
    assert (np.asarray(metrics.mutual_information(got)) > 0).all()


def test_equinox_members_listed_or_stacked_and_run_without_dropout():
    def make(k):
        return eqx.nn.Sequential(
            [
                eqx.nn.Linear(5, 8, key=k),
                eqx.nn.Lambda(jnp.tanh),
                eqx.nn.Dropout(0.5),
                eqx.nn.Linear(8, 3, key=jax.random.fold_in(k, 1)),
            ]
        )

    members = [make(k) for k in KEYS]
    want = np.stack([_softmax(jax.vmap(eqx.nn.inference_mode(m))(X_NEW)) for m in members])
    got = np.asarray(Ensemble(members).predict(X_NEW))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # dropout off: the same every call
    stacked = eqx.filter_vmap(make)(KEYS)
    ens = Ensemble(stacked, stacked=True)
    assert ens.size == 4 and repr(ens) == "Ensemble(equinox, size=4, stacked)"
    np.testing.assert_allclose(np.asarray(ens.predict(X_NEW)), want, rtol=1e-5, atol=1e-6)


def test_nnx_members_are_read_in_eval_mode_and_left_alone():
    class Net(nnx.Module):
        def __init__(self, seed):
            rngs = nnx.Rngs(seed)
            self.a = nnx.Linear(5, 8, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)
            self.b = nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, x):
            return self.b(self.drop(jnp.tanh(self.a(x))))

    members = [Net(s) for s in range(3)]
    ens = Ensemble(members)
    first = np.asarray(ens.predict(X_NEW))
    np.testing.assert_array_equal(first, np.asarray(ens.predict(X_NEW)))  # deterministic: dropout off
    for m in members:
        assert m.drop.deterministic is False  # the user's modules keep training mode
        m.eval()
    want = np.stack([_softmax(m(X_NEW)) for m in members])
    np.testing.assert_allclose(first, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", list(NETS))
def test_equals_the_torch_ensemble_on_the_same_weights(kind):
    kwargs, _ = NETS[kind]()
    kwargs2, _ = NETS[kind]()  # a second member: the same architecture, other weights
    t1, t2 = _torch(), _torch()
    with torch.no_grad():
        for p in t2.parameters():
            p.mul_(-0.5)
    if kind == "flax.linen":
        v2 = jax.tree.map(lambda a: -0.5 * a, kwargs["params"])
        mine = Ensemble(kwargs["net"], params=[kwargs["params"], v2])
    elif kind == "flax.nnx":
        for _, p in nnx.iter_graph(kwargs2["net"]):
            if isinstance(p, nnx.Param):
                p.set_value(-0.5 * p.get_value())
        mine = Ensemble([kwargs["net"], kwargs2["net"]])
    else:
        m2 = jax.tree.map(lambda a: -0.5 * a if eqx.is_array(a) else a, kwargs["net"])
        mine = Ensemble([kwargs["net"], m2])
    ref = TorchEnsemble([PointNetwork(t1), PointNetwork(t2)])
    np.testing.assert_allclose(
        np.asarray(mine.predict(X_NEW)), ref.predict(torch.from_numpy(X_NEW)).numpy(), rtol=1e-5, atol=1e-6
    )


def test_regression_members_get_their_noise_variance():
    net = nn.Dense(2)
    members = [net.init(k, X[:1]) for k in KEYS[:3]]
    pred = Ensemble(net, params=members, likelihood="normal", noise_scale=[0.1, 0.2, 0.3]).predict(X_NEW)
    assert isinstance(pred, NormalPrediction) and pred.mean.shape == (3, 40, 2)
    np.testing.assert_allclose(np.asarray(pred.variance)[:, 0, 0], [0.01, 0.04, 0.09], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(pred.mean[1]), np.asarray(net.apply(members[1], X_NEW)), rtol=1e-6)


def test_an_ensemble_of_bnns_shares_the_draws_out():
    net = nn.Sequential([nn.Dense(8), nn.tanh, nn.Dense(3)])
    results = []
    for i in range(3):
        bnn = bayesian(net, params=net.init(jax.random.key(i), X[:1]), num_data=len(X))
        results.append(
            svi(
                bnn,
                X,
                Y.astype(np.int32),
                optimizer=optax.adam(1e-2),
                num_steps=20,
                progress=False,
                rng_key=i,
            )
        )
    ens = Ensemble(results)
    p = np.asarray(ens.predict(X_NEW, num_samples=8, rng_key=1))
    assert p.shape == (9, 40, 3)  # ceil(8 / 3) = 3 draws from each member
    np.testing.assert_array_equal(p, np.asarray(ens.predict(X_NEW, num_samples=8, rng_key=1)))
    keys = jax.random.split(jax.random.key(1), 3)
    np.testing.assert_allclose(
        p[3:6], np.asarray(results[1].predict(X_NEW, num_samples=3, rng_key=keys[1])), atol=1e-6
    )
    assert not np.array_equal(
        np.asarray(ens.predict(X_NEW, num_samples=8)), np.asarray(ens.predict(X_NEW, num_samples=8))
    )


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 6), shape=st.sampled_from([(3,), (2, 4), (1,)]))
def test_ensemble_spread_is_the_std_over_members(seed, k, shape):
    rng = np.random.default_rng(seed)
    tree = {"w": rng.normal(size=(k, *shape)).astype(np.float32), "inner": [rng.normal(size=(k, 2))]}
    spread = ensemble_spread(jax.tree.map(jnp.asarray, tree))
    for got, a in ((spread["w"], tree["w"]), (spread["inner"][0], tree["inner"][0])):
        assert got.shape == a.shape
        np.testing.assert_allclose(
            np.asarray(got), np.broadcast_to(a.std(0, ddof=1), a.shape), rtol=1e-5, atol=1e-6
        )
    # it is the torch ensemble's σ for the same members
    lin = [torch.nn.Linear(3, 2) for _ in range(k)]
    ref = TorchEnsemble([PointNetwork(m) for m in lin]).parameter_scale()
    stacked = jnp.stack([jnp.asarray(m.weight.detach().numpy()) for m in lin])
    np.testing.assert_allclose(np.asarray(ensemble_spread(stacked))[0], ref[lin[0].weight].numpy(), rtol=1e-5)


def test_errors_name_the_problem():
    members = [NET.init(k, X[:1]) for k in KEYS[:2]]
    with pytest.raises(ValueError, match="at least 2"):
        Ensemble(NET, params=members[:1])
    with pytest.raises(ValueError, match="params="):
        Ensemble(NET)
    with pytest.raises(TypeError, match="params=\\[variables"):
        Ensemble([NET, NET])
    with pytest.raises(TypeError, match="all of one kind"):
        Ensemble([eqx.nn.Linear(5, 3, key=KEYS[0]), "a string"])
    with pytest.raises(ValueError, match="noise_scale"):
        Ensemble(NET, params=members, likelihood="normal")
    with pytest.raises(ValueError, match="noise_scale"):
        Ensemble(NET, params=members, likelihood="normal", noise_scale=-1.0)
    with pytest.raises(ValueError, match="likelihood"):
        Ensemble(NET, params=members, likelihood="poisson")
    with pytest.raises(ValueError, match="leading member axis"):
        Ensemble(eqx.nn.Linear(5, 1, key=KEYS[0]), stacked=True)  # weight [1, 5], bias [1]: one member
    with pytest.raises(ValueError, match="NaN or inf"):
        Ensemble(NET, params=members).predict(np.full_like(X_NEW, np.nan))
    with pytest.raises(ValueError, match="num_samples"):
        Ensemble(NET, params=members).predict(X_NEW, num_samples=0)
    with pytest.raises(ValueError, match="leading member axis"):
        ensemble_spread({"w": jnp.zeros((1, 3))})
