"""uncertlr.torch.Modulator: exact step scaling for SGD/Adam/AdamW, schedulers, checkpoints, signals."""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from uncertlr import metrics
from uncertlr.modulation import GradSigmaRatio, ParamSignal, Ratio, SigmaRatio, ZScore
from uncertlr.torch import (
    Modulator,
    batch_entropy,
    batch_mutual_information,
    bayesian,
    confidence_weighted_nll,
)

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
}


class _S(NamedTuple):
    scale: torch.Tensor


@dataclass(frozen=True)
class ConstantGlobal:
    """A user-written global rule: always the same factor."""

    s: float

    def init(self, like=None):
        return _S(torch.ones(()))

    def update(self, signal, state):
        s = torch.full((), self.s)
        return s, _S(s)


@dataclass(frozen=True)
class FixedPerElement:
    """A user-written per-parameter rule: fixed random factors in [0.2, 3], one per element."""

    seed: int = 0
    per_parameter = True

    def init(self, like):
        g = torch.Generator().manual_seed(self.seed + like.numel())
        return _S(0.2 + 2.8 * torch.rand(like.shape, generator=g, dtype=like.dtype))

    def update(self, signal, state):
        assert isinstance(signal, ParamSignal) and signal.grad.shape == state.scale.shape
        return state.scale, state


def mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def data(n=16, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def _one_step(net, opt, x, y, mod=None, signal=1.0):
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    if mod is not None:
        mod.observe(signal)
    before = [p.detach().clone() for p in net.parameters()]
    opt.step()
    return [p.detach() - b for p, b in zip(net.parameters(), before)]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("s", [0.3, 1.7])
def test_constant_global_factor_scales_the_step_exactly(name, s):
    x, y = data()
    net_a, net_b = mlp(), mlp()
    opt_a, opt_b = OPTIMIZERS[name](net_a.parameters()), OPTIMIZERS[name](net_b.parameters())
    for _ in range(2):  # a plain step first, so momentum/Adam moments are non-trivial
        _one_step(net_a, opt_a, x, y)
        _one_step(net_b, opt_b, x, y)
    mod = Modulator(ConstantGlobal(s)).attach(opt_b)
    da = _one_step(net_a, opt_a, x, y)
    db = _one_step(net_b, opt_b, x, y, mod)
    for a, b in zip(da, db):
        torch.testing.assert_close(b, s * a, rtol=1e-5, atol=1e-7)
    assert opt_b.param_groups[0]["lr"] == opt_a.param_groups[0]["lr"]
    # the optimizer's own state never sees the factor
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for k in sa["state"]:
        for key, v in sa["state"][k].items():
            torch.testing.assert_close(sb["state"][k][key], v, rtol=1e-6, atol=1e-8)
    assert mod.history[-1]["scale"] == pytest.approx(s) and mod.history[-1]["lr"] == pytest.approx(
        s * opt_a.param_groups[0]["lr"]
    )


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_per_parameter_factors_rescale_each_element_exactly(name):
    x, y = data()
    net_a, net_b = mlp(), mlp()
    opt_a, opt_b = OPTIMIZERS[name](net_a.parameters()), OPTIMIZERS[name](net_b.parameters())
    _one_step(net_a, opt_a, x, y)
    _one_step(net_b, opt_b, x, y)
    rule = FixedPerElement()
    mod = Modulator(rule).attach(opt_b)
    da = _one_step(net_a, opt_a, x, y)
    db = _one_step(net_b, opt_b, x, y, mod)
    for p, a, b in zip(net_b.parameters(), da, db):
        s = rule.init(p.detach().reshape(-1)).scale.view_as(p)
        torch.testing.assert_close(b, s * a, rtol=1e-5, atol=1e-7)
    for s, p in zip(mod.last_scale, net_b.parameters()):
        assert s.shape == p.shape
    assert {"step", "scale", "scale_min", "scale_max", "lr", "signal"} <= set(mod.history[-1])


def test_scheduler_sequence_is_unchanged_with_clipping():
    x, y = data()

    def run(modulate):
        net = mlp()
        opt = torch.optim.Adam(net.parameters(), lr=3e-2)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-2, total_steps=12)
        mod = Modulator(Ratio(warmup=0, s_min=0.5, s_max=2.0)).attach(opt) if modulate else None
        lrs = []
        for i in range(12):
            opt.zero_grad()
            logits = net(x)
            nn.functional.cross_entropy(logits, y).backward()
            nn.utils.clip_grad_norm_(net.parameters(), 0.5)
            if mod:
                mod.observe(batch_entropy(logits) * (1 + i % 3))
            opt.step()
            sched.step()
            lrs.append(
                (sched.get_last_lr()[0], opt.param_groups[0]["lr"], opt.state_dict()["param_groups"][0]["lr"])
            )
        return lrs, mod

    plain, _ = run(False)
    modulated, mod = run(True)
    assert plain == modulated
    assert any(abs(r["scale"] - 1.0) > 1e-3 for r in mod.history)  # the factor did act


