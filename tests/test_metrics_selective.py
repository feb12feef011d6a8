"""AURC, E-AURC, FPR@TPR, AUPR-in/out: against scikit-learn, torchmetrics and brute-force references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import average_precision_score, roc_curve

from uncertlr import metrics as m

# scores on a coarse grid so that ties are common
scores = arrays(np.float64, st.integers(1, 30), elements=st.integers(0, 12).map(lambda v: v / 4))


def _aurc_one_order(u: np.ndarray, correct: np.ndarray) -> float:
    """Geifman's definition for one ranking: mean over k of the error rate of the k most confident."""
    order = np.argsort(u, kind="stable")
    errors = 1 - correct[order].astype(float)
    return float(np.mean(np.cumsum(errors) / np.arange(1, len(u) + 1)))


def _aurc_all_orders(u: np.ndarray, correct: np.ndarray) -> float:
    """The mean of the one-order AURC over every order of the tied inputs (small N only)."""
    groups = [np.flatnonzero(u == v) for v in np.unique(u)]
    values = []
    for perms in itertools.product(*(itertools.permutations(g) for g in groups)):
        order = np.concatenate([np.array(p) for p in perms])
        errors = 1 - correct[order].astype(float)
        values.append(np.mean(np.cumsum(errors) / np.arange(1, len(u) + 1)))
    return float(np.mean(values))


@given(arrays(np.float64, st.integers(1, 40), elements=st.floats(0, 5), unique=True), st.data())
def test_aurc_without_ties_is_geifmans_definition(u, data):
    correct = data.draw(arrays(np.bool_, u.shape))
    assert float(m.aurc(u, correct)) == pytest.approx(_aurc_one_order(u, correct), abs=1e-12)


@settings(max_examples=60)
@given(st.lists(st.integers(0, 2), min_size=1, max_size=7), st.data())
def test_aurc_with_ties_is_the_mean_over_all_tie_orders(levels, data):
    u = np.array(levels, dtype=np.float64)
    correct = data.draw(arrays(np.bool_, u.shape))
    assert float(m.aurc(u, correct)) == pytest.approx(_aurc_all_orders(u, correct), abs=1e-12)


@given(scores, st.data())
def test_eaurc_properties(u, data):
    correct = data.draw(arrays(np.bool_, u.shape))
    e = float(m.eaurc(u, correct))
    assert e >= -1e-12  # no ranking beats the perfect one
    # the perfect ranking of the same mistakes has excess 0
    perfect = np.where(correct, 0.0, 1.0)
    assert float(m.eaurc(perfect, correct)) == pytest.approx(0.0, abs=1e-12)
    # a constant score (no ranking) leaves the error rate at every coverage
    assert float(m.aurc(np.zeros_like(u), correct)) == pytest.approx(1 - correct.mean(), abs=1e-12)


def test_risk_coverage_curve_shape_and_end_point():
    rng = np.random.default_rng(0)
    u, correct = rng.random(50), rng.random(50) < 0.7
    rc = m.risk_coverage(u, correct)
    assert rc.coverage.shape == rc.risk.shape == (50,)
    assert rc.coverage[-1] == 1.0 and rc.risk[-1] == pytest.approx(1 - correct.mean())


@given(scores, scores, st.sampled_from([0.5, 0.8, 0.9, 0.95, 1.0]))
def test_fpr_at_tpr_is_sklearns_first_roc_point(a, b, tpr):
    fpr, tprs, _ = roc_curve(np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[a, b], drop_intermediate=False)
    ref = fpr[np.argmax(tprs >= tpr)]
    assert float(m.fpr_at_tpr(a, b, tpr=tpr)) == pytest.approx(ref, abs=1e-12)


@given(scores, scores)
def test_aupr_matches_sklearn_average_precision(a, b):
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    s = np.r_[a, b]
    assert float(m.aupr_out(a, b)) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert float(m.aupr_in(a, b)) == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)


