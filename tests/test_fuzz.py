"""Bad input, fuzzed: every public entry point returns a correct, finite result or raises a clear error.

Hypothesis draws arrays of random shapes (empty, wrong rank), dtypes (bool, int, float16/32/64),
values (NaN, ±inf, 1e30, out-of-range labels) and libraries (numpy, torch; a few jax cases).
The property, per call:

* the result is correct: finite and equal to an independent numpy computation, or meeting an
  invariant (probabilities sum to 1, ``0 <= MI <= H <= log C``, ...); or
* the call raises ``ValueError``/``TypeError`` (or the documented ``FloatingPointError``) *from
  uncertlr's own code* with a message naming the problem ("shape", "dtype", "NaN", "label", ...).

Anything else — a ``RuntimeError``/``IndexError`` from torch, a JAX ``TypeError`` from its
internals, an ``AttributeError``, a silent NaN — fails the test.
"""

from __future__ import annotations

import math
import os
import traceback

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uncertlr import metrics

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
FEW = settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
UNCERTLR_DIR = os.sep + "uncertlr" + os.sep
CLEAR = (ValueError, TypeError)


def clear_error(exc: BaseException, *words: str) -> None:
    """Assert that ``exc`` is a clear error: raised by uncertlr itself, its message naming one of ``words``."""
    assert isinstance(exc, CLEAR), f"opaque {type(exc).__name__}: {exc}"
    origin = traceback.extract_tb(exc.__traceback__)[-1].filename
    assert UNCERTLR_DIR in origin, f"{type(exc).__name__} raised outside uncertlr ({origin}): {exc}"
    msg = str(exc).lower()
    assert any(w.lower() in msg for w in words), f"{type(exc).__name__} names none of {words}: {exc}"


def attempt(fn, *words: str):
    """``(True, result)`` or ``(False, exc)`` after checking that ``exc`` is a clear error."""
    try:
        return True, fn()
    except Exception as exc:  # noqa: BLE001 - clear_error re-raises anything opaque as a failure
        clear_error(exc, *words)
        return False, exc


def to_lib(a: np.ndarray, lib: str):
    return torch.from_numpy(a.copy()) if lib == "torch" else a


def as_np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# --------------------------------------------------------------------------- strategies

FLOAT_DTYPES = [np.float16, np.float32, np.float64]
BAD_VALUES = [np.nan, np.inf, -np.inf, 1e30, -1e30, -0.5, 2.0]
libs = st.sampled_from(["numpy", "torch"])


@st.composite
def prob_arrays(draw, max_s: int = 4, max_n: int = 5, max_c: int = 5):
    """Mostly valid ``[S, N, C]``/``[N, C]`` probabilities, sometimes with a wrong rank, dtype or value."""
    rank = draw(st.sampled_from([3, 3, 3, 2, 2, 1, 4]))
    dims = [draw(st.integers(0 if draw(st.booleans()) else 1, m)) for m in (max_s, max_n, max_c)]
    shape = tuple(dims[-rank:]) if rank <= 3 else (2, *dims)
    seed = draw(st.integers(0, 2**16))
    p = np.random.default_rng(seed).dirichlet(np.full(max(shape[-1], 1), 0.5), size=shape[:-1])
    p = p[..., : shape[-1]] if shape else np.float64(0.5)
    p = np.asarray(p, dtype=np.float64)
    if p.size and draw(st.integers(0, 3)) == 0:
        flat = p.reshape(-1)
        for _ in range(draw(st.integers(1, 3))):
            flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from(BAD_VALUES))
    dtype = draw(st.sampled_from(FLOAT_DTYPES * 3 + [np.int64, np.bool_]))
    with np.errstate(all="ignore"):
        return p.astype(dtype)


def probs_valid(p: np.ndarray, margin: float) -> bool | None:
    """True/False when clearly (in)valid per the documented checks; None on the tolerance border."""
    if p.ndim not in (2, 3) or p.shape[-1] < 2 or p.shape[0] == 0 or p.dtype.kind != "f":
        return False
    q = p.astype(np.float64).reshape(-1, p.shape[-1])
    if q.size == 0:
        return True
    if not np.isfinite(q).all() or (q < 0).any():
        return False
    err = max(np.abs(q.sum(-1) - 1).max(), (q - 1).max())
    atol = metrics.PROB_SUM_ATOL
    return True if err <= atol * (1 - margin) else False if err > atol * (1 + margin) else None


