"""uncertlr.metrics: properties (hypothesis), independent references (scipy, sklearn, loops), backends."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import roc_auc_score

from uncertlr import metrics as m

# float64 agreement between numpy and torch; float32 jax against float64 numpy
TOL_F64 = 1e-10
TOL_F32 = 2e-5


@st.composite
def prob_samples(draw, max_s=6, max_n=12, max_c=6):
    s = draw(st.integers(1, max_s))
    n = draw(st.integers(1, max_n))
    c = draw(st.integers(2, max_c))
    logits = draw(arrays(np.float64, (s, n, c), elements=st.floats(-8, 8)))
    # some exact zeros: the 0 log 0 = 0 convention must hold
    p = np.exp(logits - logits.max(-1, keepdims=True))
    mask = draw(arrays(np.bool_, (s, n, c)))
    mask[..., 0] = False
    p = np.where(mask & (p < 0.3), 0.0, p)
    return p / p.sum(-1, keepdims=True)


@st.composite
def probs_and_labels(draw):
    p = draw(prob_samples())
    labels = draw(arrays(np.int64, (p.shape[1],), elements=st.integers(0, p.shape[2] - 1)))
    return p, labels


# --------------------------------------------------------------------------- information-theoretic


@given(prob_samples())
def test_entropy_bounds_and_decomposition(p):
    c = p.shape[-1]
    d = m.uncertainty_decomposition(p)
    assert np.all(d.total >= -1e-12) and np.all(d.total <= math.log(c) + 1e-9)
    assert np.all(d.aleatoric >= -1e-12)
    assert np.all(d.epistemic >= 0) and np.all(d.epistemic <= d.total + 1e-9)
    np.testing.assert_allclose(d.total, d.aleatoric + d.epistemic, atol=1e-9)
    np.testing.assert_allclose(m.predictive_entropy(p), d.total)
    np.testing.assert_allclose(m.expected_entropy(p), d.aleatoric)
    np.testing.assert_allclose(m.mutual_information(p), d.epistemic)
    np.testing.assert_allclose(m.predictive_entropy(p, normalized=True), d.total / math.log(c))


@given(prob_samples(), st.randoms(use_true_random=False))
def test_invariant_to_permuting_samples(p, rnd):
    perm = list(range(p.shape[0]))
    rnd.shuffle(perm)
    for f in (m.predictive_entropy, m.expected_entropy, m.mutual_information):
        np.testing.assert_allclose(f(p[perm]), f(p), atol=1e-12)


@given(prob_samples())
def test_entropy_matches_scipy(p):
    pbar = p.mean(0)
    np.testing.assert_allclose(m.predictive_entropy(p), scipy.stats.entropy(pbar, axis=-1), atol=1e-10)
    np.testing.assert_allclose(m.expected_entropy(p), scipy.stats.entropy(p, axis=-1).mean(0), atol=1e-10)


@given(prob_samples(max_s=1))
def test_point_prediction_has_no_epistemic_uncertainty(p):
    np.testing.assert_allclose(m.mutual_information(p), 0.0, atol=1e-12)
    np.testing.assert_allclose(m.predictive_entropy(p[0]), m.predictive_entropy(p))


def test_disagreeing_confident_samples_are_purely_epistemic():
    p = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    d = m.uncertainty_decomposition(p)
    assert d.aleatoric[0] == pytest.approx(0.0, abs=1e-12)
    assert d.epistemic[0] == pytest.approx(math.log(2))


# --------------------------------------------------------------------------- calibration


def _ece_reference(pbar, labels, bins=15):
    """Loop-based ECE with bins (k/B, (k+1)/B] (confidence 0 goes to the first bin)."""
    conf = pbar.max(1)
    correct = (pbar.argmax(1) == labels).astype(float)
    total = 0.0
    for k in range(bins):
        lo, hi = k / bins, (k + 1) / bins
        sel = (conf > lo) & (conf <= hi) if k else (conf <= hi)
        if sel.any():
            total += sel.sum() * abs(correct[sel].mean() - conf[sel].mean())
    return total / len(labels)


@given(probs_and_labels())
def test_calibration_metrics_match_references(pl):
    p, y = pl
    pbar = p.mean(0)
    assume(np.all(np.abs(np.ceil(pbar.max(1) * 15) - pbar.max(1) * 15) > 1e-9))  # no confidence on a bin edge
    assert float(m.accuracy(p, y)) == pytest.approx(np.mean(pbar.argmax(1) == y))
    py = pbar[np.arange(len(y)), y]
    assert float(m.nll(p, y)) == pytest.approx(-np.mean(np.log(np.maximum(py, np.finfo(float).tiny))))
    onehot = np.eye(p.shape[2])[y]
    assert float(m.brier(p, y)) == pytest.approx(np.mean(((pbar - onehot) ** 2).sum(1)))
    assert float(m.ece(p, y)) == pytest.approx(_ece_reference(pbar, y), abs=1e-12)
    e = float(m.ece(p, y))
    assert 0 <= e <= 1


@given(probs_and_labels(), st.integers(1, 20))
def test_reliability_bins_partition_inputs(pl, bins):
    p, y = pl
    for adaptive in (False, True):
        b = m.reliability_bins(p, y, num_bins=bins, adaptive=adaptive)
        assert b.count.sum() == len(y)
        assert np.all((b.confidence >= 0) & (b.confidence <= 1 + 1e-12))
        assert np.all((b.accuracy >= 0) & (b.accuracy <= 1))
        # weighted bin accuracies recover the overall accuracy
        assert (b.count * b.accuracy).sum() / len(y) == pytest.approx(float(m.accuracy(p, y)))
    ad = m.reliability_bins(p, y, num_bins=bins, adaptive=True)
    assert ad.count.max() - ad.count[ad.count > 0].min() <= 1  # equal mass, up to rounding


def test_adaptive_ece_reference():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=(3, 300))
    y = rng.integers(0, 4, 300)
    pbar = p.mean(0)
    conf, correct = pbar.max(1), (pbar.argmax(1) == y)
    order = np.argsort(conf, kind="stable")
    ref = sum(len(c) * abs(correct[c].mean() - conf[c].mean()) for c in np.array_split(order, 15)) / 300
    assert float(m.adaptive_ece(p, y)) == pytest.approx(ref, abs=1e-12)


def test_perfectly_calibrated_predictions_have_small_ece():
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.5, 1.0, 20000)
    y = (rng.uniform(size=20000) > conf).astype(np.int64)  # class 0 is right with probability conf
    p = np.stack([conf, 1 - conf], 1)
    assert float(m.ece(p, y)) < 0.02
    assert float(m.ece(np.stack([np.full(20000, 0.99), np.full(20000, 0.01)], 1), y)) > 0.15


# --------------------------------------------------------------------------- regression


@given(
    arrays(np.float64, (4, 7), elements=st.floats(-5, 5)),
    arrays(np.float64, (4, 7), elements=st.floats(0.01, 3)),
)
def test_variance_decomposition(mean, var):
    d = m.predictive_variance(mean, var)
    np.testing.assert_allclose(d.total, d.aleatoric + d.epistemic)
    np.testing.assert_allclose(d.epistemic, mean.var(0))
    np.testing.assert_allclose(d.aleatoric, var.mean(0))
    # law of total variance against a Monte Carlo draw from the mixture
    assert np.all(d.epistemic >= 0)


def test_gaussian_nll_matches_scipy_mixture():
    rng = np.random.default_rng(2)
    mean, var, y = rng.normal(size=(5, 9)), rng.uniform(0.1, 2, (5, 9)), rng.normal(size=9)
    ref = -np.mean(np.log(np.mean(scipy.stats.norm.pdf(y, mean, np.sqrt(var)), 0)))
    assert float(m.gaussian_nll(mean, var, y)) == pytest.approx(ref, rel=1e-10)
    assert float(m.rmse(mean, y)) == pytest.approx(np.sqrt(np.mean((mean.mean(0) - y) ** 2)))


# --------------------------------------------------------------------------- OOD AUROC


@given(
    arrays(np.float64, st.integers(1, 40), elements=st.floats(0, 3).map(lambda v: round(v, 1))),
    arrays(np.float64, st.integers(1, 40), elements=st.floats(0, 3).map(lambda v: round(v, 1))),
)
def test_auroc_matches_sklearn_with_ties(a, b):
    ref = roc_auc_score(np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[a, b])
    assert float(m.ood_auroc(a, b)) == pytest.approx(ref, abs=1e-12)


def test_auroc_extremes():
    assert float(m.ood_auroc(np.zeros(5), np.ones(3))) == 1.0
    assert float(m.ood_auroc(np.ones(5), np.zeros(3))) == 0.0
    assert float(m.ood_auroc(np.ones(5), np.ones(3))) == 0.5


# --------------------------------------------------------------------------- backends


def _all_metrics(p, y):
    d = m.uncertainty_decomposition(p)
    return {
        "total": d.total,
        "aleatoric": d.aleatoric,
        "epistemic": d.epistemic,
        "accuracy": m.accuracy(p, y),
        "nll": m.nll(p, y),
        "brier": m.brier(p, y),
        "ece": m.ece(p, y),
        "aece": m.adaptive_ece(p, y),
        "auroc": m.ood_auroc(d.total[:10], d.total[10:]),
    }


def test_numpy_torch_jax_agree():
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(5) * 0.5, size=(7, 40))
    y = rng.integers(0, 5, 40)
    ref = _all_metrics(p, y)
    got_t = _all_metrics(torch.tensor(p), torch.tensor(y))
    for k in ref:
        assert isinstance(got_t[k], torch.Tensor)
        np.testing.assert_allclose(got_t[k].numpy(), ref[k], atol=TOL_F64, err_msg=k)
    jnp = pytest.importorskip("jax.numpy")
    got_j = _all_metrics(jnp.asarray(p, dtype=jnp.float32), jnp.asarray(y))
    for k in ref:
        np.testing.assert_allclose(np.asarray(got_j[k]), ref[k], atol=TOL_F32, err_msg=k)


def test_metrics_run_under_jax_jit():
    jax = pytest.importorskip("jax")
    rng = np.random.default_rng(4)
    p = jax.numpy.asarray(rng.dirichlet(np.ones(3), size=(4, 20)), dtype=jax.numpy.float32)
    y = jax.numpy.asarray(rng.integers(0, 3, 20))
    f = jax.jit(lambda p, y: (m.mutual_information(p), m.ece(p, y), m.nll(p, y)))
    mi, e, n = f(p, y)
    np.testing.assert_allclose(
        np.asarray(mi), m.mutual_information(np.asarray(p, dtype=np.float64)), atol=TOL_F32
    )
    assert float(e) == pytest.approx(float(m.ece(np.asarray(p, np.float64), np.asarray(y))), abs=TOL_F32)


def test_torch_entropy_is_differentiable_at_zero_probabilities():
    p = torch.tensor([[[1.0, 0.0, 0.0]], [[0.5, 0.5, 0.0]]], requires_grad=True)
    m.mutual_information(p).sum().backward()
    assert torch.isfinite(p.grad).all()


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "probs, labels, err, match",
    [
        (np.array([[2.0, -1.0]]), np.array([0]), ValueError, "logits"),
        (np.array([[0.7, 0.7]]), np.array([0]), ValueError, "sum to 1"),
        (np.array([[np.nan, 1.0]]), np.array([0]), ValueError, "NaN"),
        (np.array([[0.5, 0.5]]), np.array([2]), ValueError, r"\[0, 2\)"),
        (np.array([[0.5, 0.5]]), np.array([-1]), ValueError, r"\[0, 2\)"),
        (np.array([[0.5, 0.5]]), np.array([0.0]), TypeError, "integer"),
        (np.array([[0.5, 0.5]]), np.array([0, 1]), ValueError, "shape"),
        (np.ones((2, 2, 2, 2)) / 2, np.array([0, 1]), ValueError, r"\[S, N, C\]"),
        (np.array([[1.0]]), np.array([0]), ValueError, "at least 2 classes"),
        (np.array([[1, 0]]), np.array([0]), TypeError, "floating"),
    ],
)
def test_bad_input_is_named(probs, labels, err, match):
    with pytest.raises(err, match=match):
        m.nll(probs, labels)


def test_bad_regression_and_auroc_input():
    with pytest.raises(ValueError, match="non-negative"):
        m.predictive_variance(np.zeros((2, 3)), -np.ones((2, 3)))
    with pytest.raises(ValueError, match="targets"):
        m.gaussian_nll(np.zeros((2, 3)), np.ones((2, 3)), np.zeros(4))
    with pytest.raises(ValueError, match="at least one"):
        m.ood_auroc(np.zeros(0), np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        m.ood_auroc(np.array([np.inf]), np.ones(3))


def test_layer_spread_groups_by_layer():
    s = m.layer_spread(
        {"a.weight": np.array([1.0, -3.0]), "a.bias": np.array([2.0]), "b.weight": np.array([0.0])},
        {"a.weight": np.array([1.0, 1.0]), "a.bias": np.array([0.5]), "b.weight": np.array([2.0])},
    )
    assert list(s) == ["a", "b"]
    assert (
        s["a"].size == 3
        and s["a"].mean_scale == pytest.approx(2.5 / 3)
        and s["a"].mean_snr == pytest.approx(8 / 3)
    )
    with pytest.raises(ValueError, match="positive"):
        m.layer_spread({"a": np.ones(1)}, {"a": np.zeros(1)})
