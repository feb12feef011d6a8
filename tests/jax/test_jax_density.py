"""uncertlr.jax.FeatureDensity: the same features and scores as the torch FeatureDensity on the same weights,
for flax.linen, flax.nnx and Equinox networks; convolutions, errors, pickling."""

from __future__ import annotations

import pickle

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from uncertlr.density import ClassGaussians
from uncertlr.jax import FeatureDensity
from uncertlr.torch import FeatureDensity as TorchFeatureDensity
from uncertlr_models.eqx_mlp import EqxMLP
from uncertlr_models.flax_mlp import FlaxMLP

SIZES = (5, 8, 6, 3)  # 5 -> 8 -> 6 -> 3, tanh
RNG = np.random.default_rng(0)
WEIGHTS = [
    (RNG.normal(size=(b, a)).astype(np.float32) / np.sqrt(a), RNG.normal(size=b).astype(np.float32) * 0.1)
    for a, b in zip(SIZES[:-1], SIZES[1:])
]  # torch layout: weight [out, in]
X = RNG.normal(size=(240, 5)).astype(np.float32)
Y = (X[:, 0] > 0.4).astype(np.int64) + (X[:, 1] > 0.4)  # three classes
X_NEW = np.concatenate([RNG.normal(size=(20, 5)), 4 * RNG.normal(size=(20, 5))]).astype(np.float32)


class NnxMLP(nnx.Module):
    def __init__(self) -> None:
        rngs = nnx.Rngs(0)
        self.a = nnx.Linear(5, 8, rngs=rngs)
        self.b = nnx.Linear(8, 6, rngs=rngs)
        self.out = nnx.Linear(6, 3, rngs=rngs)
        for layer, (w, bias) in zip((self.a, self.b, self.out), WEIGHTS):
            layer.kernel = nnx.Param(jnp.asarray(w.T))
            layer.bias = nnx.Param(jnp.asarray(bias))

    def __call__(self, x):
        return self.out(jnp.tanh(self.b(jnp.tanh(self.a(x)))))


def _torch():
    layers = [torch.nn.Linear(a, b) for a, b in zip(SIZES[:-1], SIZES[1:])]
    for layer, (w, b) in zip(layers, WEIGHTS):
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(w))
            layer.bias.copy_(torch.from_numpy(b))
    return torch.nn.Sequential(layers[0], torch.nn.Tanh(), layers[1], torch.nn.Tanh(), layers[2])


def _linen():
    net = FlaxMLP(hidden=SIZES[1:-1], out_features=SIZES[-1], activation="tanh")
    params = {
        f"Dense_{i}": {"kernel": jnp.asarray(w.T), "bias": jnp.asarray(b)} for i, (w, b) in enumerate(WEIGHTS)
    }
    return {"net": net, "params": {"params": params}}, ["Dense_0", "Dense_1", "Dense_2"]


def _nnx():
    return {"net": NnxMLP()}, ["a", "b", "out"]


def _equinox():
    net = EqxMLP(SIZES[0], SIZES[1:-1], SIZES[-1], activation="tanh", key=jax.random.key(0))
    for i, (w, b) in enumerate(WEIGHTS):
        net = eqx.tree_at(
            lambda m, i=i: (m.layers[i].weight, m.layers[i].bias), net, (jnp.asarray(w), jnp.asarray(b))
        )
    return {"net": net}, ["layers.0", "layers.1", "layers.2"]


NETS = {"flax.linen": _linen, "flax.nnx": _nnx, "equinox": _equinox}


def _by_hand() -> list[np.ndarray]:
    """The inputs of the three layers, computed in numpy (float64)."""
    h, out = X.astype(np.float64), []
    for i, (w, b) in enumerate(WEIGHTS):
        out.append(h)
        h = h @ w.T.astype(np.float64) + b
        if i < len(WEIGHTS) - 1:
            h = np.tanh(h)
    return out


@pytest.mark.parametrize("kind", list(NETS))
def test_features_and_scores_equal_the_torch_density_on_the_same_weights(kind):
    kwargs, names = NETS[kind]()
    net = _torch()
    for layers in (None, "all"):
        mine = FeatureDensity(**kwargs, layers=layers).fit(X, Y)
        ref = TorchFeatureDensity(net, layers=layers).fit(torch.from_numpy(X), torch.from_numpy(Y))
        assert mine.layer_names == (names[-1:] if layers is None else names)
        expected = _by_hand()[-1:] if layers is None else _by_hand()
        for got, want in zip(mine.features(X), expected):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            mine.score(X_NEW), ref.score(torch.from_numpy(X_NEW)).numpy(), rtol=1e-4, atol=1e-4
        )
        np.testing.assert_allclose(
            mine.layer_scores(X_NEW), ref.layer_scores(torch.from_numpy(X_NEW)).numpy(), rtol=1e-4, atol=1e-4
        )
    # one layer: log q of ClassGaussians fitted on the hand-computed head inputs
    head = FeatureDensity(**kwargs).fit(X, Y, batch_size=64)  # several batches
    g = ClassGaussians().fit(_by_hand()[-1], Y)
    x_new_head = FeatureDensity(**kwargs, layers=[names[-1]]).features(X_NEW)[0]
    np.testing.assert_allclose(head.log_density(X_NEW), g.log_density(x_new_head), rtol=1e-5, atol=1e-5)
    # unusual inputs score higher
    s = head.score(X_NEW)
    assert s[20:].mean() > s[:20].mean()


