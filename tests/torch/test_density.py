"""FeatureDensity: class-conditional Gaussians on the last layer's input, against scipy, and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import multivariate_normal
from sklearn.covariance import ShrunkCovariance, ledoit_wolf
from torch import nn

from uncertlr import metrics
from uncertlr.torch import FeatureDensity, PointNetwork


def _scipy_log_density(f_train, labels, f, shrinkage="ledoit-wolf"):
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


@settings(max_examples=25, deadline=None)
@given(
    d=st.integers(1, 5),
    counts=st.lists(st.integers(6, 12), min_size=1, max_size=4),
    shrinkage=st.sampled_from(["ledoit-wolf", 0.05, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_log_density_equals_a_scipy_gaussian_mixture(d, counts, shrinkage, seed):
    """With a single Linear layer the features are the inputs themselves, so scikit-learn's covariance
    estimators and scipy's Gaussian can score them directly (classes of 6-12 points in 1-5 dimensions)."""
    rng = np.random.default_rng(seed)
    num_classes = len(counts)
    x = np.concatenate([rng.normal(3.0 * c, 1.0 + c, size=(n, d)) for c, n in enumerate(counts)])
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    net = nn.Sequential(nn.Linear(d, num_classes))
    density = FeatureDensity(net, shrinkage=shrinkage).fit(torch.from_numpy(x).float(), torch.from_numpy(y))
    x_new = rng.normal(0.0, 4.0, size=(9, d))
    got = density.log_density(torch.from_numpy(x_new).float()).numpy()
    f_train = torch.from_numpy(x).float().double().numpy()  # the float32 inputs the network saw
    want = _scipy_log_density(f_train, y, torch.from_numpy(x_new).float().double().numpy(), shrinkage)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        density.score(torch.from_numpy(x_new).float()).numpy(), -want, rtol=1e-6, atol=1e-6
    )


def test_one_gaussian_without_labels_and_absent_classes_get_no_component():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(40, 3))).float()
    net = nn.Sequential(nn.Linear(3, 4))
    one = FeatureDensity(net).fit(x)
    want = _scipy_log_density(x.double().numpy(), np.zeros(40), x[:5].double().numpy())
    np.testing.assert_allclose(one.log_density(x[:5]).numpy(), want, rtol=1e-6)
    y = torch.tensor([0, 2] * 20)  # class 1 and 3 never occur
    two = FeatureDensity(net).fit(x, y)
    assert two.means.shape == (2, 3) and torch.allclose(
        two.log_weights.exp(), torch.tensor([0.5, 0.5], dtype=torch.float64)
    )


def test_reads_the_features_of_a_deep_network_and_separates_unseen_inputs():
    """An MLP trained on two of three blobs: the third blob, deep on one class's side of the boundary, scores
    higher than the training blobs' held-out points by feature density, while the softmax entropy ranks it
    below them."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 4.0], [4.0, 0.0], [9.0, -5.0]])
    pts = [c + 0.7 * torch.randn(300, 2, generator=gen) for c in centres]
    x, y = torch.cat(pts[:2]), torch.cat([torch.zeros(300), torch.ones(300)]).long()
    net = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    model = PointNetwork(net)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        model.loss(x, y).backward()
        opt.step()
    density = FeatureDensity(model).fit(x[::2], y[::2])  # a PointNetwork is read through its net
    assert density.layer_name == "4"
    held_in, unseen = x[1::2], pts[2]
    auroc_density = float(metrics.ood_auroc(density.score(held_in), density.score(unseen)))
    p_in, p_out = model.predict(held_in).numpy(), model.predict(unseen).numpy()
    auroc_entropy = float(
        metrics.ood_auroc(metrics.predictive_entropy(p_in), metrics.predictive_entropy(p_out))
    )
    assert auroc_density > 0.99
    assert auroc_entropy < 0.5  # the softmax is *more* confident on the unseen blob than on held-out data
    assert net.training  # the network's mode is left as it was


def test_state_dict_round_trip_to_a_fresh_density():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    x, y = torch.randn(60, 4), torch.arange(60) % 3
    fitted = FeatureDensity(net).fit(x, y)
    fresh = FeatureDensity(net)
    fresh.load_state_dict(fitted.state_dict())
    assert set(fitted.state_dict()) == {"means", "chols", "log_weights", "shrinkages"}  # not the network
    torch.testing.assert_close(fresh.score(x[:7]), fitted.score(x[:7]), rtol=0, atol=0)


def test_errors_name_the_problem():
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    x, y = torch.randn(10, 3), torch.tensor([0, 1] * 5)
    with pytest.raises(RuntimeError, match="call fit"):
        FeatureDensity(net).score(x)
    with pytest.raises(ValueError, match="NaN or inf"):
        FeatureDensity(net).fit(torch.full((10, 3), float("nan")), y)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        FeatureDensity(net).fit(x, torch.tensor([0, 2] * 5))
    with pytest.raises(TypeError, match="integer"):
        FeatureDensity(net).fit(x, y.float())
    with pytest.raises(ValueError, match=r"shape \[N\] = \[10\]"):
        FeatureDensity(net).fit(x, y[:4])
    with pytest.raises(ValueError, match=r"class\(es\) \[1\] have 1"):
        FeatureDensity(net).fit(x[:4], torch.tensor([0, 0, 0, 1]))
    with pytest.raises(ValueError, match="shrinkage"):
        FeatureDensity(net, shrinkage=1.5)
    # fewer points than dimensions and no shrinkage: still a (very peaked) density, not an error
    flat = FeatureDensity(nn.Sequential(nn.Linear(3, 2)), shrinkage=0.0).fit(
        torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]] * 2), torch.zeros(6, dtype=torch.long)
    )
    assert torch.isfinite(flat.score(torch.ones(2, 3))).all()
    with pytest.raises(ValueError, match="no nn.Linear"):
        FeatureDensity(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="last_layer='0'"):
        FeatureDensity(nn.Sequential(nn.ReLU(), nn.Linear(3, 2)), last_layer="0")
    with pytest.raises(ValueError, match="output of its last Linear layer"):
        FeatureDensity(nn.Sequential(net, nn.Softmax(-1))).fit(x, y)
    with pytest.raises(ValueError, match="at least one input"):
        FeatureDensity(net).fit(x[:0], y[:0])