def test_hooks_only_touch_their_optimizer():
    x, y = data()
    net_a, net_b = mlp(), mlp()
    opt_a, opt_b = torch.optim.SGD(net_a.parameters(), lr=0.1), torch.optim.SGD(net_b.parameters(), lr=0.1)
    Modulator(ConstantGlobal(0.5)).attach(opt_a)
    ref = mlp()
    opt_r = torch.optim.SGD(ref.parameters(), lr=0.1)
    db = _one_step(net_b, opt_b, x, y)  # no observe needed: opt_b has no modulator
    dr = _one_step(ref, opt_r, x, y)
    for a, b in zip(db, dr):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _train(bnn_or_net, opt, mod, sched, steps, x, y):
    for _ in range(steps):
        opt.zero_grad()
        if hasattr(bnn_or_net, "elbo"):
            terms = bnn_or_net.elbo(x, y, num_particles=2)
            terms.loss.backward()
            mod.observe(batch_mutual_information(terms.outputs) + batch_entropy(terms.outputs))
        else:
            logits = bnn_or_net(x)
            nn.functional.cross_entropy(logits, y).backward()
            mod.observe(batch_entropy(logits))
        opt.step()
        sched.step()


@pytest.mark.parametrize("kind", ["g1", "g2", "p2-bnn", "p1-noise"])
def test_state_dict_round_trip_continues_bit_identically(kind):
    x, y = data(32)

    def build():
        torch.manual_seed(3)
        if kind == "p2-bnn":
            model = bayesian(mlp(), num_data=32)
            rule, kw = GradSigmaRatio(warmup=2), {"sigma": model}
        else:
            model = mlp()
            rule = {"g1": Ratio(warmup=2), "g2": ZScore(warmup=2), "p1-noise": SigmaRatio(warmup=2)}[kind]
            kw = {}
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 20)
        return model, opt, Modulator(rule, **kw).attach(opt), sched

    model, opt, mod, sched = build()
    _train(model, opt, mod, sched, 5, x, y)
    buf = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "sched": sched.state_dict(),
            "mod": mod.state_dict(),
            "rng": torch.get_rng_state(),
        },
        buf,
    )
    _train(model, opt, mod, sched, 5, x, y)
    want = [p.detach().clone() for p in model.parameters()]

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model2, opt2, mod2, sched2 = build()
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    mod2.load_state_dict(saved["mod"])
    torch.set_rng_state(saved["rng"])
    assert mod2.num_steps == 5 and len(mod2.history) == 5
    _train(model2, opt2, mod2, sched2, 5, x, y)
    for a, b in zip(want, model2.parameters()):
        assert torch.equal(a, b.detach())
    assert mod2.history == mod.history


