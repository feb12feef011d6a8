"""uncertlr.calibration: temperature scaling against a brute-force fit, on every array library."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import log_softmax, softmax

from uncertlr import metrics
from uncertlr.calibration import (
    Temperature,
    cross_fit_score_slope,
    fit_score_slope,
    fit_score_temperature,
    fit_temperature,
)


def _data(seed, n=400, c=4, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * scale
    labels = np.array([rng.choice(c, p=softmax(z / scale)) for z in logits])  # the truth is T = scale
    return logits, labels


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(0.3, 5.0))
def test_fit_matches_a_brute_force_grid_on_logits(seed, scale):
    logits, labels = _data(seed, scale=scale)
    t = fit_temperature(softmax(logits, axis=1), labels).value
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))
    nll = [-np.mean(log_softmax(logits / g, axis=1)[np.arange(len(labels)), labels]) for g in grid]
    best = grid[int(np.argmin(nll))]
    assert t == pytest.approx(best, rel=3e-3)
    # classic temperature scaling: the same as dividing the logits
    np.testing.assert_allclose(
        Temperature(t)(softmax(logits, axis=1)), softmax(logits / t, axis=1), atol=1e-10
    )


def test_it_calibrates_an_overconfident_model_and_keeps_its_predictions():
    logits, labels = _data(0, n=2000, scale=4.0)
    probs = softmax(logits, axis=1)
    t = fit_temperature(probs[:1000], labels[:1000])
    before, after = metrics.ece(probs[1000:], labels[1000:]), metrics.ece(t(probs[1000:]), labels[1000:])
    assert t.value > 2.0 and after < 0.5 * before
    assert (t(probs).argmax(1) == probs.argmax(1)).all()


def test_samples_keep_their_shape_and_sum_to_one_in_every_library():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(3), size=(5, 20))
    for arr in (p, torch.from_numpy(p)):
        out = Temperature(2.0)(arr)
        assert type(out) is type(arr) and tuple(out.shape) == (5, 20, 3)
        assert np.allclose(np.asarray(out).sum(-1), 1.0)
    np.testing.assert_allclose(Temperature(1.0)(p), p, atol=1e-12)
    y = rng.integers(0, 3, 20)
    assert fit_temperature(torch.from_numpy(p), torch.from_numpy(y)) == fit_temperature(p, y)


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf"), True, "2"])
def test_bad_temperatures_and_inputs_are_refused(value):
    with pytest.raises(ValueError, match="temperature"):
        Temperature(value)


def test_bad_fit_inputs_name_the_problem():
    p = np.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match="labels must lie in"):
        fit_temperature(p, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="bounds"):
        fit_temperature(p, np.array([0, 1, 2, 0]), bounds=(2.0, 3.0))
    with pytest.raises(ValueError, match="logits"):
        fit_temperature(np.full((4, 3), 2.0), np.array([0, 1, 2, 0]))


def test_a_fit_at_a_bound_warns_and_names_the_error_count():
    """A validation set without errors: the NLL keeps falling as T shrinks, so the fit runs to the bound."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 3)) * 2
    labels = logits.argmax(1)  # every validation input classified correctly
    with pytest.warns(UserWarning, match=r"lower search bound 0\.05: with 0 misclassified of 200"):
        t = fit_temperature(softmax(logits, axis=1), labels)
    assert t.value == pytest.approx(0.05, rel=2e-2)
    with warnings.catch_warnings():  # narrowed to never sharpen: ending at T = 1 is what was asked
        warnings.simplefilter("error")
        assert fit_temperature(softmax(logits, axis=1), labels, bounds=(1.0, 20.0)).value == pytest.approx(
            1.0, rel=2e-2
        )
    # an interior optimum does not warn
    logits, labels = _data(3, scale=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert 1.0 < fit_temperature(softmax(logits, axis=1), labels).value < 4.0


def _synthetic(rng, n, slope):
    """An over-confident classifier whose true temperature grows with a per-input score."""
    score = rng.normal(size=n)
    logits = rng.normal(size=(n, 4)) * 4
    true_t = 3.0 * np.exp(slope * score)
    labels = np.array([rng.choice(4, p=softmax(lg / t)) for lg, t in zip(logits, true_t)])
    return softmax(logits, axis=-1), labels, score


def _nll(probs, labels):
    return float(-np.mean(np.log(probs[np.arange(len(labels)), labels])))


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), slope=st.sampled_from([0.0, 0.5, 1.0]))
def test_score_temperature_is_the_validation_nll_optimum_of_a_brute_force_grid(seed, slope):
    """The fitted (a, b) is at least as good as every point of a fine grid over (a, b >= 0), on the validation NLL
    computed here directly from the formula T = exp(a + b z)."""
    probs, labels, score = _synthetic(np.random.default_rng(seed), 300, slope)
    cal = fit_score_temperature(probs, labels, score)
    assert cal.b >= 0
    z = (score - score.mean()) / score.std()
    logp = np.log(probs)

    def nll(a, b):
        return _nll(softmax(logp / np.exp(a + b * z)[:, None], axis=-1), labels)

    grid = min(nll(a, b) for a in np.linspace(-1, 3, 81) for b in np.linspace(0, 2, 41))
    assert nll(cal.a, cal.b) <= grid + 1e-6
    np.testing.assert_allclose(cal(probs, score), softmax(logp / cal.temperatures(score)[:, None], axis=-1))


