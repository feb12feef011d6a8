"""The Modulator's stepping contract: closure steps for every rule, one modulator per optimizer, the base LR
(and a global rule's state) restored when ``optimizer.step`` raises, LR schedulers before or after attach."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from uncertlr.modulation import (
    GradSigmaRatio,
    Product,
    Ratio,
    SigmaRatio,
    UncertaintyPlateau,
    UncertaintyWarmup,
    VarianceRatio,
    ZScore,
)
from uncertlr.torch import Modulator, bayesian

GLOBAL_RULES = [
    Ratio(warmup=2),
    ZScore(warmup=2),
    UncertaintyPlateau(patience=2, cooldown=1, decay=0.0),
    UncertaintyWarmup(start=0.2, horizon=5),
    Product((UncertaintyWarmup(start=0.5), UncertaintyPlateau(patience=1, cooldown=0))),
]
PER_PARAMETER_RULES = [SigmaRatio(warmup=1), GradSigmaRatio(warmup=1), VarianceRatio(warmup=1)]
SIGNALS = [2.0, 1.5, 1.0, 0.8, 0.8, 0.8, 3.0, 0.8, 0.8, 0.8]


def _setup(seed=0, opt="adam", bnn=False):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    model = bayesian(net, num_data=64) if bnn else net
    params = model.parameters()
    o = {
        "adam": lambda: torch.optim.Adam(params, lr=1e-2),
        "sgd": lambda: torch.optim.SGD(params, lr=0.1, momentum=0.9),
        "adamw": lambda: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
    }[opt]()
    return model, o


def _data(i):
    g = torch.Generator().manual_seed(100 + i)
    return torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)


def _loss(model, x, y):
    if hasattr(model, "loss"):
        torch.manual_seed(7)  # the same weight draw in both runs
        return model.loss(x, y)
    return nn.functional.cross_entropy(model(x), y)


def _train(rule, *, closure, opt="adam", bnn=False, sigma=False, record=True):
    model, o = _setup(opt=opt, bnn=bnn)
    mod = Modulator(rule, sigma=model if sigma else None, record=record).attach(o)
    for i, u in enumerate(SIGNALS):
        x, y = _data(i)
        if closure:

            def fn():
                o.zero_grad()
                loss = _loss(model, x, y)
                loss.backward()
                mod.observe(u)
                return loss

            o.step(fn)
        else:
            o.zero_grad()
            _loss(model, x, y).backward()
            mod.observe(u)
            o.step()
    return [p.detach().clone() for p in model.parameters()], mod


@pytest.mark.parametrize("opt", ["adam", "sgd", "adamw"])
@pytest.mark.parametrize("rule", GLOBAL_RULES, ids=lambda r: type(r).__name__)
def test_closure_step_matches_the_plain_step_for_global_rules(rule, opt):
    plain, m1 = _train(rule, closure=False, opt=opt)
    closed, m2 = _train(rule, closure=True, opt=opt)
    assert [r["scale"] for r in m1.history] == [r["scale"] for r in m2.history]
    assert [r["signal"] for r in m2.history] == pytest.approx(SIGNALS)  # observed inside the closure
    assert any(r["scale"] != 1.0 for r in m2.history)  # the rules did act
    for a, b in zip(plain, closed):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", PER_PARAMETER_RULES, ids=lambda r: type(r).__name__)
@pytest.mark.parametrize("bnn", [False, True], ids=["noise-sigma", "bnn-sigma"])
def test_closure_step_matches_the_plain_step_for_per_parameter_rules(rule, bnn):
    plain, m1 = _train(rule, closure=False, bnn=bnn, sigma=bnn)
    closed, m2 = _train(rule, closure=True, bnn=bnn, sigma=bnn)
    assert [r["scale"] for r in m1.history] == pytest.approx([r["scale"] for r in m2.history])
    for a, b in zip(plain, closed):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("rule", PER_PARAMETER_RULES + GLOBAL_RULES[:1], ids=lambda r: type(r).__name__)
def test_record_false_keeps_no_history_and_takes_the_same_steps(rule):
    per = getattr(rule, "per_parameter", False)
    kept, m1 = _train(rule, closure=False, bnn=per, sigma=per)
    quiet, m2 = _train(rule, closure=False, bnn=per, sigma=per, record=False)
    assert len(m1.history) == len(SIGNALS) and m2.history == [] and m2.num_steps == len(SIGNALS)
    if per:
        assert all(r["scale_min"] <= r["scale"] <= r["scale_max"] for r in m1.history)
        # the rule acted: its factors differ between weights (their mean is 1 up to rounding: renormalised)
        assert any(r["scale_min"] < r["scale_max"] for r in m1.history)
    else:
        assert any(r["scale"] != 1.0 for r in m1.history)  # the rule acted
    for a, b in zip(kept, quiet):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_global_rule_state_is_numpy_whatever_the_parameters_device():
    # on a GPU a state of 0-d device tensors cost ~20 tiny kernels a step and saved no host read
    # (the factor sets the learning rates, Python floats); "meta" stands in for an accelerator
    from uncertlr.torch._state import is_numpy
    from uncertlr.torch._stepping import GlobalMode

    def leaves(state):
        for v in state:
            yield from leaves(v) if isinstance(v, tuple) else (v,)

    for rule in GLOBAL_RULES:
        mode = GlobalMode(rule, [torch.zeros(3, device="meta")])
        found = list(leaves(mode.state))
        assert found and all(is_numpy(v) for v in found), type(rule).__name__


def test_lbfgs_update_is_scaled_and_later_closure_signals_are_dropped():
    class Half:
        per_parameter = False

        def init(self, like=None):
            return Ratio().init(like)

        def update(self, signal, state):
            return state.scale * 0 + 0.5, state._replace(scale=state.scale * 0 + 0.5)

    def run(modulated, max_iter):
        torch.manual_seed(0)
        net = nn.Linear(4, 2)
        x, y = torch.randn(32, 4), torch.randn(32, 2)
        o = torch.optim.LBFGS(net.parameters(), lr=0.5, max_iter=max_iter)
        mod = Modulator(Half()).attach(o) if modulated else None
        before = [p.detach().clone() for p in net.parameters()]
        calls = []

        def fn():
            o.zero_grad()
            loss = ((net(x) - y) ** 2).mean()
            loss.backward()
            calls.append(1)
            if mod is not None:
                mod.observe(float(len(calls)))
            return loss

        o.step(fn)
        return before, [p.detach().clone() for p in net.parameters()], mod, len(calls)

    b0, a0, _, _ = run(False, 1)
    b1, a1, mod, _ = run(True, 1)
    for p0, q0, q1 in zip(b0, a0, a1):  # one LBFGS iteration: the update is exactly halved
        torch.testing.assert_close(q1 - p0, 0.5 * (q0 - p0))
    _, _, mod, calls = run(True, 4)
    assert calls > 1 and mod.history[-1]["signal"] == 1.0  # the first closure call's signal drove it
    with pytest.raises(RuntimeError, match="observe"):  # later calls' signals were not kept
        mod._optimizer.step()


def test_closure_step_without_a_signal_names_the_closure():
    model, o = _setup()
    Modulator(Ratio()).attach(o)
    x, y = _data(0)

    def fn():
        o.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="inside the step's closure"):
        o.step(fn)
    assert o.param_groups[0]["lr"] == 1e-2


def test_one_modulator_per_optimizer():
    model, o = _setup(opt="sgd")
    first = Modulator(Ratio(warmup=0)).attach(o)
    with pytest.raises(RuntimeError, match="already has a Modulator"):
        Modulator(Ratio(warmup=0)).attach(o)
    # the defect this prevents: two modulators made the base LR drift; with one it never moves
    for i in range(4):
        x, y = _data(i)
        o.zero_grad()
        _loss(model, x, y).backward()
        first.observe(1.0 + i)
        o.step()
        assert o.param_groups[0]["lr"] == 0.1
    first.detach()
    Modulator(Ratio()).attach(o)  # free again after detach


def _sparse_grad_step(o, model):
    """Make Adam raise inside its update (after the pre-hook ran): a sparse gradient."""
    p = next(model.parameters())
    p.grad = torch.zeros_like(p).to_sparse()


@pytest.mark.parametrize("rule", [Ratio(warmup=0), UncertaintyPlateau(patience=0, cooldown=0, arm=1.0)])
def test_base_lr_and_rule_state_restored_when_step_raises(rule):
    model, o = _setup()
    mod = Modulator(rule).attach(o)
    ref_model, ref_o = _setup()
    ref = Modulator(rule).attach(ref_o)
    signals = [1.0, 0.5, 4.0, 0.25]
    for i, u in enumerate(signals):
        if i == 2:  # a step that raises, with a modulated LR in place at the time
            _sparse_grad_step(o, model)
            mod.observe(100.0)
            with pytest.raises(RuntimeError, match="sparse"):
                o.step()
            assert o.param_groups[0]["lr"] == 1e-2
            assert o.state_dict()["param_groups"][0]["lr"] == 1e-2  # a checkpoint in `except` is clean
        for m, mo, oo in ((model, mod, o), (ref_model, ref, ref_o)):
            x, y = _data(i)
            oo.zero_grad()
            _loss(m, x, y).backward()
            mo.observe(u)
            oo.step()
    # the raised step left no trace: same factors, history and parameters as a run without it
    assert [r["scale"] for r in mod.history] == [r["scale"] for r in ref.history]
    assert len(mod.history) == len(signals) and mod.num_steps == len(signals)
    for a, b in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("when", ["before", "after"])
def test_lr_schedulers_created_before_or_after_attach_keep_working(when):
    model, o = _setup(opt="sgd")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "optimizer.step() has been overridden" warning
        sched = torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5) if when == "before" else None
        mod = Modulator(Ratio(warmup=0)).attach(o)
        if sched is None:
            sched = torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5)
        for i in range(3):
            x, y = _data(i)
            o.zero_grad()
            _loss(model, x, y).backward()
            mod.observe(1.0 + i)
            o.step()
            sched.step()
    assert o.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    assert [r["lr"] / r["scale"] for r in mod.history] == pytest.approx([0.1, 0.05, 0.025])
    mod.detach()
    x, y = _data(9)
    o.zero_grad()
    _loss(model, x, y).backward()
    o.step()  # detached: a plain step, no signal needed
    if when == "before":
        assert "step" in vars(o)  # the scheduler's own wrapper is back in place
    else:
        assert hasattr(o.step, "_wrapped_by_lr_sched")


def test_detach_removes_the_step_guard():
    model, o = _setup()
    mod = Modulator(Ratio()).attach(o)
    assert "step" in vars(o)
    mod.detach()
    assert "step" not in vars(o)


def test_product_state_checkpoints_and_continues_identically():
    rule = Product((UncertaintyWarmup(start=0.3), UncertaintyPlateau(patience=1, cooldown=0)))
    _, full = _train(rule, closure=False)
    model, o = _setup()
    mod = Modulator(rule).attach(o)
    for i, u in enumerate(SIGNALS[:5]):
        x, y = _data(i)
        o.zero_grad()
        _loss(model, x, y).backward()
        mod.observe(u)
        o.step()
    saved = mod.state_dict()
    resumed = Modulator(rule)
    mod.detach()
    resumed.load_state_dict(saved)
    resumed.attach(o)
    for i, u in enumerate(SIGNALS[5:], start=5):
        x, y = _data(i)
        o.zero_grad()
        _loss(model, x, y).backward()
        resumed.observe(u)
        o.step()
    assert [r["scale"] for r in resumed.history] == [r["scale"] for r in full.history]


# --------------------------------------------------------------------------- the built-in rules on floats

_SIGNAL = st.one_of(
    st.floats(min_value=-5.0, max_value=50.0),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 1e200, 3.4e38, -1e160, float("nan"), float("inf")]),
)
_BUILT_IN = st.one_of(
    st.builds(
        Ratio,
        kappa=st.sampled_from([-3.0, -1.0, -0.5, 0.5, 2.0]),
        s_min=st.sampled_from([0.1, 0.5, 1.0]),
        s_max=st.sampled_from([1.0, 2.0, 10.0]),
        decay=st.sampled_from([0.0, 0.5, 0.99]),
        warmup=st.integers(0, 3),
    ),
    st.builds(
        ZScore,
        kappa=st.sampled_from([-2.0, -1.0, 0.5]),
        s_max=st.sampled_from([1.0, 2.0, 5.0]),
        decay=st.sampled_from([0.0, 0.9, 0.99]),
        warmup=st.integers(0, 3),
        eps=st.sampled_from([1e-8, 1e-3]),
    ),
)


@settings(max_examples=150, deadline=None)
@given(rule=_BUILT_IN, signals=st.lists(_SIGNAL, min_size=1, max_size=12))
def test_the_built_in_rules_on_floats_equal_their_array_code_on_float64(rule, signals):
    from uncertlr.torch._stepping import _floats, host_update

    ref = rule.init(np.zeros((), np.float64))
    fast = _floats(ref)
    for u in signals:
        want, ref = rule.update(np.float64(u), ref)
        got, fast = host_update(rule, float(u), fast)
        # pow, exp and tanh may come from different libm/SIMD code in numpy: a few ulps
        np.testing.assert_allclose(got, float(want), rtol=1e-13, atol=0)
        for name, a, b in zip(ref._fields, fast, ref):
            np.testing.assert_allclose(a, float(b), rtol=1e-13, atol=0, err_msg=name)


def test_the_modulator_runs_the_built_in_rules_on_floats_and_shows_float64_arrays():
    net, opt = _setup()
    mod = Modulator(Ratio(warmup=1)).attach(opt)
    ref = Ratio(warmup=1).init(np.zeros((), np.float64))
    x, y = _data(0)
    for u in SIGNALS:
        opt.zero_grad()
        _loss(net, x, y).backward()
        mod.observe(torch.tensor(u))
        opt.step()
        s, ref = Ratio(warmup=1).update(np.float64(np.float32(u)), ref)
        assert mod.history[-1]["scale"] == pytest.approx(float(s), rel=1e-13)
    state = mod.rule_state
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float64 and v.shape == () for v in state)
    assert mod.last_scale.dtype == torch.float64
    # a checkpoint holds the same values and restores them
    fresh = Modulator(Ratio(warmup=1)).attach(_setup()[1])
    fresh.load_state_dict(mod.state_dict())
    assert [float(v) for v in fresh.rule_state] == [float(v) for v in state]