def test_ood_metrics_match_torchmetrics():
    torchmetrics = pytest.importorskip("torchmetrics.functional.classification")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(300, generator=g, dtype=torch.float64)
    b = torch.rand(200, generator=g, dtype=torch.float64) + 0.3
    y = torch.cat([torch.zeros(300), torch.ones(200)]).long()
    s = torch.cat([a, b])
    ap = torchmetrics.binary_average_precision(s, y)
    assert float(m.aupr_out(a, b)) == pytest.approx(float(ap), abs=1e-6)
    assert float(m.aupr_in(a, b)) == pytest.approx(
        float(torchmetrics.binary_average_precision(-s, 1 - y)), abs=1e-6
    )
    assert float(m.ood_auroc(a, b)) == pytest.approx(float(torchmetrics.binary_auroc(s, y)), abs=1e-6)


def test_extremes():
    lo, hi = np.zeros(5), np.ones(4)
    assert float(m.fpr_at_tpr(lo, hi)) == 0.0 and float(m.fpr_at_tpr(hi, lo)) == 1.0
    assert float(m.aupr_out(lo, hi)) == 1.0 and float(m.aupr_in(lo, hi)) == 1.0
    # no separation: precision is the class fraction everywhere
    assert float(m.aupr_out(lo, np.zeros(4))) == pytest.approx(4 / 9)


def test_numpy_torch_jax_agree():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 8, 40) / 8, rng.integers(2, 10, 30) / 8  # exact in float32: the same ties
    correct = rng.random(40) < 0.8
    funcs = {
        "aurc": lambda a, b, c: m.aurc(a, c),
        "eaurc": lambda a, b, c: m.eaurc(a, c),
        "fpr": lambda a, b, c: m.fpr_at_tpr(a, b),
        "aupr_in": lambda a, b, c: m.aupr_in(a, b),
        "aupr_out": lambda a, b, c: m.aupr_out(a, b),
    }
    ref = {k: float(f(a, b, correct)) for k, f in funcs.items()}
    for k, f in funcs.items():
        got = f(torch.tensor(a), torch.tensor(b), torch.tensor(correct))
        assert isinstance(got, torch.Tensor) and float(got) == pytest.approx(ref[k], abs=1e-10), k
    jnp = pytest.importorskip("jax.numpy")
    for k, f in funcs.items():
        got = f(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), jnp.asarray(correct))
        assert float(got) == pytest.approx(ref[k], abs=2e-5), k


def test_aurc_under_jax_jit():
    jax = pytest.importorskip("jax")
    rng = np.random.default_rng(2)
    u, correct = rng.random(30).round(1), rng.random(30) < 0.6
    got = jax.jit(m.aurc)(jax.numpy.asarray(u, jax.numpy.float32), jax.numpy.asarray(correct))
    assert float(got) == pytest.approx(float(m.aurc(u, correct)), abs=2e-5)


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda: m.aurc(np.zeros(3), np.ones(4, bool)), ValueError, "same length"),
        (lambda: m.aurc(np.zeros(0), np.ones(0, bool)), ValueError, "empty"),
        (lambda: m.aurc(np.array([np.nan, 1.0]), np.ones(2, bool)), ValueError, "NaN"),
        (lambda: m.aurc(np.zeros(2), np.array([0.5, 1.0])), TypeError, "boolean"),
        (lambda: m.aurc(np.zeros(2), np.array([0, 2])), ValueError, "0 and 1"),
        (lambda: m.fpr_at_tpr(np.zeros(2), np.ones(2), tpr=0.0), ValueError, "tpr"),
        (lambda: m.fpr_at_tpr(np.zeros(2), np.ones(2), tpr=math.nan), ValueError, "tpr"),
        (lambda: m.aupr_in(np.zeros((2, 2)), np.ones(2)), ValueError, "1-D"),
        (lambda: m.aupr_out(np.zeros(2), np.zeros(0)), ValueError, "at least one"),
    ],
)
def test_bad_input_is_named(call, err, match):
    with pytest.raises(err, match=match):
        call()