def test_score_temperature_recovers_a_growing_temperature_and_generalises():
    rng = np.random.default_rng(1)
    probs, labels, score = _synthetic(rng, 800, 1.0)
    cal, single = fit_score_temperature(probs, labels, score), fit_temperature(probs, labels)
    assert 0.6 < cal.b < 1.6  # the true slope is 1 (per standard deviation of a standard normal score)
    test_probs, test_labels, test_score = _synthetic(rng, 2000, 1.0)
    assert _nll(cal(test_probs, test_score), test_labels) < _nll(single(test_probs), test_labels) - 0.02
    # a constant score: one temperature, the one fit_temperature finds
    const = fit_score_temperature(probs, labels, np.zeros(800))
    assert np.exp(const.a) == pytest.approx(single.value, rel=1e-3)


def test_score_temperature_in_torch_and_named_errors():
    probs, labels, score = _synthetic(np.random.default_rng(2), 200, 0.5)
    cal = fit_score_temperature(
        torch.from_numpy(probs)[None], torch.from_numpy(labels), torch.from_numpy(score)
    )
    out = cal(torch.from_numpy(probs).float()[None], torch.from_numpy(score))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 200, 4) and out.dtype == torch.float32
    np.testing.assert_allclose(out[0].numpy(), cal(probs, score), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"score must have shape \[N\] = \[200\]"):
        fit_score_temperature(probs, labels, score[:5])
    with pytest.raises(ValueError, match="NaN or inf"):
        cal(probs, np.full(200, np.nan))


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), slope=st.sampled_from([0.0, 0.3, 1.2]))
def test_a_fixed_slope_fits_only_the_intercept_by_brute_force(seed, slope):
    """``slope=b``: b is kept and a is the validation-NLL optimum over a fine grid of a."""
    probs, labels, score = _synthetic(np.random.default_rng(seed), 300, 0.5)
    cal = fit_score_temperature(probs, labels, score, slope=slope)
    assert (
        cal.b == slope
        and cal.center == pytest.approx(score.mean())
        and cal.scale == pytest.approx(score.std())
    )
    z = (score - score.mean()) / score.std()
    logp = np.log(probs)

    def nll(a):
        return _nll(softmax(logp / np.clip(np.exp(a + slope * z), 0.05, 20.0)[:, None], axis=-1), labels)

    assert nll(cal.a) <= min(nll(a) for a in np.linspace(-2, 3, 501)) + 1e-6
    # the free fit is at least as good on the same data
    assert nll(cal.a) >= _nll(fit_score_temperature(probs, labels, score)(probs, score), labels) - 1e-6
    with pytest.raises(ValueError, match="slope must be a finite number >= 0"):
        fit_score_temperature(probs, labels, score, slope=-0.1)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), shift=st.floats(-50, 50), stretch=st.floats(0.1, 10))
def test_the_cross_fitted_slope_standardises_each_fold_on_its_own(seed, shift, stretch):
    """Each fold's scores may sit on their own scale (another model): an affine change of one fold's scores
    leaves the slope as it is, and it equals the free fit on the per-fold z-scores computed here by hand."""
    rng = np.random.default_rng(seed)
    probs, labels, score = _synthetic(rng, 400, 0.8)
    folds = np.arange(400) % 4
    b = fit_score_slope(probs, labels, score, folds)
    moved = np.where(folds == 2, shift + stretch * score, score)
    assert fit_score_slope(probs, labels, moved, folds) == pytest.approx(b, abs=1e-6)
    z = np.empty(400)
    for k in range(4):
        z[folds == k] = (score[folds == k] - score[folds == k].mean()) / score[folds == k].std()
    assert b == pytest.approx(fit_score_temperature(probs, labels, z).b, abs=1e-9)


