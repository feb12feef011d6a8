"""Every method behind one predict: metrics, signals, the modulator (sigma= callables), checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uncertlr import metrics, select
from uncertlr.calibration import fit_temperature
from uncertlr.modulation import GradSigmaRatio, Ratio
from uncertlr.torch import (
    LastLayerLaplace,
    Modulator,
    PointNetwork,
    batch_entropy,
    batch_mutual_information,
    bayesian,
    deep_ensemble,
    fit,
    mc_dropout,
)


def _mlp():
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def _data(n=96):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 1).long()


TRAINABLE = {
    "bnn-lowrank": lambda: bayesian(_mlp(), num_data=96, guide="lowrank", rank=4, init_scale=1e-2),
    "bnn-full-last": lambda: bayesian(_mlp(), num_data=96, guide="full", select=select.last_layer()),
    "ensemble": lambda: deep_ensemble(_mlp(), size=3, seed=0),
    "bnn-ensemble": lambda: deep_ensemble(lambda: bayesian(_mlp(), num_data=96), size=2, seed=0),
    "mc-dropout": lambda: mc_dropout(_mlp(), p=0.2),
}


def _sigma(model):
    return model if hasattr(model, "posterior") else model.parameter_scale


@pytest.mark.parametrize("name", sorted(TRAINABLE))
def test_train_with_both_modulator_modes_then_score(name):
    """fit + a global rule from the ELBO's own outputs, then a per-parameter rule with the method's σ."""
    x, y = _data()
    for rule in (Ratio(kappa=-0.5, warmup=2), GradSigmaRatio(warmup=2)):
        torch.manual_seed(0)
        model = TRAINABLE[name]()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        per = rule.per_parameter
        mod = Modulator(rule, sigma=_sigma(model) if per else None).attach(opt)
        before = None if per else (lambda t, m=mod: m.observe(batch_entropy(t.outputs)))
        hist = fit(model.elbo, opt, x, y, epochs=5, batch_size=32, before_step=before, progress=False)
        assert len(mod.history) == len(hist) == 15
        # a per-parameter rule renormalises to mean 1 per tensor: its spread shows it acts
        scales = [h["scale_min" if per else "scale"] for h in mod.history[3:]]
        assert all(np.isfinite(scales)) and any(s != 1.0 for s in scales)
        assert np.mean([h["loss"] for h in hist[-3:]]) < np.mean([h["loss"] for h in hist[:3]])
    probs = model.predict(x, num_samples=8)
    assert probs.dim() == 3 and probs.shape[1:] == (96, 3)
    majority = float(y.bincount().max()) / len(y)
    assert float(metrics.accuracy(probs, y)) > majority + 0.05
    h, mi = metrics.predictive_entropy(probs), metrics.mutual_information(probs)
    assert bool((mi >= -1e-6).all() and (mi <= h + 1e-6).all())
    if probs.shape[0] > 1:
        assert float(mi.mean()) > 0
    t = fit_temperature(probs, y)
    assert t(probs).shape == probs.shape
    terms = model.elbo(x[:8], y[:8])
    assert 0 <= float(batch_entropy(terms.outputs)) <= float(np.log(3))
    if terms.outputs.shape[0] > 1:
        assert float(batch_mutual_information(terms.outputs)) >= 0


def test_laplace_sigma_drives_a_per_parameter_rule_on_the_deterministic_net():
    x, y = _data()
    net = PointNetwork(_mlp())
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    fit(net.elbo, opt, x, y, epochs=5, batch_size=32, progress=False)
    la = LastLayerLaplace(net).fit(x, y)
    mod = Modulator(GradSigmaRatio(warmup=0), sigma=la.parameter_scale).attach(opt)
    before = net.net[2].weight.detach().clone()
    fit(net.elbo, opt, x, y, epochs=1, batch_size=32, progress=False)
    assert not torch.equal(before, net.net[2].weight)
    assert len(mod.history) == 3 and mod.history[-1]["scale"] > 0
    probs = la.predict(x, num_samples=16)
    assert (
        float(
            metrics.ood_auroc(
                metrics.predictive_entropy(probs[:, :48]), metrics.predictive_entropy(probs[:, 48:])
            )
        )
        >= 0
    )


@pytest.mark.parametrize("name", ["bnn-lowrank", "ensemble", "mc-dropout"])
def test_state_dict_round_trip_gives_identical_predictions(name):
    torch.manual_seed(0)
    a, b = TRAINABLE[name](), TRAINABLE[name]()
    x, y = _data()
    opt = torch.optim.Adam(a.parameters(), lr=1e-2)
    fit(a.elbo, opt, x, y, epochs=1, batch_size=32, progress=False)
    b.load_state_dict(a.state_dict())
    torch.manual_seed(5)
    pa = a.predict(x, num_samples=4)
    torch.manual_seed(5)
    assert torch.equal(pa, b.predict(x, num_samples=4))