@st.composite
def label_arrays(draw, n: int, c: int):
    """Labels for ``n`` inputs and ``c`` classes: mostly valid; else wrong length, rank, dtype or range."""
    kind = draw(st.sampled_from(["ok", "ok", "ok", "range", "float", "bool", "shape", "list"]))
    length = n if kind != "shape" else draw(st.sampled_from([max(n - 1, 0), n + 1]))
    lo, hi = (0, max(c - 1, 0)) if kind != "range" else draw(st.sampled_from([(-3, -1), (c, c + 3)]))
    y = np.asarray(draw(st.lists(st.integers(lo, hi), min_size=length, max_size=length)), dtype=np.int64)
    if kind == "shape" and draw(st.booleans()):
        y = y.reshape(-1, 1) if y.size else y.reshape(0, 1)
    dtype = {"float": np.float32, "bool": np.bool_}.get(
        kind, draw(st.sampled_from([np.int64, np.int32, np.uint8]))
    )
    if kind == "range" and dtype == np.uint8:
        dtype = np.int64
    y = y.astype(dtype)
    return y.tolist() if kind == "list" else y


def labels_valid(y, n: int, c: int) -> bool:
    if isinstance(y, list):
        return len(y) == n and all(isinstance(v, int) and 0 <= v < c for v in y)
    y = as_np(y)
    return (
        y.ndim == 1
        and y.shape[0] == n
        and y.dtype.kind in "iu"
        and (n == 0 or (y.min() >= 0 and y.max() < c))
    )


def tol(dtype) -> float:
    return {np.dtype(np.float16): 3e-2, np.dtype(np.float32): 1e-4}.get(np.dtype(dtype), 1e-9)


def entropy_ref(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-300, None)
    return -(p * np.log(q)).sum(-1)


# --------------------------------------------------------------------------- metrics: uncertainty


@FUZZ
@given(p=prob_arrays(), lib=libs, normalized=st.booleans())
def test_uncertainty_metrics_are_correct_or_refuse_clearly(p, lib, normalized):
    valid = probs_valid(p, margin=0.5)
    x = to_lib(p, lib)
    ok, d = attempt(
        lambda: metrics.uncertainty_decomposition(x, normalized=normalized),
        "shape",
        "dtype",
        "floating",
        "nan",
        "[0, 1]",
        "sum to 1",
        "classes",
        "empty",
    )
    if valid is not None:
        assert ok == valid, f"valid={valid} but got {d!r}"
    if not ok:
        for fn in (metrics.predictive_entropy, metrics.expected_entropy, metrics.mutual_information):
            with pytest.raises(type(d)):
                fn(x)
        return
    q = p.astype(np.float64)
    q = q[None] if q.ndim == 2 else q
    c = q.shape[-1]
    scale = math.log(c) if normalized else 1.0
    total, alea = entropy_ref(q.mean(0)) / scale, entropy_ref(q).mean(0) / scale
    t = tol(p.dtype) * max(1.0, math.log(c))
    got = {k: as_np(v).astype(np.float64) for k, v in d._asdict().items()}
    assert all(np.isfinite(v).all() and v.shape == (q.shape[1],) for v in got.values())
    np.testing.assert_allclose(got["total"], total, atol=t)
    np.testing.assert_allclose(got["aleatoric"], alea, atol=t)
    upper = 1.0 if normalized else math.log(c)
    assert (got["total"] >= -t).all() and (got["total"] <= upper + t).all()
    assert (got["epistemic"] >= 0).all() and (got["epistemic"] <= got["total"] + t).all()
    pbar = as_np(metrics.mean_probs(x)).astype(np.float64)
    np.testing.assert_allclose(pbar.sum(-1), 1.0, atol=2 * metrics.PROB_SUM_ATOL + t)
    np.testing.assert_allclose(as_np(metrics.mutual_information(x, normalized=normalized)), got["epistemic"])


# --------------------------------------------------------------------------- metrics: calibration


@st.composite
def probs_and_labels(draw):
    p = draw(prob_arrays())
    n = p.shape[-2] if p.ndim >= 2 else 0
    c = p.shape[-1] if p.ndim >= 1 else 2
    return p, draw(label_arrays(n, c)), draw(libs), draw(libs)


