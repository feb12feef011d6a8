"""uncertlr.modulation.LayerScaleCap: against a plain float loop (hypothesis), non-finite signals,
named errors, and numpy/torch/jax (jit) agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uncertlr.modulation import LayerScaleCap


def _ref(max_step: float, steps: list[list[float]]):
    """The cap as a float loop: factors of the last step, per-layer cut counts, non-finite count."""
    capped = [0.0] * len(steps[0])
    nonfinite, last = 0.0, [1.0] * len(steps[0])
    for rms in steps:
        if not all(math.isfinite(r) for r in rms):
            nonfinite += 1  # the previous factors are held
            continue
        last = [max_step / r if r > max_step else 1.0 for r in rms]
        capped = [c + (1.0 if r > max_step else 0.0) for c, r in zip(capped, rms)]
    return last, capped, nonfinite


@settings(max_examples=60, deadline=None)
@given(
    max_step=st.floats(min_value=1e-5, max_value=1.0),
    steps=st.lists(
        st.lists(st.one_of(st.floats(0.0, 10.0), st.just(math.nan)), min_size=3, max_size=3),
        min_size=1,
        max_size=4,
    ),
)
def test_matches_the_float_loop(max_step, steps):
    rule = LayerScaleCap(max_step=max_step)
    state = rule.init(np.zeros(3))
    for rms in steps:
        s, state = rule.update(np.array(rms), state)
    want, capped, nonfinite = _ref(max_step, steps)
    np.testing.assert_allclose(s, want, rtol=1e-12)
    np.testing.assert_array_equal(state.capped, capped)
    assert float(state.nonfinite) == nonfinite and float(state.step) == len(steps)
    # the capped step never exceeds max_step in RMS, and a factor never grows a step
    if np.isfinite(steps[-1]).all():
        assert np.all(s * np.array(steps[-1]) <= max_step * (1 + 1e-12))
    assert np.all((s > 0) & (s <= 1))


def test_nonfinite_signal_holds_the_previous_factors_and_is_counted():
    rule = LayerScaleCap(max_step=0.01)
    s, state = rule.update(np.array([0.1, np.nan]), rule.init(np.zeros(2)))
    assert s.tolist() == [1.0, 1.0] and float(state.nonfinite) == 1 and state.capped.tolist() == [0, 0]
    s, state = rule.update(np.array([0.1, 0.02]), state)
    s, state = rule.update(np.array([np.inf, 0.0]), state)
    np.testing.assert_allclose(s, [0.1, 0.5])
    assert float(state.nonfinite) == 2 and state.capped.tolist() == [1, 1]


def test_zero_step_is_left_alone():
    rule = LayerScaleCap(max_step=0.01)
    s, _ = rule.update(np.zeros(2), rule.init(np.zeros(2)))
    assert s.tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    "value, err, match",
    [(0.0, ValueError, r"max_step must be in \(0.0, inf\)"), (-1e-3, ValueError, r"must be in \(0.0, inf\)"),
     (math.inf, TypeError, "finite number"), (True, TypeError, "number"), ("1e-3", TypeError, "number")],
)  # fmt: skip
def test_bad_max_step_is_named(value, err, match):
    with pytest.raises(err, match=match):
        LayerScaleCap(max_step=value)


def test_signal_shape_and_init_shape_are_named():
    rule = LayerScaleCap()
    with pytest.raises(ValueError, match=r"one RMS step per layer, shape \(3,\); got \(2,\)"):
        rule.update(np.zeros(2), rule.init(np.zeros(3)))
    with pytest.raises(ValueError, match=r"shape \[L\]"):
        rule.init(np.zeros((2, 2)))


def test_numpy_torch_and_jitted_jax_agree():
    import jax
    import jax.numpy as jnp
    import torch

    rule = LayerScaleCap(max_step=0.02)
    rms = [[0.01, 0.05, 0.3], [0.04, 0.0, 0.02], [0.5, 0.5, 0.001]]
    outs = {}
    for name, conv in [("numpy", np.asarray), ("torch", torch.tensor), ("jax", jnp.asarray)]:
        state = rule.init(conv(np.zeros(3, np.float32)))
        update = jax.jit(rule.update) if name == "jax" else rule.update
        for r in rms:
            s, state = update(conv(np.asarray(r, np.float32)), state)
        outs[name] = (np.asarray(s), np.asarray(state.capped))
    for name in ("torch", "jax"):
        np.testing.assert_allclose(outs[name][0], outs["numpy"][0], rtol=1e-6)
        np.testing.assert_array_equal(outs[name][1], outs["numpy"][1])
    np.testing.assert_array_equal(outs["numpy"][1], [2, 2, 1])  # 0.02 in float32 is just below the cap