def test_a_named_subset_in_the_given_order_and_regression_without_labels():
    kwargs, names = _linen()
    d = FeatureDensity(**kwargs, layers=["Dense_2", "Dense_0"]).fit(X)
    assert d.layer_names == ["Dense_2", "Dense_0"]
    phis = _by_hand()
    scores = [ClassGaussians().fit(phis[i]) for i in (2, 0)]
    train = [g.score(phis[i]) for g, i in zip(scores, (2, 0))]
    new = FeatureDensity(**kwargs, layers=["Dense_2", "Dense_0"]).features(X_NEW)
    want = np.mean([(g.score(f) - t.mean()) / t.std() for g, f, t in zip(scores, new, train)], axis=0)
    np.testing.assert_allclose(d.score(X_NEW), want, rtol=1e-5, atol=1e-5)


def test_a_convolution_is_read_as_its_input_averaged_over_positions():
    class LinenCNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Conv(4, (3, 3), name="c1")(x))
            h = nn.relu(nn.Conv(5, (3, 3), name="c2")(h))
            return nn.Dense(3, name="head")(h.mean((1, 2)))

    x = jnp.asarray(RNG.normal(size=(60, 6, 6, 2)).astype(np.float32))
    net = LinenCNN()
    variables = net.init(jax.random.key(0), x[:1])
    d = FeatureDensity(net, params=variables, layers=["c1", "c2", "head"])
    phi1, phi2, phi_head = d.features(x)
    h1 = nn.relu(nn.Conv(4, (3, 3)).apply({"params": variables["params"]["c1"]}, x))
    np.testing.assert_allclose(phi1, np.asarray(x, np.float64).mean((1, 2)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(phi2, np.asarray(h1, np.float64).mean((1, 2)), rtol=1e-5, atol=1e-6)
    assert phi_head.shape == (60, 5)
    assert FeatureDensity(net, params=variables, layers="all").fit(x, np.arange(60) % 3).layer_names == [
        "head"
    ]

    class EqxCNN(eqx.Module):
        conv: eqx.nn.Conv2d
        head: eqx.nn.Linear

        def __init__(self, key):
            k1, k2 = jax.random.split(key)
            self.conv = eqx.nn.Conv2d(2, 4, 3, key=k1)
            self.head = eqx.nn.Linear(4, 3, key=k2)

        def __call__(self, x):  # one example [C, H, W]
            return self.head(jax.nn.relu(self.conv(x)).mean((1, 2)))

    xc = jnp.moveaxis(x, -1, 1)  # [N, C, H, W]
    (phi,) = FeatureDensity(EqxCNN(jax.random.key(1)), layers="conv").features(xc)
    np.testing.assert_allclose(phi, np.asarray(xc, np.float64).mean((2, 3)), rtol=1e-6, atol=1e-6)


def test_nnx_module_is_left_alone_and_read_as_it_is_now():
    kwargs, _ = _nnx()
    net = kwargs["net"]
    d = FeatureDensity(net, layers="all")
    before = d.features(X)
    assert type(net.a) is nnx.Linear and type(net.out) is nnx.Linear  # no tapped class left behind
    net.a.kernel = nnx.Param(2 * net.a.kernel[...])  # trained further, in place
    after = d.features(X)
    np.testing.assert_allclose(after[0], before[0])  # the input itself
    assert not np.allclose(after[1], before[1])  # the layer after the changed one sees the change


@pytest.mark.parametrize("kind", ["flax.linen", "equinox"])
def test_pickles(kind):
    kwargs, _ = NETS[kind]()
    d = FeatureDensity(**kwargs, layers="all").fit(X, Y)
    d.score(X[:3])  # the reader exists now: it must not stop pickling
    again = pickle.loads(pickle.dumps(d))
    np.testing.assert_array_equal(again.score(X_NEW), d.score(X_NEW))


def test_errors_name_the_problem():
    kwargs, _ = _linen()
    with pytest.raises(ValueError, match="params="):
        FeatureDensity(kwargs["net"])
    with pytest.raises(ValueError, match="do not pass params="):
        FeatureDensity(NnxMLP(), params={"a": 1})
    with pytest.raises(TypeError, match="ClassGaussians"):
        FeatureDensity(lambda p, x: x, params={})
    with pytest.raises(ValueError, match="shrinkage"):
        FeatureDensity(**kwargs, shrinkage=2.0)
    with pytest.raises(ValueError, match="'nope' is not a dense"):
        FeatureDensity(**kwargs, layers="nope").fit(X, Y)
    with pytest.raises(ValueError, match="distinct"):
        FeatureDensity(**kwargs, layers=["Dense_0", "Dense_0"])
    with pytest.raises(RuntimeError, match="fit"):
        FeatureDensity(**kwargs).score(X)
    with pytest.raises(ValueError, match="NaN"):
        FeatureDensity(**kwargs).fit(np.full((4, 5), np.nan, np.float32), np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="use score"):
        FeatureDensity(**kwargs, layers="all").fit(X, Y).log_density(X)
    with pytest.raises(ValueError, match="labels"):
        FeatureDensity(**kwargs).fit(X, np.full(len(X), 7))  # 3 classes

    class Softmaxed(nn.Module):  # the output is not the last Dense layer's
        @nn.compact
        def __call__(self, x):
            return jax.nn.softmax(nn.Dense(3)(x))

    net = Softmaxed()
    variables = net.init(jax.random.key(0), X[:1])
    with pytest.raises(ValueError, match="output of its last dense layer"):
        FeatureDensity(net, params=variables).fit(X, Y)
    assert FeatureDensity(net, params=variables, layers="Dense_0").fit(X, Y).score(X[:2]).shape == (2,)


def test_a_layer_called_twice_is_read_at_its_first_call():
    class Twice(nn.Module):
        @nn.compact
        def __call__(self, x):
            shared = nn.Dense(5, name="shared")
            return nn.Dense(3, name="head")(shared(jnp.tanh(shared(x))))

    net = Twice()
    variables = net.init(jax.random.key(0), X[:1])
    (phi,) = FeatureDensity(net, params=variables, layers="shared").features(X)
    np.testing.assert_allclose(phi, X.astype(np.float64))


def test_dropout_is_off_while_reading_nnx_and_equinox_networks():
    class NnxDrop(nnx.Module):
        def __init__(self):
            rngs = nnx.Rngs(0)
            self.a, self.drop, self.out = (
                nnx.Linear(5, 8, rngs=rngs),
                nnx.Dropout(0.5, rngs=rngs),
                nnx.Linear(8, 3, rngs=rngs),
            )

        def __call__(self, x):
            return self.out(self.drop(jnp.tanh(self.a(x))))

    net = NnxDrop()
    (phi,) = FeatureDensity(net).features(X)
    np.testing.assert_allclose(
        phi, np.tanh(np.asarray(net.a(jnp.asarray(X)), np.float64)), rtol=1e-5, atol=1e-6
    )
    assert net.drop.deterministic is False  # the user's module keeps its training flags

    class EqxDrop(eqx.Module):
        a: eqx.nn.Linear
        drop: eqx.nn.Dropout
        out: eqx.nn.Linear

        def __init__(self, key):
            k1, k2 = jax.random.split(key)
            self.a, self.drop, self.out = (
                eqx.nn.Linear(5, 8, key=k1),
                eqx.nn.Dropout(0.5),
                eqx.nn.Linear(8, 3, key=k2),
            )

        def __call__(self, x, key=None):
            return self.out(self.drop(jnp.tanh(self.a(x)), key=key))

    enet = EqxDrop(jax.random.key(0))
    (phi,) = FeatureDensity(enet).features(X)
    np.testing.assert_allclose(
        phi, np.tanh(np.asarray(jax.vmap(enet.a)(jnp.asarray(X)), np.float64)), rtol=1e-5, atol=1e-6
    )


# ---------------------------------------------------------------- DensityTemperature: the JAX twin of torch's


def _with_prior_bias(kind: str, net_args: dict, y) -> object:
    """A deterministic "training" both backends can repeat: the head's bias set to the log class frequencies."""
    bias = np.log(np.bincount(np.asarray(y), minlength=3) + 1.0).astype(np.float32)
    if kind == "torch":
        import copy

        net = copy.deepcopy(net_args["net"])
        with torch.no_grad():
            net.net[4].bias.copy_(torch.from_numpy(bias))
        return net
    if kind == "flax.linen":
        params = jax.tree_util.tree_map(lambda a: a, net_args["params"])
        params["params"]["Dense_2"]["bias"] = jnp.asarray(bias)
        return params
    if kind == "flax.nnx":
        net = NnxMLP()
        net.out.bias = nnx.Param(jnp.asarray(bias))
        return net
    return eqx.tree_at(lambda m: m.layers[2].bias, net_args["net"], jnp.asarray(bias))


@pytest.mark.parametrize("kind", list(NETS))
@pytest.mark.parametrize(("layers", "per_layer"), [("all", False), ("hidden", True)])
def test_density_temperature_equals_the_torch_one_on_the_same_weights(kind, layers, per_layer):
    from uncertlr.jax import DensityTemperature
    from uncertlr.torch import DensityTemperature as TorchDensityTemperature
    from uncertlr.torch import PointNetwork

    args, _ = NETS[kind]()
    x, y, xv, yv = X[:180], Y[:180], X[180:], Y[180:]
    tnet = PointNetwork(_torch())
    want = TorchDensityTemperature(tnet, layers=layers, per_layer=per_layer).fit(
        torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xv), torch.from_numpy(yv),
        train=lambda xs, ys: _with_prior_bias("torch", {"net": tnet}, ys.numpy()), folds=3, progress=False,
    )  # fmt: skip
    got = DensityTemperature(**args, layers=layers, per_layer=per_layer).fit(
        x, y, xv, yv, train=lambda xs, ys: _with_prior_bias(kind, args, ys), folds=3, progress=False
    )
    assert got.cross_fitted and want.cross_fitted
    np.testing.assert_allclose(np.atleast_1d(got.temperature.b), np.atleast_1d(want.temperature.b), atol=2e-4)
    assert got.temperature.a == pytest.approx(want.temperature.a, abs=2e-4)
    np.testing.assert_allclose(
        got.temperatures(X_NEW), want.temperatures(torch.from_numpy(X_NEW)).numpy(), rtol=1e-3
    )
    p = got.predict(X_NEW)
    assert isinstance(p, jax.Array) and p.shape == (1, 40, 3)
    np.testing.assert_allclose(np.asarray(p), want.predict(torch.from_numpy(X_NEW)).numpy(), atol=1e-4)
    # a temperature never changes the predicted class
    np.testing.assert_array_equal(
        np.asarray(p).argmax(-1), want.model.predict(torch.from_numpy(X_NEW)).argmax(-1)
    )


def test_density_temperature_without_train_fits_the_slope_on_the_validation_data():
    from uncertlr.calibration import fit_score_temperature
    from uncertlr.jax import DensityTemperature

    args, _ = _equinox()
    cal = DensityTemperature(**args).fit(X[:180], Y[:180], X[180:], Y[180:], progress=False)
    density = FeatureDensity(args["net"], layers="all").fit(X[:180], Y[:180])
    probs = jax.nn.softmax(jax.vmap(args["net"])(jnp.asarray(X[180:])), -1)[None]
    want = fit_score_temperature(probs, Y[180:], density.score(X[180:]))
    assert not cal.cross_fitted
    assert cal.temperature.a == pytest.approx(want.a, abs=1e-6) and cal.temperature.b == pytest.approx(
        want.b, abs=1e-6
    )


def test_hidden_layers_and_density_temperature_errors():
    from uncertlr.jax import DensityTemperature

    args, names = _equinox()
    assert FeatureDensity(**args, layers="hidden").fit(X, Y).layer_names == names[1:]
    one = EqxMLP(5, (), 3, key=jax.random.key(0))
    with pytest.raises(
        ValueError, match=r"layers='hidden' reads every dense layer but the first; .* calls 1"
    ):
        FeatureDensity(one, layers="hidden").fit(X, Y)
    with pytest.raises(TypeError, match="FeatureDensity reads a flax.linen or flax.nnx module or an Equinox"):
        DensityTemperature(lambda x: x)
    cal = DensityTemperature(**args)
    with pytest.raises(RuntimeError, match=r"call fit\(x, y, x_val, y_val\) before predict"):
        cal.predict(X)
    with pytest.raises(ValueError, match="folds must be an integer >= 2"):
        cal.fit(X, Y, X, Y, train=lambda xs, ys: args["net"], folds=1, progress=False)
    assert cal.temperature is None


@pytest.mark.parametrize("kind", ["flax.linen", "equinox"])
def test_density_temperature_pickles(kind):
    from uncertlr.jax import DensityTemperature

    args, _ = NETS[kind]()
    cal = DensityTemperature(**args, layers="hidden", per_layer=True).fit(
        X[:180], Y[:180], X[180:], Y[180:], train=lambda xs, ys: _with_prior_bias(kind, args, ys), folds=2,
        progress=False,
    )  # fmt: skip
    again = pickle.loads(pickle.dumps(cal))
    assert again.temperature == cal.temperature
    np.testing.assert_array_equal(np.asarray(again.predict(X_NEW)), np.asarray(cal.predict(X_NEW)))