@FUZZ
@given(case=probs_and_labels(), num_bins=st.sampled_from([1, 3, 15, 0, -2, 2.5, True, "10", np.int64(4)]))
def test_calibration_metrics_are_correct_or_refuse_clearly(case, num_bins):
    p, y, plib, ylib = case
    x = to_lib(p, plib)
    yy = y if isinstance(y, list) else to_lib(y, ylib)
    n = p.shape[-2] if p.ndim >= 2 else 0
    c = p.shape[-1] if p.ndim >= 1 else 0
    pv = probs_valid(p, margin=0.5)
    valid = None if pv is None else pv and n > 0 and labels_valid(y, n, c)
    words = (
        "shape",
        "dtype",
        "floating",
        "integer",
        "nan",
        "[0, 1]",
        "sum to 1",
        "classes",
        "empty",
        "labels must lie",
    )
    results = {}
    for name, fn in [("accuracy", metrics.accuracy), ("nll", metrics.nll), ("brier", metrics.brier)]:
        ok, results[name] = attempt(lambda fn=fn: fn(x, yy), *words)
        if valid is not None:
            assert ok == valid, f"{name}: valid={valid} but got {results[name]!r}"
        if not ok:
            return
    bins_ok = isinstance(num_bins, (int, np.integer)) and not isinstance(num_bins, bool) and num_bins >= 1
    ok, bins = attempt(lambda: metrics.reliability_bins(x, yy, num_bins=num_bins), "num_bins")
    assert ok == bins_ok
    for fn in (metrics.ece, metrics.adaptive_ece):
        ok, e = attempt(lambda fn=fn: fn(x, yy, num_bins=num_bins), "num_bins")
        assert ok == bins_ok
        if ok:
            assert 0.0 <= float(e) <= 1.0 + tol(p.dtype)
    if bins_ok:
        assert float(as_np(bins.count).sum()) == n
    q = p.astype(np.float64)
    q = q[None] if q.ndim == 2 else q
    pbar = q.mean(0)
    yi = np.asarray(y, dtype=np.int64)
    t = tol(p.dtype)
    acc, nll, brier = (float(results[k]) for k in ("accuracy", "nll", "brier"))
    assert 0.0 <= acc <= 1.0
    if p.dtype == np.float64:  # exact ties in lower precision can flip the argmax
        assert acc == pytest.approx((pbar.argmax(-1) == yi).mean())
    ref_nll = -np.log(np.clip(pbar[np.arange(n), yi], np.finfo(p.dtype).tiny, None)).mean()
    assert math.isfinite(nll) and nll == pytest.approx(ref_nll, rel=10 * t, abs=10 * t)
    onehot = np.eye(c)[yi]
    assert brier == pytest.approx(((pbar - onehot) ** 2).sum(-1).mean(), abs=10 * t)


# --------------------------------------------------------------------------- metrics: regression, AUROC, spread


@st.composite
def real_arrays(draw, shape, *, positive: bool = False):
    """Arrays of ``shape`` (sometimes another one), any dtype; mostly moderate values, some bad ones."""
    if draw(st.integers(0, 5)) == 0:
        shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
    lo = 0.05 if positive else -5.0
    vals = draw(st.lists(st.floats(lo, 5.0), min_size=math.prod(shape), max_size=math.prod(shape)))
    a = np.asarray(vals, dtype=np.float64).reshape(shape)
    if a.size and draw(st.integers(0, 3)) == 0:
        a.reshape(-1)[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from(BAD_VALUES + [0.0, 1e20]))
    dtype = draw(st.sampled_from(FLOAT_DTYPES * 3 + [np.int64, np.bool_]))
    if dtype is np.int64:  # a cast of NaN/inf to int is undefined (INT64_MIN in practice): keep ints sane
        a = np.clip(np.nan_to_num(a), -1e9, 1e9)
    with np.errstate(all="ignore"):
        return np.asarray(a).astype(dtype)


@st.composite
def regression_case(draw):
    shape = (draw(st.integers(0, 4)), draw(st.integers(0, 4)), *draw(st.sampled_from([(), (2,)])))
    mean = draw(real_arrays(shape))
    var_shape = draw(st.sampled_from([mean.shape, mean.shape[1:], (1,), ()]))
    variance = draw(real_arrays(var_shape, positive=True))
    targets = draw(real_arrays(mean.shape[1:]))
    return mean, variance, targets, draw(libs), draw(libs)


def finite_float(a: np.ndarray, *, allow_int: bool = False) -> bool:
    if a.dtype.kind == "f":
        return bool(np.isfinite(a).all())
    return allow_int and a.dtype.kind in "iu"


def overflows(*arrays: np.ndarray) -> bool:
    """Whether values are large enough that a squared term may overflow in the arrays' own dtype."""
    return any(
        a.dtype.kind == "f"
        and a.size
        and np.abs(a.astype(np.float64)).max() ** 2 > np.finfo(a.dtype).max / 1e3
        for a in arrays
    )