def test_load_state_dict_checks_keys_and_rule():
    opt = torch.optim.SGD(mlp().parameters(), lr=0.1)
    mod = Modulator(Ratio()).attach(opt)
    sd = mod.state_dict()
    with pytest.raises(KeyError, match="missing"):
        Modulator(Ratio()).load_state_dict({k: v for k, v in sd.items() if k != "history"})
    with pytest.raises(ValueError, match="rule"):
        Modulator(Ratio(kappa=0.5)).attach(torch.optim.SGD(mlp().parameters(), lr=0.1)).load_state_dict(sd)
    # loaded before attach: applied on attach
    m2 = Modulator(Ratio())
    m2.load_state_dict(sd)
    m2.attach(torch.optim.SGD(mlp().parameters(), lr=0.1))
    assert m2.num_steps == 0


@pytest.mark.parametrize("rule", [Ratio(warmup=0), GradSigmaRatio(warmup=0)])
def test_max_history_keeps_the_newest_records_across_a_checkpoint(rule):
    """A long run keeps a bounded history; a full one (max_history=None) keeps every record."""

    def run(max_history, steps, state=None):
        torch.manual_seed(0)
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        mod = Modulator(rule, max_history=max_history).attach(opt)
        if state is not None:
            mod.load_state_dict(state)
        x = torch.randn(16, 6)
        for _ in range(steps):
            opt.zero_grad()
            out = model(x)
            out.square().mean().backward()
            mod.observe(batch_entropy(out))
            opt.step()
        return mod

    full, short = run(None, 12), run(5, 12)
    assert len(full.history) == 12 and len(short.history) == 5
    assert list(short.history) == list(full.history)[-5:]  # the newest five, oldest first
    resumed = run(5, 3, state=short.state_dict())  # the checkpoint holds the 5 records, and stays bounded
    assert len(resumed.history) == 5 and resumed.num_steps == 15
    assert [r["step"] for r in resumed.history] == [10.0, 11.0, 12.0, 13.0, 14.0]
    with pytest.raises(ValueError, match="max_history"):
        Modulator(rule, max_history=0)


@given(signals=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=8))
def test_nonfinite_signal_never_makes_a_nonfinite_parameter(signals):
    x, y = data(8)
    net = mlp()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    mod = Modulator(Ratio(warmup=0, s_max=2.0)).attach(opt)
    for u in signals:
        _one_step(net, opt, x, y, mod, signal=u)
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert all(0.5 <= r["scale"] <= 2.0 for r in mod.history)
    # held and counted: NaN/inf, and only those. observe() takes the signal as float32 and the rule's state is
    # float64, where the square of any finite float32 signal is finite (float32 state held |u| > ~1.8e19 too)
    with np.errstate(over="ignore"):
        held = sum(not np.isfinite(np.float32(u)) for u in signals)
    assert int(mod.rule_state.nonfinite) == held


