"""Modulator(..., variance=LayerScaleCap(...), sigma=bnn): the per-layer trust region on the posterior
log-std, checked against the unmodulated step of the same optimizer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from uncertlr.modulation import LayerScaleCap, Ratio, SigmaRatio
from uncertlr.torch import Modulator, bayesian


def _bnn(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
    return bayesian(net, num_data=64, init_scale=1e-2)


def _batch(i):
    g = torch.Generator().manual_seed(100 + i)
    return torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)


def _steps(bnn, opt, mod, n, signal=False):
    for i in range(n):
        x, y = _batch(i)
        opt.zero_grad()
        torch.manual_seed(1000 + i)  # the same weight noise with and without the modulator
        terms = bnn.elbo(x, y)
        terms.loss.backward()
        if signal:
            mod.observe(terms.loss.detach())
        opt.step()


def _layer_rms(d, sizes):
    return torch.stack([s.square().mean().sqrt() for s in d.split(sizes)])


def test_each_layers_log_std_step_is_cut_to_the_cap_and_the_means_keep_their_step():
    cap = 1e-3
    a, b = _bnn(), _bnn()
    opt_a = torch.optim.Adam(a.parameters(), lr=0.1)
    opt_b = torch.optim.Adam(b.parameters(), lr=0.1)
    mod = Modulator(None, variance=LayerScaleCap(max_step=cap), sigma=b).attach(opt_b)
    before = b.posterior.log_scale.detach().clone()
    _steps(a, opt_a, None, 1)
    _steps(b, opt_b, mod, 1)
    sizes = list(b.posterior.sizes)
    proposed = a.posterior.log_scale.detach() - before
    taken = b.posterior.log_scale.detach() - before
    # Adam's first step is ~lr in every coordinate: every layer is cut, to exactly the cap in RMS
    torch.testing.assert_close(_layer_rms(taken, sizes), torch.full((len(sizes),), cap), rtol=1e-4, atol=0)
    # per layer, not per weight: the direction within each layer is Adam's
    for p_l, t_l in zip(proposed.split(sizes), taken.split(sizes)):
        torch.testing.assert_close(t_l, p_l * (cap / p_l.square().mean().sqrt()), rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(b.posterior.loc, a.posterior.loc, rtol=0, atol=0)
    assert opt_b.param_groups[0]["lr"] == 0.1
    rec = mod.history[-1]
    assert rec["variance_scale"] == pytest.approx(cap / 0.1, rel=1e-3) and rec["lr"] == 0.1
    assert mod.variance_state.capped.tolist() == [1.0] * len(sizes)


def test_small_steps_are_left_exactly_alone():
    a, b = _bnn(), _bnn()
    opt_a = torch.optim.Adam(a.parameters(), lr=1e-5)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-5)
    mod = Modulator(None, variance=LayerScaleCap(max_step=1e-3), sigma=b).attach(opt_b)
    _steps(a, opt_a, None, 5)
    _steps(b, opt_b, mod, 5)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    assert float(mod.variance_state.capped.sum()) == 0 and float(mod.variance_state.step) == 5


def test_combines_with_a_global_rule_and_with_a_per_parameter_rule():
    bnn = _bnn()
    opt = torch.optim.Adam(bnn.parameters(), lr=0.05)
    mod = Modulator(Ratio(warmup=0), variance=LayerScaleCap(1e-3), sigma=bnn).attach(opt)
    _steps(bnn, opt, mod, 3, signal=True)
    assert {"scale", "signal", "variance_scale", "variance_scale_min", "lr"} <= set(mod.history[-1])
    assert opt.param_groups[0]["lr"] == 0.05
    bnn2 = _bnn()
    opt2 = torch.optim.Adam(bnn2.parameters(), lr=0.05)
    mod2 = Modulator(SigmaRatio(warmup=0), variance=LayerScaleCap(1e-3), sigma=bnn2).attach(opt2)
    _steps(bnn2, opt2, mod2, 3)
    assert "variance_scale" in mod2.history[-1] and float(mod2.variance_state.capped.min()) == 3


def test_state_dict_round_trip_continues_bit_identically():
    def run(split):
        bnn = _bnn()
        opt = torch.optim.Adam(bnn.parameters(), lr=0.05)
        mod = Modulator(None, variance=LayerScaleCap(1e-3), sigma=bnn).attach(opt)
        _steps(bnn, opt, mod, split)
        if split < 6:
            saved = {"bnn": bnn.state_dict(), "opt": opt.state_dict(), "mod": mod.state_dict()}
            bnn = _bnn(seed=7)
            opt = torch.optim.Adam(bnn.parameters(), lr=0.05)
            mod = Modulator(None, variance=LayerScaleCap(1e-3), sigma=bnn)
            mod.load_state_dict(saved["mod"])  # before attach: applied when attaching
            mod.attach(opt)
            bnn.load_state_dict(saved["bnn"])
            opt.load_state_dict(saved["opt"])
            for i in range(split, 6):
                x, y = _batch(i)
                opt.zero_grad()
                torch.manual_seed(1000 + i)
                bnn.elbo(x, y).loss.backward()
                opt.step()
        return bnn, mod

    full, mod_full = run(6)
    resumed, mod_res = run(3)
    for p, q in zip(full.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    torch.testing.assert_close(mod_full.variance_state.capped, mod_res.variance_state.capped)


def test_state_dict_mismatches_are_named_and_change_nothing():
    bnn = _bnn()
    opt = torch.optim.Adam(bnn.parameters(), lr=0.05)
    with_var = Modulator(Ratio(warmup=0), variance=LayerScaleCap(1e-3), sigma=bnn).attach(opt)
    _steps(bnn, opt, with_var, 2, signal=True)
    saved = with_var.state_dict()
    bnn2 = _bnn()
    opt2 = torch.optim.Adam(bnn2.parameters(), lr=0.05)
    plain = Modulator(Ratio(warmup=0)).attach(opt2)
    before = plain.state_dict()
    with pytest.raises(ValueError, match="holds a variance rule state, but this Modulator has none"):
        plain.load_state_dict(saved)
    assert plain.state_dict()["num_steps"] == before["num_steps"]
    # a state saved before variance rules existed (no variance_state key) still loads
    old = {k: v for k, v in before.items() if k != "variance_state"}
    plain.load_state_dict(old)
    other = Modulator(Ratio(warmup=0), variance=LayerScaleCap(2e-3), sigma=bnn2)
    plain.detach()
    other.attach(opt2)
    with pytest.raises(ValueError, match="variance rule was"):
        other.load_state_dict(saved)
    assert float(other.variance_state.step) == 0


def test_wrong_arguments_are_named():
    bnn = _bnn()
    with pytest.raises(TypeError, match="needs a rule, a variance rule"):
        Modulator(None)
    with pytest.raises(TypeError, match="needs sigma=bnn"):
        Modulator(Ratio(), variance=LayerScaleCap())
    with pytest.raises(TypeError, match="pass it as variance="):
        Modulator(LayerScaleCap(), sigma=bnn)
    with pytest.raises(TypeError, match="takes a per-layer rule"):
        Modulator(None, variance=Ratio(), sigma=bnn)
    net_opt = torch.optim.Adam(nn.Linear(2, 2).parameters())
    with pytest.raises(ValueError, match="log_scale is not among the optimizer's parameters"):
        Modulator(None, variance=LayerScaleCap(), sigma=bnn).attach(net_opt)