@FUZZ
@given(case=regression_case())
def test_regression_metrics_are_correct_or_refuse_clearly(case):
    mean, var, tgt, lib_a, lib_b = case
    m, v, t = to_lib(mean, lib_a), to_lib(var, lib_b), to_lib(tgt, lib_b)
    words = (
        "shape",
        "dtype",
        "floating",
        "real-valued",
        "nan",
        "empty",
        "negative",
        "positive",
        "broadcast",
        "overflow",
    )
    shape_ok = mean.ndim >= 2 and mean.size > 0
    try:
        bcast = mean.ndim >= 2 and np.broadcast_shapes(var.shape, mean.shape) == mean.shape
    except ValueError:
        bcast = False
    big = overflows(mean, var, tgt) or np.float16 in (mean.dtype, var.dtype, tgt.dtype)
    rt = 10 * tol(mean.dtype) + (0.05 if np.float16 in (var.dtype, tgt.dtype) else 0.0)

    # predictive_variance is per input: N = 0 gives empty results, like the entropies
    pv_shape = mean.ndim >= 2 and mean.shape[0] > 0
    valid_pv = pv_shape and bcast and finite_float(mean) and finite_float(var) and (var >= 0).all()
    ok, d = attempt(lambda: metrics.predictive_variance(m, v), *words)
    if not (valid_pv and big):
        assert ok == valid_pv, f"valid={valid_pv} but got {d!r}"
    if ok:
        mm = mean.astype(np.float64)
        vv = np.broadcast_to(var.astype(mean.dtype).astype(np.float64), mean.shape)
        np.testing.assert_allclose(as_np(d.aleatoric), vv.mean(0), rtol=rt, atol=rt)
        np.testing.assert_allclose(as_np(d.epistemic), mm.var(0), rtol=rt, atol=rt)
        assert np.isfinite(as_np(d.total)).all()

    tshape = tgt.shape == mean.shape[1:]
    valid_g = valid_pv and shape_ok and tshape and finite_float(tgt) and (var > 0).all()
    ok, g = attempt(lambda: metrics.gaussian_nll(m, v, t), *words)
    if not (valid_g and big):
        assert ok == valid_g, f"valid={valid_g} but got {g!r}"
    if ok:
        mm, tt = mean.astype(np.float64), tgt.astype(np.float64)
        vv = np.broadcast_to(var.astype(mean.dtype).astype(np.float64), mean.shape)
        logp = -0.5 * (np.log(2 * np.pi * vv) + (tt[None] - mm) ** 2 / vv)
        mx = logp.max(0)
        ref = -(mx + np.log(np.exp(logp - mx).mean(0))).mean()
        assert math.isfinite(float(g)) and float(g) == pytest.approx(ref, rel=rt, abs=rt)

    valid_r = shape_ok and tshape and finite_float(mean, allow_int=True) and finite_float(tgt, allow_int=True)
    ok, r = attempt(lambda: metrics.rmse(m, t), *words)
    if not (valid_r and big):
        assert ok == valid_r, f"valid={valid_r} but got {r!r}"
    if ok:
        ref = np.sqrt(((mean.astype(np.float64).mean(0) - tgt.astype(np.float64)) ** 2).mean())
        assert math.isfinite(float(r)) and float(r) == pytest.approx(ref, rel=rt, abs=rt)


@FUZZ
@given(
    a=real_arrays((3,)),
    b=real_arrays((2,)),
    lib_a=libs,
    lib_b=libs,
)
def test_ood_auroc_is_correct_or_refuses_clearly(a, b, lib_a, lib_b):
    valid = a.ndim == b.ndim == 1 and a.size and b.size and finite_float(a) and finite_float(b)
    ok, auc = attempt(
        lambda: metrics.ood_auroc(to_lib(a, lib_a), to_lib(b, lib_b)),
        "1-d",
        "at least one",
        "nan",
        "floating",
    )
    assert ok == bool(valid), f"valid={valid} but got {auc!r}"
    if ok:
        x, y = a.astype(np.float64), b.astype(np.float64)
        ref = ((y[None, :] > x[:, None]) + 0.5 * (y[None, :] == x[:, None])).mean()
        assert float(auc) == pytest.approx(ref, abs=1e-6)


@FUZZ
@given(mu=real_arrays((3,)), sigma=real_arrays((3,), positive=True), lib_a=libs, lib_b=libs)
def test_layer_spread_is_correct_or_refuses_clearly(mu, sigma, lib_a, lib_b):
    loc, scale = {"fc.weight": to_lib(mu, lib_a)}, {"fc.weight": to_lib(sigma, lib_b)}
    valid = (
        mu.shape == sigma.shape
        and finite_float(mu, allow_int=True)
        and finite_float(sigma, allow_int=True)
        and (sigma.astype(np.float64) > 0).all()
    )
    ok, s = attempt(lambda: metrics.layer_spread(loc, scale), "shape", "nan", "positive", "real-valued")
    assert ok == bool(valid), f"valid={valid} but got {s!r}"
    if ok and mu.size:
        m, sg = mu.astype(np.float64), sigma.astype(np.float64)
        assert s["fc"].mean_scale == pytest.approx(sg.mean(), rel=1e-2)
        assert s["fc"].mean_snr == pytest.approx((np.abs(m) / sg).mean(), rel=1e-2)