def test_the_cross_fitted_slope_recovers_the_true_one_across_models_and_names_bad_folds():
    rng = np.random.default_rng(3)
    probs, labels, z = _synthetic(rng, 1600, 1.0)
    folds = np.repeat(np.arange(4), 400)
    score = 5.0 * folds + (1.0 + folds) * z  # four models, four scales; pooled raw scores would mislead
    assert 0.6 < fit_score_slope(probs, labels, score, folds) < 1.6
    assert fit_score_temperature(probs, labels, score).b < 0.6  # without standardising per fold
    with pytest.raises(ValueError, match=r"score must have shape \[N\] or \[N, K\] and folds \[N\]"):
        fit_score_slope(probs, labels, score, folds[:10])
    with pytest.raises(ValueError, match="fold 9 holds 1 input"):
        fit_score_slope(probs, labels, score, np.where(np.arange(1600) == 0, 9, folds))


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), slope=st.sampled_from([0.0, 0.6, 1.2]))
def test_several_scores_get_one_slope_each_at_the_brute_force_optimum(seed, slope):
    """``[N, K]`` scores: T = exp(a + Σ b_k z_k). The fit beats a grid over (a, b_1, b_2 >= 0) on the NLL computed
    here from the formula; one column gives the one-score fit; the informative score gets the slope."""
    rng = np.random.default_rng(seed)
    probs, labels, score = _synthetic(rng, 300, slope)
    noise = rng.normal(size=300) * 7 + 2  # another score, unrelated to the errors, on its own scale
    both = np.stack([score, noise], 1)
    cal = fit_score_temperature(probs, labels, both)
    assert isinstance(cal.b, tuple) and len(cal.b) == 2 and min(cal.b) >= 0
    z = (both - both.mean(0)) / both.std(0)
    logp = np.log(probs)

    def nll(a, b):
        return _nll(softmax(logp / np.exp(a + z @ np.asarray(b))[:, None], axis=-1), labels)

    grid = min(
        nll(a, (b1, b2))
        for a in np.linspace(-1, 3, 21)
        for b1 in np.linspace(0, 2, 11)
        for b2 in np.linspace(0, 1, 6)
    )
    assert nll(cal.a, cal.b) <= grid + 1e-6
    np.testing.assert_allclose(cal(probs, both), softmax(logp / cal.temperatures(both)[:, None], axis=-1))
    one, col = (
        fit_score_temperature(probs, labels, score),
        fit_score_temperature(probs, labels, score[:, None]),
    )
    assert col.a == pytest.approx(one.a, abs=1e-4) and col.b[0] == pytest.approx(one.b, abs=1e-4)
    # fixed slopes fit only the intercept: a zero slope on the unrelated score is the one-score fit
    fixed = fit_score_temperature(probs, labels, both, slope=(0.5, 0.0))
    assert fixed.b == (0.5, 0.0)
    assert fixed.a == pytest.approx(fit_score_temperature(probs, labels, score, slope=0.5).a, abs=1e-5)


def test_several_scores_recover_the_informative_one_and_name_shape_errors():
    rng = np.random.default_rng(4)
    probs, labels, score = _synthetic(rng, 1600, 1.0)
    both = np.stack([rng.normal(size=1600), score], 1)
    folds = np.arange(1600) % 4
    b = fit_score_slope(probs, labels, both, folds)  # each fold and column standardised on its own
    assert isinstance(b, tuple) and b[1] > 0.6 and b[0] < 0.2
    cal = fit_score_temperature(probs, labels, both, slope=b)
    # torch tensors in, torch tensors out, the same numbers (and the same fit from torch inputs)
    got = cal(torch.from_numpy(probs), torch.from_numpy(both))
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), cal(probs, both), rtol=1e-12)
    assert fit_score_temperature(
        torch.from_numpy(probs), torch.from_numpy(labels), torch.from_numpy(both)
    ) == (fit_score_temperature(probs, labels, both))
    with pytest.raises(ValueError, match=r"score must have shape \[N, K\] = \[1600, 2\]"):
        cal(probs, score)
    with pytest.raises(ValueError, match=r"slope must be 2 finite numbers >= 0"):
        fit_score_temperature(probs, labels, both, slope=0.5)
    with pytest.raises(ValueError, match=r"slope must be 2 finite numbers >= 0"):
        fit_score_temperature(probs, labels, both, slope=(0.5, -1.0))
    with pytest.raises(ValueError, match=r"slope must be a finite number >= 0"):
        fit_score_temperature(probs, labels, score, slope=(0.5,))
    with pytest.raises(ValueError, match="NaN or inf"):
        fit_score_temperature(probs, labels, np.where(np.arange(1600)[:, None] == 3, np.nan, both))


class _Tempered:
    """A toy trainable model on inputs ``[logits (4), score]``: "training" fits one temperature on its data."""

    def __init__(self, x, y):
        self.t = fit_temperature(softmax(x[:, :4], axis=-1), y).value

    def predict(self, x, num_samples=1):
        return softmax(x[:, :4] / self.t, axis=-1)


def _shifted_score(model, x, y):
    """Each model scores on its own offset (its training scores' mean), as models of different folds do."""
    return lambda inputs: inputs[:, 4] - x[:, 4].mean() + 10 * model.t


