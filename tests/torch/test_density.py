"""FeatureDensity: ClassGaussians on the last Linear layer's input of a torch network, and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from uncertlr import metrics
from uncertlr.density import ClassGaussians
from uncertlr.torch import Ensemble, FeatureDensity, PointNetwork, bayesian, deep_ensemble


def test_scores_the_last_layer_input_with_class_gaussians():
    """The density of a deep net equals ClassGaussians on the input of its last Linear layer, read independently."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    x, y = torch.randn(90, 4), torch.arange(90) % 3
    body = nn.Sequential(*list(net)[:-1])
    with torch.no_grad():
        feats, feats_new = body(x).double().numpy(), body(x[:11] * 3).double().numpy()
    want = ClassGaussians().fit(feats, y.numpy())
    got = FeatureDensity(net).fit(x, y)
    np.testing.assert_allclose(got.log_density(x[:11] * 3).numpy(), want.log_density(feats_new), rtol=1e-10)
    np.testing.assert_allclose(got.score(x[:11] * 3).numpy(), want.score(feats_new), rtol=1e-10)
    np.testing.assert_allclose(got.components[0].shrinkages.numpy(), want.shrinkages, rtol=1e-12)
    assert FeatureDensity(net).fit(x).components[0].means.shape == (1, 6)  # no labels: one Gaussian


def _standardised_scores(feats, new, y):
    """Each layer's ClassGaussians score of ``new``, standardised by its training scores' mean and std."""
    z = []
    for f, g in zip(feats, new):
        cg = ClassGaussians().fit(f.double().numpy(), y.numpy())
        train = cg.score(f.double().numpy())
        z.append((cg.score(g.double().numpy()) - train.mean()) / train.std())
    return z


