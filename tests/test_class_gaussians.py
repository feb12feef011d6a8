"""ClassGaussians: class-conditional Gaussians with shrunk covariances, against scikit-learn + scipy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import multivariate_normal
from sklearn.covariance import ShrunkCovariance, ledoit_wolf

from uncertlr.density import ClassGaussians


def scipy_log_density(f_train, labels, f, shrinkage="ledoit-wolf"):
    """log Σ_c π_c N(f; μ_c, Σ_c) with scikit-learn's shrunk covariances and scipy's Gaussian."""
    comps = []
    for c in np.unique(labels):
        fc = f_train[labels == c]
        if shrinkage == "ledoit-wolf":
            cov = ledoit_wolf(fc)[0]
        else:
            cov = ShrunkCovariance(shrinkage=shrinkage).fit(fc).covariance_
        comps.append(np.log(len(fc) / len(f_train)) + multivariate_normal(fc.mean(0), cov).logpdf(f))
    comps = np.stack(comps).reshape(len(comps), -1)
    m = comps.max(0)
    return m + np.log(np.exp(comps - m).sum(0))


@settings(max_examples=30, deadline=None)
@given(
    d=st.integers(1, 5),
    counts=st.lists(st.integers(6, 12), min_size=1, max_size=4),
    shrinkage=st.sampled_from(["ledoit-wolf", 0.0, 0.05, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_log_density_equals_scikit_learn_and_scipy(d, counts, shrinkage, seed):
    """Classes of 6-12 points in 1-5 dimensions: the mixture of scikit-learn's shrunk covariances, scored by scipy."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(3.0 * c, 1.0 + c, size=(n, d)) for c, n in enumerate(counts)])
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    g = ClassGaussians(shrinkage=shrinkage).fit(x, y)
    x_new = rng.normal(0.0, 4.0, size=(9, d))
    want = scipy_log_density(x, y, x_new, shrinkage)
    np.testing.assert_allclose(g.log_density(x_new), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g.score(x_new), -want, rtol=1e-6, atol=1e-6)
    if shrinkage == "ledoit-wolf":  # the amount itself, per class
        ref = [ledoit_wolf(x[y == c])[1] for c in np.unique(y)]
        np.testing.assert_allclose(g.shrinkages, ref, rtol=1e-9, atol=1e-12)


def test_one_gaussian_without_labels_absent_classes_and_other_array_libraries():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    one = ClassGaussians().fit(x)
    np.testing.assert_allclose(one.log_density(x[:5]), scipy_log_density(x, np.zeros(40), x[:5]), rtol=1e-6)
    two = ClassGaussians().fit(x, np.array([0, 2] * 20), num_classes=4)  # classes 1 and 3 never occur
    assert two.classes.tolist() == [0, 2] and np.allclose(np.exp(two.log_weights), [0.5, 0.5])
    torch = pytest.importorskip("torch")
    from_torch = ClassGaussians().fit(torch.from_numpy(x), torch.tensor([0, 2] * 20))
    np.testing.assert_allclose(from_torch.score(torch.from_numpy(x[:5])), two.score(x[:5]), rtol=1e-12)
    jnp = pytest.importorskip("jax.numpy")
    from_jax = ClassGaussians().fit(jnp.asarray(x, dtype=jnp.float32), jnp.asarray([0, 2] * 20))
    np.testing.assert_allclose(from_jax.score(x[:5].astype(np.float32)), two.score(x[:5]), rtol=1e-5)


def test_errors_name_the_problem():
    x, y = np.random.default_rng(0).normal(size=(10, 3)), np.array([0, 1] * 5)
    with pytest.raises(RuntimeError, match="call fit"):
        ClassGaussians().score(x)
    with pytest.raises(ValueError, match="NaN or inf"):
        ClassGaussians().fit(np.full((10, 3), np.nan), y)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        ClassGaussians().fit(x[:, 0], y)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        ClassGaussians().fit(x, np.array([0, 2] * 5), num_classes=2)
    with pytest.raises(ValueError, match=r"class\(es\) \[1\] have 1"):
        ClassGaussians().fit(x[:4], np.array([0, 0, 0, 1]))
    with pytest.raises(ValueError, match="3 columns"):
        ClassGaussians().fit(x, y).score(x[:, :2])
    with pytest.raises(ValueError, match="shrinkage"):
        ClassGaussians(shrinkage=1.5)
    # fewer points than dimensions and no shrinkage: a (very peaked) density, not an error
    flat = ClassGaussians(shrinkage=0.0).fit(np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]] * 2))
    assert np.isfinite(flat.score(np.ones((2, 3)))).all()