def test_nonfinite_sigma_holds_the_per_parameter_factors():
    x, y = data(8)
    net = mlp()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    bad = {"on": False}

    def sigma():
        return {
            p: torch.full_like(p, float("nan")) if bad["on"] else p.detach().abs() + 0.1
            for p in net.parameters()
        }

    mod = Modulator(SigmaRatio(warmup=0), sigma=sigma).attach(opt)
    _one_step(net, opt, x, y, mod)
    before = [s.clone() for s in mod.last_scale]
    bad["on"] = True
    _one_step(net, opt, x, y, mod)
    for a, b in zip(before, mod.last_scale):
        assert torch.equal(a, b)
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_bnn_p2_modulates_only_the_posterior_means():
    x, y = data(32)
    torch.manual_seed(5)
    bnn_a = bayesian(mlp(), num_data=32)
    bnn_b = copy.deepcopy(bnn_a)
    opt_a, opt_b = (
        torch.optim.Adam(bnn_a.parameters(), lr=1e-2),
        torch.optim.Adam(bnn_b.parameters(), lr=1e-2),
    )
    mod = Modulator(GradSigmaRatio(warmup=0, decay=0.0), sigma=bnn_b).attach(opt_b)
    for bnn, opt, m in ((bnn_a, opt_a, None), (bnn_b, opt_b, mod)):
        torch.manual_seed(7)
        opt.zero_grad()
        terms = bnn.elbo(x, y)
        terms.loss.backward()
        loc0, ls0 = bnn.posterior.loc.detach().clone(), bnn.posterior.log_scale.detach().clone()
        if m is not None:
            grad, sigma = bnn.posterior.loc.grad.clone(), bnn.posterior.scale.detach().clone()
            m.observe(batch_entropy(terms.outputs))
        opt.step()
        if m is None:
            d_loc, d_ls = bnn.posterior.loc.detach() - loc0, bnn.posterior.log_scale.detach() - ls0
    (s,) = mod.last_scale
    torch.testing.assert_close(bnn_b.posterior.log_scale.detach() - ls0, d_ls, rtol=0, atol=0)
    torch.testing.assert_close(bnn_b.posterior.loc.detach() - loc0, s * d_loc, rtol=1e-5, atol=1e-8)
    # an independent P2 per named parameter: |g| sigma against its own tensor's mean
    start = 0
    for size in bnn_b.posterior.sizes:
        m = grad[start : start + size].abs() * sigma[start : start + size]
        tiny = torch.finfo(m.dtype).tiny
        want = ((m + tiny) / (m.mean() + tiny)).pow(-0.5).clamp(0.25, 4.0)
        torch.testing.assert_close(s[start : start + size], want / want.mean(), rtol=1e-5, atol=1e-6)
        start += size


def test_signals_match_metrics_without_a_second_forward_pass():
    torch.manual_seed(0)
    logits = torch.randn(4, 10, 3)
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(batch_entropy(logits), metrics.predictive_entropy(p).mean())
    torch.testing.assert_close(batch_mutual_information(logits), metrics.mutual_information(p).mean())
    torch.testing.assert_close(batch_entropy(logits[0]), metrics.predictive_entropy(p[0]).mean())
    with pytest.raises(ValueError, match="logits"):
        batch_entropy(torch.randn(3))


def test_confidence_weighted_nll_against_manual():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 4)
    y = torch.tensor([0, 1, 2, 3, 0])
    h = metrics.predictive_entropy(torch.softmax(logits, -1))
    w = (h / h.mean()).pow(-0.5).clamp(0.25, 4.0)
    w = w / w.mean()
    nll = torch.stack([nn.functional.cross_entropy(lg, y, reduction="none") for lg in logits]).mean(0)
    torch.testing.assert_close(confidence_weighted_nll(logits, y), (w * nll).mean(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="labels"):
        confidence_weighted_nll(logits, y[:3])


def test_misuse_is_reported():
    opt = torch.optim.SGD(mlp().parameters(), lr=0.1)
    mod = Modulator(Ratio()).attach(opt)
    with pytest.raises(RuntimeError, match="observe"):
        opt.step()
    assert opt.param_groups[0]["lr"] == 0.1
    with pytest.raises(RuntimeError, match="already attached"):
        mod.attach(opt)
    with pytest.raises(ValueError, match="per-parameter"):
        Modulator(Ratio(), sigma=lambda: {})
    with pytest.raises(TypeError, match="rule"):
        Modulator(object())
    with pytest.raises(ValueError, match="scalar"):
        mod.observe(torch.ones(3))
    mod.detach()
    opt.step()  # detached: a plain step again


def test_signal_is_all_reduced_under_torch_distributed(tmp_path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        calls = []
        orig = dist.all_reduce

        def spy(t, *a, **k):
            calls.append(float(t))
            return orig(t, *a, **k)

        dist.all_reduce = spy
        try:
            net = mlp()
            opt = torch.optim.SGD(net.parameters(), lr=0.1)
            mod = Modulator(Ratio(warmup=0)).attach(opt)
            x, y = data(8)
            _one_step(net, opt, x, y, mod, signal=0.7)
        finally:
            dist.all_reduce = orig
        assert calls == [pytest.approx(0.7)] and mod.history[-1]["signal"] == pytest.approx(0.7)
    finally:
        dist.destroy_process_group()
