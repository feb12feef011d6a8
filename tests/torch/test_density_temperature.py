"""DensityTemperature: a trained network's predictions tempered by its feature density, the slope cross-fitted.

Held against the same pipeline written out by hand (FeatureDensity, fold by fold, fit_score_slope,
fit_score_temperature), and to the promise that a temperature never changes the predicted class.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from uncertlr.calibration import fit_score_slope, fit_score_temperature
from uncertlr.torch import DensityTemperature, FeatureDensity, PointNetwork, bayesian, deep_ensemble, fit


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3))


def _train(x: torch.Tensor, y: torch.Tensor) -> PointNetwork:
    torch.manual_seed(len(x))  # a different start per fold, reproducibly
    net = PointNetwork(_mlp())
    fit(net.elbo, torch.optim.Adam(net.parameters(), 2e-2), x, y, epochs=8, batch_size=64, progress=False)
    return net


def _data(seed: int, n: int = 360) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes by the sign pattern of x[:, :2]; the labels get noisier away from x[:, 2] = 0."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    flip = torch.rand(n, generator=g) < 0.6 * (1 - torch.exp(-(x[:, 2] ** 2)))
    return x, torch.where(flip, torch.randint(0, 3, (n,), generator=g), y)


def _by_hand(net, x, y, xv, yv, *, layers, per_layer, folds, seed):
    """The recipe the README gave before DensityTemperature existed, step by step."""

    def scores(model, xs, ys):
        d = FeatureDensity(model, layers=layers).fit(xs, ys)
        return d.layer_scores if per_layer else d.score

    fold_of = np.random.default_rng(seed).permutation(len(x)) % folds
    probs, s, labels, ids = [], [], [], []
    for k in range(folds):
        held = torch.from_numpy(fold_of == k)
        m = _train(x[~held], y[~held])
        probs.append(m.predict(x[held]).numpy())
        s.append(scores(m, x[~held], y[~held])(x[held]).numpy())
        labels.append(y[held].numpy())
        ids.append(fold_of[held.numpy()])
    b = fit_score_slope(
        np.concatenate(probs, 1), np.concatenate(labels), np.concatenate(s), np.concatenate(ids)
    )
    own = scores(net, x, y)
    return fit_score_temperature(net.predict(xv).detach(), yv, own(xv), slope=b), own


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 1000), layers=st.sampled_from([None, "all", "hidden"]), per_layer=st.booleans())
def test_it_is_the_cross_fitted_recipe_written_out_by_hand(seed, layers, per_layer):
    x, y = _data(seed)
    xv, yv = _data(seed + 1, 120)
    net = _train(x, y)
    cal = DensityTemperature(net, layers=layers, per_layer=per_layer).fit(
        x, y, xv, yv, train=_train, folds=3, seed=seed, progress=False
    )
    want, own = _by_hand(net, x, y, xv, yv, layers=layers, per_layer=per_layer, folds=3, seed=seed)
    assert cal.cross_fitted and cal.temperature == want
    xt = 3 * _data(seed + 2, 50)[0]
    np.testing.assert_array_equal(cal.temperatures(xt).numpy(), want.temperatures(own(xt)))
    with torch.no_grad():
        np.testing.assert_array_equal(cal.predict(xt).numpy(), want(net.predict(xt), own(xt)).numpy())


def test_it_softens_unusual_inputs_and_never_changes_the_predicted_class():
    x, y = _data(0, 600)
    xv, yv = _data(1, 200)
    net = _train(x, y)
    cal = DensityTemperature(net, layers="hidden", per_layer=True).fit(
        x, y, xv, yv, train=_train, progress=False
    )
    assert isinstance(cal.temperature.b, tuple) and len(cal.temperature.b) == 2  # one slope per hidden layer
    assert max(cal.temperature.b) > 0.3  # the cross-fitted nets' errors grow with the density
    typical, unusual = torch.zeros(1, 3), torch.tensor([[0.0, 0.0, 6.0]])
    assert float(cal.temperatures(unusual)) > 2 * float(cal.temperatures(typical))
    shifted = _data(2, 300)[0] * torch.tensor([1.0, 1.0, 4.0])
    with torch.no_grad():
        base = net.predict(shifted)
    tempered = cal.predict(shifted)
    assert tempered.shape == base.shape
    torch.testing.assert_close(tempered.sum(-1), torch.ones(1, 300))
    assert torch.equal(tempered.argmax(-1), base.argmax(-1))
    t = cal.temperatures(shifted)
    lo, hi = cal.bounds
    assert bool(((t >= lo) & (t <= hi)).all())
    # a softer temperature lowers the top probability wherever T > 1
    soft = t > 1
    assert bool((tempered.max(-1).values[0][soft] <= base.max(-1).values[0][soft] + 1e-6).all())


def test_without_train_the_slope_is_fitted_on_the_validation_data():
    x, y = _data(3)
    xv, yv = _data(4, 150)
    net = _train(x, y)
    cal = DensityTemperature(net).fit(x, y, xv, yv, progress=False)
    density = FeatureDensity(net, layers="all").fit(x, y)
    assert not cal.cross_fitted
    assert cal.temperature == fit_score_temperature(net.predict(xv).detach(), yv, density.score(xv))
    assert "cross_fitted=False" in repr(cal)


def test_a_deep_ensemble_is_tempered_over_its_members():
    x, y = _data(5)
    xv, yv = _data(6, 120)

    def train_ensemble(xs, ys):
        ens = deep_ensemble(_mlp, size=2, seed=len(xs))
        fit(
            ens.elbo,
            torch.optim.Adam(ens.parameters(), 2e-2),
            xs,
            ys,
            epochs=6,
            batch_size=64,
            progress=False,
        )
        return ens

    ens = train_ensemble(x, y)
    cal = DensityTemperature(ens).fit(x, y, xv, yv, train=train_ensemble, folds=2, progress=False)
    out = cal.predict(xv[:7], num_samples=2)
    assert out.shape == (2, 7, 3)  # one draw per member, each tempered
    with torch.no_grad():
        assert torch.equal(out.mean(0).argmax(-1), ens.predict(xv[:7], num_samples=2).mean(0).argmax(-1))


def test_hidden_layers_leave_out_the_first_linear():
    net = _mlp()
    assert FeatureDensity(net, layers="hidden").layer_names == ["2", "4"]
    x, y = _data(7, 90)
    every, hidden = (
        FeatureDensity(net, layers="all").fit(x, y),
        FeatureDensity(net, layers="hidden").fit(x, y),
    )
    torch.testing.assert_close(hidden.layer_scores(x[:9]), every.layer_scores(x[:9])[:, 1:])
    with pytest.raises(
        ValueError, match=r"layers='hidden' reads every nn.Linear but the first; this network has 1"
    ):
        FeatureDensity(nn.Linear(3, 2), layers="hidden")


def test_errors_name_the_problem():
    x, y = _data(8, 90)
    with pytest.raises(TypeError, match="tempers a PointNetwork or an Ensemble of them.*got BNN"):
        DensityTemperature(bayesian(_mlp(), num_data=90))
    with pytest.raises(TypeError, match="got Sequential"):
        DensityTemperature(_mlp())
    with pytest.raises(ValueError, match="layers='nope' is not an nn.Linear"):
        DensityTemperature(PointNetwork(_mlp()), layers="nope")
    cal = DensityTemperature(PointNetwork(_mlp()))
    with pytest.raises(RuntimeError, match=r"call fit\(x, y, x_val, y_val\) before predict"):
        cal.predict(x)
    with pytest.raises(RuntimeError, match="before predict/temperatures"):
        cal.temperatures(x)
    with pytest.raises(ValueError, match="folds must be an integer >= 2"):
        cal.fit(x, y, x[:30], y[:30], train=_train, folds=1, progress=False)
    with pytest.raises(ValueError, match="labels"):
        cal.fit(x, y, x[:30], y[:29], progress=False)
    assert cal.temperature is None  # a failed fit leaves it unfitted


@pytest.mark.parametrize("per_layer", [False, True])
def test_a_saved_state_restores_the_same_predictions_without_refitting(tmp_path, per_layer):
    x, y = _data(9)
    xv, yv = _data(10, 120)
    net = _train(x, y)
    cal = DensityTemperature(net, layers="hidden", per_layer=per_layer).fit(
        x, y, xv, yv, train=_train, folds=2, progress=False
    )
    torch.save(cal.state_dict(), tmp_path / "cal.pt")
    state = torch.load(tmp_path / "cal.pt", weights_only=True)  # tensors and plain values only
    again = DensityTemperature(net, layers="hidden", per_layer=per_layer).load_state_dict(state)
    assert again.temperature == cal.temperature and again.cross_fitted
    xt = 3 * _data(11, 40)[0]
    assert torch.equal(again.predict(xt), cal.predict(xt))
    assert torch.equal(again.temperatures(xt), cal.temperatures(xt))
    with pytest.raises(ValueError, match=r"saved with per_layer=.*this instance has per_layer="):
        DensityTemperature(net, layers="hidden", per_layer=not per_layer).load_state_dict(state)
    with pytest.raises(ValueError, match=r"saved with layers='hidden'; this instance has layers='all'"):
        DensityTemperature(net, per_layer=per_layer).load_state_dict(state)
    with pytest.raises(RuntimeError, match="before predict/temperatures"):
        DensityTemperature(net).state_dict()
