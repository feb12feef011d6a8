"""uncertlr.modulation: the rules against independent float loops, bounds, κ direction, non-finite signals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from uncertlr.modulation import (
    G1,
    G2,
    P1,
    P2,
    P3,
    GradientNoise,
    GradSigmaRatio,
    ParamSignal,
    Ratio,
    SigmaRatio,
    VarianceRatio,
    ZScore,
    confidence_weights,
)

signals = st.lists(
    st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False), min_size=1, max_size=40
)
kappas = st.floats(min_value=-2.0, max_value=2.0).filter(lambda k: abs(k) > 1e-3)


def _reference_ratio(rule: Ratio, us: list[float]) -> list[float]:
    """G1 written as a plain float loop (bias-corrected EMA of the finite signals seen before)."""
    out, m, count, step, s_prev = [], 0.0, 0, 0, 1.0
    for u in us:
        if not math.isfinite(u):
            out.append(s_prev)
            step += 1
            continue
        if step >= rule.warmup and count > 0:
            ubar = m / (1 - rule.decay**count)
            s = min(max((u / ubar) ** rule.kappa, rule.s_min), rule.s_max)
        else:
            s = 1.0
        m = rule.decay * m + (1 - rule.decay) * u
        count += 1
        step += 1
        s_prev = s
        out.append(s)
    return out


def _run(rule, us, like=None):
    state = rule.init(like)
    out = []
    for u in us:
        s, state = rule.update(u, state)
        out.append(float(s))
    return out, state


def test_short_names():
    assert (G1, G2, P1, P2, P3) == (Ratio, ZScore, SigmaRatio, GradSigmaRatio, VarianceRatio)
    assert not G1.per_parameter and not G2.per_parameter
    assert P1.per_parameter and P2.per_parameter and P3.per_parameter


@given(us=signals, kappa=kappas, warmup=st.integers(0, 5), decay=st.floats(0.0, 0.999))
def test_ratio_matches_float_loop_and_stays_in_bounds(us, kappa, warmup, decay):
    rule = Ratio(kappa=kappa, warmup=warmup, decay=decay, s_min=0.5, s_max=2.0)
    got, state = _run(rule, us, np.zeros((), np.float64))
    np.testing.assert_allclose(got, _reference_ratio(rule, us), rtol=1e-9, atol=1e-12)
    assert all(0.5 <= s <= 2.0 for s in got)
    assert got[: min(warmup, len(us))] == [1.0] * min(warmup, len(us))
    assert int(state.step) == len(us) and int(state.nonfinite) == 0


@given(history=signals, u=st.floats(1e-3, 1e3), kappa=kappas)
def test_ratio_direction_follows_kappa(history, u, kappa):
    rule = Ratio(kappa=kappa, warmup=0, s_min=0.01, s_max=100.0)
    state = rule.init(np.zeros((), np.float64))
    for h in history:
        _, state = rule.update(h, state)
    ubar = float(state.mean) / (1 - rule.decay ** float(state.count))
    s, _ = rule.update(u, state)
    s = float(s)
    if abs(u - ubar) < 1e-9 * ubar:
        return
    more_uncertain = u > ubar
    # kappa < 0: more uncertain -> smaller step; kappa > 0: the opposite
    assert (s < 1.0) == (more_uncertain == (kappa < 0)) or math.isclose(s, 1.0, rel_tol=1e-9)


@given(us=st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=40), kappa=kappas)
def test_zscore_bounds_and_direction(us, kappa):
    rule = ZScore(kappa=kappa, warmup=0, s_max=3.0)
    state = rule.init(np.zeros((), np.float64))
    for u in us:
        c = float(state.count)
        corr = 1 - rule.decay**c if c else 1.0
        mean = float(state.mean) / corr
        var = max(float(state.sq) / corr - mean * mean, 0.0)
        s, state = rule.update(u, state)
        s = float(s)
        assert 1 / 3.0 - 1e-12 <= s <= 3.0 + 1e-12
        if c == 0:
            assert s == 1.0
            continue
        z = (u - mean) / math.sqrt(var + rule.eps**2)
        # a constant signal leaves var ~ 0, where z is rounding noise / eps (~1e-7): compare the factor
        # to 1e-6 absolute, not to the last bit of that noise
        assert math.isclose(s, 3.0 ** math.tanh(kappa * z), rel_tol=1e-9, abs_tol=1e-6)
        if abs(z) > 1e-6:
            assert (s < 1.0) == ((z > 0) == (kappa < 0))


@pytest.mark.parametrize("rule", [Ratio(warmup=1), ZScore(warmup=1)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_signal_holds_the_scale_and_is_counted(rule, bad):
    got, state = _run(rule, [1.0, 1.0, 3.0, bad, bad, 3.0])
    assert got[3] == got[4] == got[2] != 1.0
    assert int(state.nonfinite) == 2 and int(state.count) == 4
    clean, clean_state = _run(rule, [1.0, 1.0, 3.0, 3.0])
    # the non-finite signals left the running statistics untouched
    assert got[5] == clean[3] and float(state.mean) == float(clean_state.mean)


def test_rules_run_on_numpy_torch_and_jax_alike():
    torch = pytest.importorskip("torch")
    jnp = pytest.importorskip("jax.numpy")
    us = [0.5, 0.7, 2.0, float("nan"), 0.1]
    ref, _ = _run(Ratio(warmup=1), us)
    tor, st_t = _run(Ratio(warmup=1), [torch.tensor(u) for u in us], torch.zeros(()))
    jx, st_j = _run(Ratio(warmup=1), [jnp.asarray(u) for u in us], jnp.zeros(()))
    np.testing.assert_allclose(tor, ref, rtol=1e-6)
    np.testing.assert_allclose(jx, ref, rtol=1e-6)
    assert isinstance(st_t.scale, torch.Tensor) and type(st_j.scale).__module__.startswith("jax")


def test_bad_rule_fields_and_signals_are_named():
    with pytest.raises(ValueError, match="bounds"):
        Ratio(s_min=1.5)
    with pytest.raises(ValueError, match="kappa"):
        Ratio(kappa=float("nan"))
    with pytest.raises(ValueError, match="decay"):
        GradSigmaRatio(decay=1.0)
    with pytest.raises(ValueError, match="warmup"):
        SigmaRatio(warmup=-1)
    with pytest.raises(ValueError, match="s_max"):
        ZScore(s_max=0.5)
    rule = Ratio()
    with pytest.raises(ValueError, match="scalar"):
        rule.update(np.ones(3), rule.init())
    p = SigmaRatio()
    with pytest.raises(TypeError, match="ParamSignal"):
        p.update(np.ones(3), p.init(np.zeros(3)))
    g = GradSigmaRatio()
    with pytest.raises(ValueError, match="gradient"):
        g.update(ParamSignal(None, np.ones(3)), g.init(np.zeros(3)))


# --------------------------------------------------------------------------- per-parameter rules

arrays = st.lists(st.floats(1e-4, 1e2), min_size=2, max_size=12)


def _reference_param(kappa, lo, hi, measure, renormalize):
    m = np.asarray(measure, np.float64)
    s = np.clip((m / m.mean()) ** kappa, lo, hi)
    return s / s.mean() if renormalize else s


@pytest.mark.parametrize("cls,power", [(SigmaRatio, 1), (VarianceRatio, 2)])
@given(sigma=arrays, kappa=kappas, renorm=st.booleans())
def test_sigma_rules_match_numpy_and_respect_bounds_and_direction(cls, power, sigma, kappa, renorm):
    rule = cls(kappa=kappa, warmup=0, renormalize=renorm)
    sig = np.asarray(sigma)
    s, state = rule.update(ParamSignal(None, sig), rule.init(sig))
    np.testing.assert_allclose(s, _reference_param(kappa, 0.25, 4.0, sig**power, renorm), rtol=1e-6)
    lo, hi = (0.25 / 4.0, 4.0 / 0.25) if renorm else (0.25, 4.0)
    assert np.all((s >= lo * (1 - 1e-9)) & (s <= hi * (1 + 1e-9)))
    if renorm:
        assert math.isclose(float(s.mean()), 1.0, rel_tol=1e-9)
    # direction: the scale is monotone in sigma, decreasing for kappa < 0, increasing for kappa > 0
    order = np.argsort(sig, kind="stable")
    d = np.diff(s[order])
    assert np.all(d <= 1e-9) if kappa < 0 else np.all(d >= -1e-9)


@given(
    grads=st.lists(st.lists(st.floats(-10, 10), min_size=4, max_size=4), min_size=1, max_size=6),
    decay=st.floats(0.0, 0.99),
    kappa=kappas,
)
def test_grad_sigma_ratio_matches_numpy_ema(grads, decay, kappa):
    rule = GradSigmaRatio(kappa=kappa, decay=decay, warmup=0, renormalize=False)
    sigma = np.array([0.5, 1.0, 2.0, 4.0])
    state = rule.init(sigma)
    ema = np.zeros(4)
    for g in grads:
        g = np.asarray(g)
        s, state = rule.update(ParamSignal(g, sigma), state)
        ema = decay * ema + (1 - decay) * g
    m = np.abs(ema) * sigma
    tiny = np.finfo(np.float64).tiny
    with np.errstate(over="ignore"):
        want = np.clip(((m + tiny) / (m.mean() + tiny)) ** kappa, 0.25, 4.0)
    np.testing.assert_allclose(s, want, rtol=1e-9)


def test_param_rules_warmup_and_nonfinite():
    rule = GradSigmaRatio(warmup=2, decay=0.0, renormalize=False)
    sigma = np.array([1.0, 2.0, 3.0])
    state = rule.init(sigma)
    for _ in range(2):
        s, state = rule.update(ParamSignal(np.array([1.0, 5.0, 0.1]), sigma), state)
        assert np.all(s == 1.0)
    s, state = rule.update(ParamSignal(np.array([1.0, 5.0, 0.1]), sigma), state)
    assert not np.all(s == 1.0)
    held, state2 = rule.update(ParamSignal(np.array([1.0, np.nan, 0.1]), sigma), state)
    np.testing.assert_array_equal(held, s)
    np.testing.assert_array_equal(state2.ema, state.ema)
    assert int(state2.nonfinite) == 1


def test_param_rule_all_zero_measure_gives_one():
    rule = GradSigmaRatio(warmup=0, renormalize=False)
    s, _ = rule.update(ParamSignal(np.zeros(3), np.ones(3)), rule.init(np.zeros(3)))
    np.testing.assert_array_equal(s, np.ones(3))


def test_gradient_noise_matches_sample_moments():
    rng = np.random.default_rng(0)
    est = GradientNoise(decay=0.999)
    state = est.init(np.zeros(3))
    g = rng.normal([0.0, 1.0, -2.0], [0.1, 1.0, 3.0], size=(2000, 3))
    for row in g:
        sigma, state = est.update(row, state)
    np.testing.assert_allclose(sigma, [0.1, 1.0, 3.0], rtol=0.1)
    held, state2 = est.update(np.array([np.inf, 0.0, 0.0]), state)
    np.testing.assert_array_equal(held, sigma)
    assert float(state2.count) == float(state.count)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_gradient_noise_holds_a_gradient_whose_square_overflows(lib):
    """A finite float32 gradient of 1e30 squares to inf; folding it in would make σ inf/NaN forever."""
    import torch

    arr = (
        (lambda a: np.asarray(a, np.float32))
        if lib == "numpy"
        else (lambda a: torch.tensor(a, dtype=torch.float32))
    )
    est = GradientNoise(decay=0.9)
    state = est.init(arr([0.0, 0.0]))
    for g in ([1.0, 2.0], [3.0, 1.0], [2.0, 2.0]):
        sigma, state = est.update(arr(g), state)
    held, state2 = est.update(arr([1e30, 0.0]), state)
    np.testing.assert_array_equal(np.asarray(held), np.asarray(sigma))
    assert float(state2.count) == float(state.count)
    assert np.isfinite(np.asarray(state2.sq)).all() and np.isfinite(np.asarray(held)).all()


@given(h=st.lists(st.floats(0.0, 5.0), min_size=1, max_size=30), kappa=kappas)
def test_confidence_weights_mean_one_bounds_direction(h, kappa):
    h = np.asarray(h)
    w = confidence_weights(h, kappa=kappa, w_min=0.5, w_max=2.0)
    assert math.isclose(float(w.mean()), 1.0, rel_tol=1e-9)
    assert np.all((w >= 0.25 - 1e-12) & (w <= 4.0 + 1e-12))
    d = np.diff(w[np.argsort(h, kind="stable")])
    assert np.all(d <= 1e-9) if kappa < 0 else np.all(d >= -1e-9)


def test_confidence_weights_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        confidence_weights(np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="shape"):
        confidence_weights(np.ones((2, 2)))
    with pytest.raises(TypeError, match="floating"):
        confidence_weights(np.array([1, 2]))
