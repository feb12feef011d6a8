"""uncertlr.modulation.controllers: plateau, warm-up and product against plain float loops, bounds,
arming, non-finite signals, numpy/torch/jax agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uncertlr.modulation import (
    Product,
    Ratio,
    SigmaRatio,
    UncertaintyPlateau,
    UncertaintyWarmup,
)

signals = st.lists(
    st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False), min_size=1, max_size=60
)
with_bad = st.lists(
    st.one_of(
        st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False),
        st.sampled_from([math.nan, math.inf]),
    ),
    min_size=1,
    max_size=60,
)


F64 = np.zeros((), np.float64)  # float64 state: the float loops below then agree to rounding


def _run(rule, us, like=None):
    state = rule.init(like)
    out = []
    for u in us:
        s, state = rule.update(u, state)
        out.append(float(s))
    return out, state


# --------------------------------------------------------------------------- reference loops


def _ref_plateau(r: UncertaintyPlateau, us):
    """The plateau written as a plain float loop."""
    out, ema, count, step, initial, best = [], 0.0, 0, 0, 0.0, np.finfo(np.float64).max
    wait = cool = 0
    armed, scale = False, 1.0
    for u in us:
        if not math.isfinite(u):
            out.append(scale)
            step += 1
            continue
        ema = r.decay * ema + (1 - r.decay) * u
        count += 1
        m = ema / (1 - r.decay**count)
        settling = step < r.warmup
        if settling or count == 1:
            initial = m
        if not settling and m < initial - (1 - r.arm) * abs(initial):
            armed = True
        if m < best - r.threshold * abs(best):
            best, wait = m, 0
        else:
            wait += 1
        cool = max(cool - 1, 0)
        if not settling and armed and wait >= r.patience and cool <= 0:
            scale = max(scale * r.factor, r.s_min)
            wait, cool = 0, r.cooldown
        step += 1
        out.append(scale)
    return out


def _ref_warmup(r: UncertaintyWarmup, us):
    out, ema, count, initial, scale = [], 0.0, 0, 0.0, r.start
    for step, u in enumerate(us):
        if not math.isfinite(u):
            out.append(scale)
            continue
        ema = r.decay * ema + (1 - r.decay) * u
        count += 1
        m = ema / (1 - r.decay**count)
        if count == 1:
            initial = m
        ratio = m / initial
        t = min(max((ratio - r.release) / (1 - r.release), 0.0), 1.0)
        if r.horizon and step >= r.horizon:
            t = 0.0
        s = r.start**t * ((ratio / r.release) ** r.anneal if ratio < r.release else 1.0)
        scale = min(max(s, r.s_min), 1.0)
        out.append(scale)
    return out


plateaus = st.builds(
    UncertaintyPlateau,
    factor=st.floats(0.1, 0.9),
    patience=st.integers(0, 6),
    cooldown=st.integers(0, 6),
    threshold=st.sampled_from([0.0, 0.01, 0.2]),
    arm=st.floats(0.3, 1.0),
    decay=st.sampled_from([0.0, 0.5, 0.9]),
    warmup=st.integers(0, 5),
    s_min=st.sampled_from([1e-3, 0.2]),
)


@settings(deadline=None, max_examples=60)
@given(plateaus, with_bad)
def test_plateau_matches_a_float_loop_and_only_ever_decays(rule, us):
    got, state = _run(rule, us, F64)
    np.testing.assert_allclose(got, _ref_plateau(rule, us), rtol=1e-4)
    assert all(rule.s_min - 1e-7 <= s <= 1.0 for s in got)
    assert all(b <= a + 1e-7 for a, b in zip(got, got[1:]))  # persistent: never goes back up
    assert int(state.nonfinite) == sum(not math.isfinite(u) for u in us)


@given(st.floats(1e-3, 1e3), st.integers(1, 80))
def test_plateau_is_not_armed_by_a_flat_start(level, n):
    """A run whose uncertainty sits at its initial level (a small LR) is never cut."""
    got, state = _run(UncertaintyPlateau(patience=1, cooldown=0), [level] * n)
    assert got == [1.0] * n and int(state.armed) == 0 and int(state.cuts) == 0


def test_plateau_cuts_once_armed_and_stalled():
    rule = UncertaintyPlateau(factor=0.5, patience=3, cooldown=2, decay=0.0)
    got, state = _run(rule, [2.0, 1.0] + [1.0] * 12)
    # armed at step 1; the best (1.0) is never beaten again: a cut after 3 waits (step 4), then the
    # cooldown (2) overlaps the next wait, so every 3 steps: 4, 7, 10, 13
    assert got[:4] == [1.0] * 4 and got[4] == 0.5 and int(state.cuts) == 4
    assert got[-1] == pytest.approx(0.5**4)


warmups = st.builds(
    UncertaintyWarmup,
    start=st.floats(0.01, 1.0),
    release=st.floats(0.1, 0.9),
    horizon=st.integers(0, 10),
    anneal=st.sampled_from([0.0, 0.5, 2.0]),
    decay=st.sampled_from([0.0, 0.5, 0.9]),
)


@settings(deadline=None, max_examples=60)
@given(warmups, with_bad)
def test_warmup_matches_a_float_loop_and_stays_in_bounds(rule, us):
    got, _ = _run(rule, us, F64)
    np.testing.assert_allclose(got, _ref_warmup(rule, us), rtol=1e-4)
    assert all(rule.s_min - 1e-7 <= s <= 1.0 + 1e-7 for s in got)


def test_warmup_starts_small_and_releases_as_the_signal_falls():
    rule = UncertaintyWarmup(start=0.1, release=0.5, decay=0.0)
    got, _ = _run(rule, [2.0, 1.5, 1.0, 0.5])
    assert got[0] == pytest.approx(0.1) and got[1] == pytest.approx(0.1**0.5) and got[2:] == [1.0, 1.0]
    annealed, _ = _run(UncertaintyWarmup(start=0.1, release=0.5, anneal=1.0, decay=0.0), [2.0, 0.5])
    assert annealed[-1] == pytest.approx(0.5)  # r = 0.25 = half the release level


@given(signals)
def test_product_is_the_product_of_its_rules(us):
    a, b = UncertaintyWarmup(start=0.3, decay=0.5), UncertaintyPlateau(patience=2, cooldown=1)
    got, _ = _run(Product((a, b)), us)
    np.testing.assert_allclose(got, np.multiply(_run(a, us)[0], _run(b, us)[0]), rtol=1e-6)


def test_controllers_run_on_numpy_torch_and_jax_alike():
    torch = pytest.importorskip("torch")
    jnp = pytest.importorskip("jax.numpy")
    us = [2.0, 1.8, 1.0, 0.9, 0.9, 0.9, math.nan, 0.9, 30.0, 0.9, 0.9, 0.9]
    rules = [
        UncertaintyPlateau(patience=2, cooldown=1),
        UncertaintyWarmup(horizon=6, anneal=0.5),
        Product((UncertaintyWarmup(), UncertaintyPlateau(patience=1))),
    ]
    for rule in rules:
        ref, _ = _run(rule, us)
        np.testing.assert_allclose(
            _run(rule, [torch.tensor(u) for u in us], torch.zeros(()))[0], ref, rtol=1e-6
        )
        np.testing.assert_allclose(_run(rule, [jnp.asarray(u) for u in us], jnp.zeros(()))[0], ref, rtol=1e-6)


def test_controllers_under_jit_in_the_optax_adapter():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    from uncertlr.jax import scale_by_uncertainty

    rule = Product((UncertaintyWarmup(start=0.5), UncertaintyPlateau(patience=1, cooldown=0, decay=0.0)))
    tx = scale_by_uncertainty(rule)
    state = tx.init(jnp.zeros(2))
    step = jax.jit(tx.update)
    us = [2.0, 1.0, 0.5, 0.5, 0.5]
    got = []
    for u in us:
        upd, state = step(jnp.ones(2), state, uncertainty=jnp.float32(u))
        got.append(float(upd[0]))
    np.testing.assert_allclose(got, _run(rule, us)[0], rtol=1e-6)


def test_bad_fields_and_signals_are_named():
    with pytest.raises(ValueError, match="factor"):
        UncertaintyPlateau(factor=1.0)
    with pytest.raises(ValueError, match="patience"):
        UncertaintyPlateau(patience=-1)
    with pytest.raises(ValueError, match="arm"):
        UncertaintyPlateau(arm=0.0)
    with pytest.raises(TypeError, match="threshold"):
        UncertaintyPlateau(threshold="0")
    with pytest.raises(ValueError, match="release"):
        UncertaintyWarmup(release=1.0)
    with pytest.raises(ValueError, match="horizon"):
        UncertaintyWarmup(horizon=1.5)
    with pytest.raises(ValueError, match="per-parameter"):
        Product((Ratio(), SigmaRatio()))
    with pytest.raises(TypeError, match="non-empty tuple"):
        Product([Ratio()])
    rule = UncertaintyPlateau()
    with pytest.raises(ValueError, match="scalar"):
        rule.update(np.ones(3), rule.init())
