"""uncertlr.model_selection.held_out_group_search: leave-one-group-out choice of settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from uncertlr.likelihoods import NormalPrediction
from uncertlr.model_selection import held_out_group_search


class Smoothed:
    """Predicts class ``x > 0`` with probability ``1 - alpha/2`` (two classes): its NLL has a closed form."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    def predict(self, x, num_samples):
        p = np.full((len(x), 2), self.alpha / 2)
        p[np.arange(len(x)), (x[:, 0] > 0).astype(int)] += 1 - self.alpha
        return np.repeat(p[None], num_samples, axis=0)


def _noop(model, x, y):
    return None


@given(
    alphas=st.lists(st.floats(0.01, 0.99), min_size=1, max_size=4, unique=True),
    n_groups=st.integers(2, 5),
    seed=st.integers(0, 1000),
)
def test_scores_are_the_mean_held_out_nll_of_each_setting(alphas, n_groups, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(12 * n_groups, 1))
    y = np.where(rng.random(len(x)) < 0.8, x[:, 0] > 0, x[:, 0] <= 0).astype(int)
    groups = np.arange(len(x)) % n_groups
    search = held_out_group_search(
        Smoothed, {"alpha": alphas}, _noop, x, y, groups, progress=False, num_samples=3
    )
    for a, score, per_group in zip(alphas, search.scores, search.fold_scores):
        right = y == (x[:, 0] > 0)
        nll = np.where(right, -math.log(1 - a / 2), -math.log(a / 2))  # independent: per row, by hand
        expected = {g: float(nll[groups == g].mean()) for g in range(n_groups)}
        assert per_group == pytest.approx(expected, rel=1e-9)
        assert score == pytest.approx(np.mean(list(expected.values())), rel=1e-9)
    assert search.best == {"alpha": alphas[int(np.argmin(search.scores))]}
    assert [r["nll"] for r in search.rows()] == search.scores


def test_the_held_out_group_never_reaches_train_and_every_combination_is_tried():
    x = np.arange(30, dtype=np.float64)[:, None]
    y = np.zeros(30, dtype=int)
    groups = np.repeat(["a", "b", "c"], 10)
    seen = []

    def train(model, xs, ys):
        seen.append((model.setting, set(xs[:, 0].tolist())))

    class Model:
        def __init__(self, **setting):
            self.setting = tuple(sorted(setting.items()))

        def predict(self, xs, num_samples):
            return np.full((num_samples, len(xs), 2), 0.5)

    search = held_out_group_search(
        Model, {"p": [1, 2], "q": ["u", "v", "w"]}, train, x, y, groups, held_out=["b"], progress=False
    )
    assert len(search.settings) == 6 and len(seen) == 6  # the product of the grid, one held-out group
    assert all(rows == set(range(10)) | set(range(20, 30)) for _, rows in seen)  # never group b's rows
    assert all(list(f) == ["b"] for f in search.fold_scores)


def test_regression_predictions_are_scored_by_the_gaussian_nll():
    from uncertlr import metrics

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 1))
    y = 2 * x + rng.normal(scale=0.3, size=(20, 1))
    groups = np.repeat([0, 1], 10)

    class Line:
        def __init__(self, noise):
            self.noise = noise

        def predict(self, xs, num_samples):
            mean = np.stack([2 * xs + 0.01 * s for s in range(num_samples)])
            return NormalPrediction(mean, np.full_like(mean, self.noise**2))

    search = held_out_group_search(Line, {"noise": [0.03, 0.3, 3.0]}, _noop, x, y, groups, progress=False)
    assert search.best == {"noise": 0.3}
    m = Line(0.3).predict(x[groups == 1], 32)
    assert search.fold_scores[1][1] == pytest.approx(
        float(metrics.gaussian_nll(m.mean, m.variance, y[groups == 1]))
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"groups": np.zeros(5)}, "one group per row"),
        ({"groups": np.zeros(6)}, "1 distinct value"),
        ({"held_out": [7]}, r"held_out groups \[7\] are not among"),
        ({"held_out": []}, "held_out is empty"),
        ({"grid": []}, "no setting"),
        ({"grid": {"alpha": []}}, "non-empty list"),
        ({"num_samples": 0}, "num_samples"),
    ],
)
def test_bad_input_is_named(kwargs, message):
    args = {
        "build": Smoothed,
        "grid": {"alpha": [0.1]},
        "train": _noop,
        "x": np.ones((6, 1)),
        "y": np.ones(6, dtype=int),
        "groups": np.array([0, 0, 0, 1, 1, 1]),
        "progress": False,
    }
    with pytest.raises(ValueError, match=message):
        held_out_group_search(**{**args, **kwargs})


def test_a_torch_bnn_is_searched_on_torch_tensors():
    torch = pytest.importorskip("torch")
    from uncertlr import priors
    from uncertlr.torch import bayesian, fit

    g = torch.Generator().manual_seed(0)
    x = torch.randn(90, 3, generator=g)
    y = (x[:, 0] + 0.3 * torch.randn(90, generator=g) > 0).long()
    groups = torch.arange(90) // 30  # three sources

    def build(prior_scale):
        torch.manual_seed(0)
        return bayesian(torch.nn.Linear(3, 2), num_data=60, prior=priors.Normal(prior_scale))

    def train(bnn, xs, ys):
        fit(
            bnn.elbo,
            torch.optim.Adam(bnn.parameters(), lr=0.05),
            xs,
            ys,
            epochs=5,
            batch_size=30,
            progress=False,
        )

    search = held_out_group_search(
        build, {"prior_scale": [0.01, 1.0]}, train, x, y, groups, num_samples=8, progress=False
    )
    assert set(search.fold_scores[0]) == {0, 1, 2} and all(np.isfinite(search.scores))
    # a prior of std 0.01 pins the weights near 0 (chance, NLL ~ log 2); N(0, 1) lets the net learn the sign of x0
    assert (
        search.scores[0] == pytest.approx(math.log(2), abs=0.05) and search.scores[1] < search.scores[0] - 0.1
    )
    assert search.best == {"prior_scale": 1.0}


def test_jax_arrays_are_indexed_and_scored_like_numpy_ones():
    jnp = pytest.importorskip("jax.numpy")

    class JaxSmoothed:  # the same toy as Smoothed, computed in JAX
        def __init__(self, alpha):
            self.alpha = alpha

        def predict(self, x, num_samples):
            hot = (x[:, 0] > 0).astype(jnp.int32)
            p = jnp.full((x.shape[0], 2), self.alpha / 2).at[jnp.arange(x.shape[0]), hot].add(1 - self.alpha)
            return jnp.broadcast_to(p, (num_samples, *p.shape))

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 1)).astype(np.float32)
    y = np.where(rng.random(30) < 0.8, x[:, 0] > 0, x[:, 0] <= 0).astype(np.int32)
    groups = np.arange(30) % 3
    grid = {"alpha": [0.05, 0.3]}
    ref = held_out_group_search(Smoothed, grid, _noop, x, y, groups, progress=False)
    got = held_out_group_search(
        JaxSmoothed, grid, _noop, jnp.asarray(x), jnp.asarray(y), jnp.asarray(groups), progress=False
    )
    assert got.scores == pytest.approx(ref.scores, rel=1e-5) and got.best == ref.best