def test_several_layers_score_by_the_mean_of_standardised_layer_scores():
    """layers="all": each Linear layer's input gets its own ClassGaussians; the score is the mean over layers of
    (score - its training mean) / its training std, recomputed here from sub-networks read by hand."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3), nn.Softmax(-1)
    )
    x, y, x_new = torch.randn(120, 4), torch.arange(120) % 3, 2 * torch.randn(9, 4)
    got = FeatureDensity(net, layers="all").fit(x, y)  # a final softmax is fine when the layers are named
    assert got.layer_names == ["0", "2", "4"]
    with torch.no_grad():
        feats = [x, net[:2](x), net[:4](x)]
        new = [x_new, net[:2](x_new), net[:4](x_new)]
    z = _standardised_scores(feats, new, y)
    np.testing.assert_allclose(got.score(x_new).numpy(), np.mean(z, 0), rtol=1e-9)
    two = FeatureDensity(net, layers=["2", "0"]).fit(x, y)  # the order given is kept
    assert two.layer_names == ["2", "0"]
    np.testing.assert_allclose(two.score(x_new).numpy(), np.mean(z[:2], 0), rtol=1e-9)
    fresh = FeatureDensity(net, layers="all")
    fresh.load_state_dict(got.state_dict())
    torch.testing.assert_close(fresh.score(x_new), got.score(x_new), rtol=0, atol=0)
    # layer_scores: each layer's own (unstandardised) score, one column per layer, in layer_names order
    raw = [
        ClassGaussians().fit(f.double().numpy(), y.numpy()).score(g.double().numpy())
        for f, g in zip(feats, new)
    ]
    per_layer = got.layer_scores(x_new)
    assert per_layer.shape == (9, 3) and per_layer.dtype == torch.float64
    np.testing.assert_allclose(per_layer.numpy(), np.stack(raw, 1), rtol=1e-9)
    np.testing.assert_allclose(two.layer_scores(x_new).numpy(), np.stack(raw[:2], 1)[:, ::-1], rtol=1e-9)


def test_a_convolution_is_read_as_its_input_averaged_over_positions():
    """Convolutions named in layers= are read as their input [N, C, H, W] averaged over positions, [N, C],
    recomputed here from sub-networks (Conv1d the same over time); "all" reads only the Linear layers."""
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3),
    )  # fmt: skip
    x, y, x_new = torch.randn(150, 2, 6, 6), torch.arange(150) % 3, 2 * torch.randn(9, 2, 6, 6)
    assert FeatureDensity(net, layers="all").layer_names == ["6"]
    got = FeatureDensity(net, layers=["0", "2", "6"]).fit(x, y)
    assert [c.means.shape[1] for c in got.components] == [2, 4, 5]
    with torch.no_grad():
        feats = [x.mean((2, 3)), net[:2](x).mean((2, 3)), net[:6](x)]
        new = [x_new.mean((2, 3)), net[:2](x_new).mean((2, 3)), net[:6](x_new)]
    z = _standardised_scores(feats, new, y)
    np.testing.assert_allclose(got.score(x_new).numpy(), np.mean(z, 0), rtol=1e-9)
    one = FeatureDensity(net, layers="2").fit(x, y)  # a convolution by name
    np.testing.assert_allclose(one.log_density(x_new).numpy(), -ClassGaussians().fit(
        feats[1].double().numpy(), y.numpy()).score(new[1].double().numpy()), rtol=1e-9)  # fmt: skip
    seq = nn.Sequential(nn.Conv1d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 3))
    xs = torch.randn(60, 3, 10)
    d = FeatureDensity(seq, layers="0").fit(xs, torch.arange(60) % 3)
    with torch.no_grad():
        want = ClassGaussians().fit(xs.mean(2).double().numpy(), (torch.arange(60) % 3).numpy())
    np.testing.assert_allclose(
        d.score(xs[:5]).numpy(), want.score(xs[:5].mean(2).double().numpy()), rtol=1e-9
    )
    with pytest.raises(ValueError, match="nn.Linear or nn.Conv1d/2d/3d"):
        FeatureDensity(net, layers="1")


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
    assert density.layer_names == ["4"]
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
    parts = {"means", "chols", "log_weights", "shrinkages"}
    assert set(fitted.state_dict()) == {f"components.0.{k}" for k in parts} | {"score_center", "score_scale"}
    torch.testing.assert_close(fresh.score(x[:7]), fitted.score(x[:7]), rtol=0, atol=0)


def test_an_ensemble_scores_by_the_mean_of_its_members_standardised_scores():
    """A deep ensemble: one density per member (and per layer); the score is the mean over members and layers of
    each one's training-standardised score, recomputed here from single-network densities of the members."""
    torch.manual_seed(2)
    ens = deep_ensemble(lambda: nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)), size=3, seed=5)
    x, y, x_new = torch.randn(90, 4), torch.arange(90) % 3, 3 * torch.randn(8, 4)
    for layers, per_member in ((None, 1), ("all", 2)):
        got = FeatureDensity(ens, layers=layers).fit(x, y)
        assert len(got.components) == 3 * per_member and got.layer_names == (
            ["2"] if layers is None else ["0", "2"]
        )
        z = []
        for m in ens.members:
            for name in got.layer_names:
                one = FeatureDensity(m, layers=name).fit(x, y)
                train = one.score(x).numpy()
                z.append((one.score(x_new).numpy() - train.mean()) / train.std())
        np.testing.assert_allclose(got.score(x_new).numpy(), np.mean(z, 0), rtol=1e-9)
        fresh = FeatureDensity(ens, layers=layers)
        fresh.load_state_dict(got.state_dict())
        torch.testing.assert_close(fresh.score(x_new), got.score(x_new), rtol=0, atol=0)
        # the members differ (a density reading member 0 three times fails the comparison above)
        assert not np.allclose(z[per_member - 1], z[2 * per_member - 1], rtol=1e-3)  # their heads' inputs
    with pytest.raises(ValueError, match="use score"):
        FeatureDensity(ens).fit(x, y).log_density(x)
    bnns = Ensemble([bayesian(nn.Linear(4, 3), num_data=90) for _ in range(2)])
    with pytest.raises(TypeError, match="ensemble of deterministic networks"):
        FeatureDensity(bnns)
    mixed = Ensemble(
        [PointNetwork(nn.Linear(4, 3)), PointNetwork(nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3)))]
    )
    with pytest.raises(ValueError, match="member 1 lacks"):
        FeatureDensity(mixed, layers="all")


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
    with pytest.raises(ValueError, match="no nn.Linear"):
        FeatureDensity(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="layers='0'"):
        FeatureDensity(nn.Sequential(nn.ReLU(), nn.Linear(3, 2)), layers="0")
    with pytest.raises(ValueError, match="distinct"):
        FeatureDensity(net, layers=["0", "0"])
    with pytest.raises(ValueError, match="use score"):
        FeatureDensity(net, layers="all").fit(x, y).log_density(x)
    with pytest.raises(ValueError, match="output of its last Linear layer"):
        FeatureDensity(nn.Sequential(net, nn.Softmax(-1))).fit(x, y)
    with pytest.raises(ValueError, match="at least one input"):
        FeatureDensity(net).fit(x[:0], y[:0])