def _toy_inputs(seed, n, slope):
    probs, labels, score = _synthetic(np.random.default_rng(seed), n, slope)
    return np.concatenate([np.log(probs), score[:, None]], 1), labels


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), folds=st.integers(2, 6))
def test_cross_fit_score_slope_is_fit_score_slope_on_the_folds_done_by_hand(seed, folds):
    """The same fold assignment, models and scores computed here step by step give the same slope, for one score,
    for ``[N, K]`` scores and for named scores (which all come from the same models)."""
    x, y = _toy_inputs(seed, 300, 0.7)
    fold_of = np.random.default_rng(seed).permutation(300) % folds
    probs, scores, two, ids, labels = [], [], [], [], []
    for k in range(folds):
        held = fold_of == k
        m = _Tempered(x[~held], y[~held])
        probs.append(m.predict(x[held])[None])
        scores.append(_shifted_score(m, x[~held], y[~held])(x[held]))
        two.append(np.stack([scores[-1], x[held][:, 0]], 1))
        ids.append(fold_of[held])
        labels.append(y[held])
    by_hand = fit_score_slope(
        np.concatenate(probs, 1), np.concatenate(labels), np.concatenate(scores), np.concatenate(ids)
    )
    got = cross_fit_score_slope(_Tempered, _shifted_score, x, y, folds=folds, seed=seed, progress=False)
    assert got == by_hand
    named = cross_fit_score_slope(
        _Tempered,
        lambda m, xs, ys: {
            "one": _shifted_score(m, xs, ys),
            "two": lambda i: np.stack([_shifted_score(m, xs, ys)(i), i[:, 0]], 1),
        },
        x,
        y,
        folds=folds,
        seed=seed,
        progress=False,
    )
    assert named["one"] == by_hand
    assert named["two"] == fit_score_slope(
        np.concatenate(probs, 1), np.concatenate(labels), np.concatenate(two), np.concatenate(ids)
    )


def test_cross_fit_score_slope_recovers_the_true_slope_that_a_validation_split_misses():
    x, y = _toy_inputs(5, 1500, 1.0)
    b = cross_fit_score_slope(_Tempered, _shifted_score, x, y, folds=5, progress=False)
    assert 0.6 < b < 1.6
    # torch inputs and a torch "model" give the same slope
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    class Torchy(_Tempered):
        def __init__(self, x, y):
            super().__init__(x.numpy(), y.numpy())

        def predict(self, x, num_samples=1):
            return torch.from_numpy(super().predict(x.numpy()))[None].expand(num_samples, -1, -1)

    got = cross_fit_score_slope(
        Torchy,
        lambda m, xs, ys: lambda i: i[:, 4] - xs[:, 4].mean() + 10 * m.t,
        xt,
        yt,
        num_samples=3,
        progress=False,
    )
    assert got == pytest.approx(b, abs=1e-6)


def test_cross_fit_score_slope_names_what_is_wrong():
    x, y = _toy_inputs(6, 60, 0.5)
    call = lambda **k: cross_fit_score_slope(  # noqa: E731
        k.pop("train", _Tempered),
        k.pop("score", _shifted_score),
        k.pop("x", x),
        k.pop("y", y),
        progress=False,
        **k,
    )
    for bad in (1, 0, 2.0, True):
        with pytest.raises(ValueError, match="folds must be an integer >= 2"):
            call(folds=bad)
    with pytest.raises(ValueError, match="folds=61 exceeds the 60 inputs"):
        call(folds=61)
    with pytest.raises(ValueError, match="x and y must have one row per input; got 60 and 59"):
        call(y=y[:59])
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        call(num_samples=0)

    class Short(_Tempered):
        def predict(self, x, num_samples=1):
            return super().predict(x)[1:]

    with pytest.raises(ValueError, match=r"fold 0: predict returned 11 predictions for 12 inputs"):
        call(train=Short)
    with pytest.raises(ValueError, match=r"fold 0: score None returned shape \(11,\) for 12 inputs"):
        call(score=lambda m, xs, ys: lambda i: i[1:, 4])
    with pytest.raises(
        ValueError,
        match=r"fold 0: predict's probabilities must have shape \[S, N, C\].* or \[N, C\]; got shape \(12,\)",
    ):
        call(train=lambda xs, ys: type("M", (), {"predict": lambda self, i, num_samples: np.ones(len(i))})())
    sizes = iter([1, 2, 1, 1, 1])

    class Varying(_Tempered):
        def predict(self, x, num_samples=1):
            return np.repeat(super().predict(x)[None], next(sizes), 0)

    with pytest.raises(ValueError, match=r"as many samples S; got \[1, 2, 1, 1, 1\]"):
        call(train=Varying)
    names = iter(["a", "a", "b", "a", "a"])
    with pytest.raises(ValueError, match="the same score names for every fold"):
        call(score=lambda m, xs, ys: {next(names): (lambda i: i[:, 4])})
