"""Bad input, fuzzed: every public entry point returns a correct, finite result or raises a clear error.

Hypothesis draws arrays of random shapes (empty, wrong rank), dtypes (bool, int, float16/32/64),
values (NaN, ±inf, 1e30, out-of-range labels) and libraries (numpy, torch; a few jax cases).
The property, per call:

* the result is correct: finite and equal to an independent numpy computation, or meeting an
  invariant (probabilities sum to 1, ``0 <= MI <= H <= log C``, ...); or
* the call raises ``ValueError``/``TypeError`` *from uncertlr's own code* (the last traceback
  frame is in the package) with a message naming the problem ("shape", "dtype", "NaN", "label", ...).

Anything else — a ``RuntimeError``/``IndexError`` from torch, a JAX ``TypeError`` from its
internals, an ``AttributeError``, a numpy ``RuntimeWarning`` (an error under pytest's config),
a silent NaN — fails the test. Each strategy breaks at most one thing per example (or nothing,
about half the time), so valid inputs are checked as thoroughly as bad ones; run with
``--hypothesis-show-statistics`` to see the split. Examples are bounded (40, or 25 for the
slower cases, no deadline) and derandomized under the repository's ``ci`` profile.
"""

from __future__ import annotations

import math
import os
import pickle
import tempfile
import traceback
from functools import cache

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from torch import nn

from uncertlr import metrics
from uncertlr.modulation import (
    GradientNoise,
    GradSigmaRatio,
    ParamSignal,
    Ratio,
    SigmaRatio,
    VarianceRatio,
    ZScore,
    confidence_weights,
)
from uncertlr.torch import (
    Modulator,
    batch_entropy,
    batch_mutual_information,
    bayesian,
    confidence_weighted_nll,
)
from uncertlr.torch.checkpoint import load_checkpoint, save_checkpoint

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
FEW = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
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
        result = fn()
    except Exception as exc:  # noqa: BLE001 - clear_error re-raises anything opaque as a failure
        clear_error(exc, *words)
        _event(f"refused: {type(exc).__name__}")
        return False, exc
    _event("returned a result")
    return True, result


def _event(name: str) -> None:
    """Tally outcomes in ``--hypothesis-show-statistics`` (a no-op outside a hypothesis test)."""
    if currently_in_test_context():
        event(name)


def to_lib(a: np.ndarray, lib: str):
    return torch.from_numpy(a.copy()) if lib == "torch" else a


def as_np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# --------------------------------------------------------------------------- strategies

FLOAT_DTYPES = [np.float16, np.float32, np.float64]
BAD_VALUES = [np.nan, np.inf, -np.inf, 1e30, -1e30, -0.5, 2.0]
libs = st.sampled_from(["numpy", "torch"])


PROB_FAULTS = ["rank", "empty", "values", "dtype"]


def faults(options: list[str]) -> st.SearchStrategy[str | None]:
    """One fault per example (or none, half of the time), so valid inputs are well covered too."""
    return st.sampled_from([None] * len(options) + options)


@st.composite
def prob_arrays(draw, fault: str | None = "any"):
    """``[S, N, C]``/``[N, C]`` probabilities, valid unless ``fault`` names what to break."""
    if fault == "any":
        fault = draw(faults(PROB_FAULTS))
    rank = draw(st.sampled_from([3, 2])) if fault != "rank" else draw(st.sampled_from([0, 1, 4]))
    dims = [draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(2, 5))]
    if fault == "empty":
        dims[draw(st.integers(0, 2))] = 0
    shape = tuple(dims[3 - rank :]) if rank <= 3 else (2, *dims)
    seed = draw(st.integers(0, 2**16))
    p = np.random.default_rng(seed).dirichlet(np.full(max(dims[-1], 1), 0.5), size=shape[:-1])
    p = np.asarray(p[..., : shape[-1]] if shape else 0.5, dtype=np.float64)
    if fault == "values" and p.size:
        flat = p.reshape(-1)
        for _ in range(draw(st.integers(1, 3))):
            flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from(BAD_VALUES))
    kinds = [np.int64, np.bool_] if fault == "dtype" else FLOAT_DTYPES
    with np.errstate(all="ignore"):
        return p.astype(draw(st.sampled_from(kinds)))


def probs_valid(p: np.ndarray, margin: float) -> bool | None:
    """True/False when clearly (in)valid per the documented checks; None on the tolerance border."""
    if p.ndim not in (2, 3) or p.shape[-1] < 2 or p.dtype.kind != "f" or (p.ndim == 3 and p.shape[0] == 0):
        return False
    q = p.astype(np.float64).reshape(-1, p.shape[-1])
    if q.size == 0:
        return True
    if not np.isfinite(q).all() or (q < 0).any():
        return False
    err = max(np.abs(q.sum(-1) - 1).max(), (q - 1).max())
    atol = metrics.PROB_SUM_ATOL
    return True if err <= atol * (1 - margin) else False if err > atol * (1 + margin) else None


LABEL_FAULTS = ["range", "float", "bool", "shape", "list"]


@st.composite
def label_arrays(draw, n: int, c: int, fault: str | None = "any"):
    """Labels for ``n`` inputs and ``c`` classes, valid unless ``fault`` names what to break."""
    if fault == "any":
        fault = draw(faults(LABEL_FAULTS))
    length = n if fault != "shape" else draw(st.sampled_from([max(n - 1, 0), n + 1]))
    lo, hi = (0, max(c - 1, 0)) if fault != "range" else draw(st.sampled_from([(-3, -1), (c, c + 3)]))
    y = np.asarray(draw(st.lists(st.integers(lo, hi), min_size=length, max_size=length)), dtype=np.int64)
    if fault == "shape" and draw(st.booleans()):
        y = y.reshape(-1, 1)
    dtype = {"float": np.float32, "bool": np.bool_}.get(
        fault, draw(st.sampled_from([np.int64, np.int32, np.uint8]))
    )
    if fault == "range":
        dtype = np.int64
    y = y.astype(dtype)
    return y.tolist() if fault == "list" else y


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
    fault = draw(faults(["probs", "labels", "labels"]))
    p = draw(prob_arrays(fault=draw(st.sampled_from(PROB_FAULTS)) if fault == "probs" else None))
    n = p.shape[-2] if p.ndim >= 2 else 0
    c = p.shape[-1] if p.ndim >= 1 else 2
    y = draw(label_arrays(n, c, fault="any" if fault == "labels" else None))
    return p, y, draw(libs), draw(libs)


@FUZZ
@given(case=probs_and_labels(), num_bins=st.sampled_from([15, 3, 1, np.int64(4), 0, -2, 2.5, True, "10"]))
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
def real_arrays(draw, shape, *, positive: bool = False, fault: str | None = "any"):
    """Real arrays of ``shape`` with moderate values, unless ``fault`` asks for another shape, values or dtype."""
    if fault == "any":
        fault = draw(faults(["shape", "values", "dtype"]))
    if fault == "shape":
        shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
    lo = 0.05 if positive else -5.0
    vals = draw(st.lists(st.floats(lo, 5.0), min_size=math.prod(shape), max_size=math.prod(shape)))
    a = np.asarray(vals, dtype=np.float64).reshape(shape)
    if fault == "values" and a.size:
        a.reshape(-1)[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from(BAD_VALUES + [0.0, 1e20]))
    dtype = draw(st.sampled_from([np.int64, np.bool_] if fault == "dtype" else FLOAT_DTYPES))
    if dtype is np.int64:  # a cast of NaN/inf to int is undefined (INT64_MIN in practice): keep ints sane
        a = np.clip(np.nan_to_num(a), -1e9, 1e9)
    with np.errstate(all="ignore"):
        return np.asarray(a).astype(dtype)


@st.composite
def regression_case(draw):
    fault = draw(faults(["mean", "variance", "targets", "empty"]))
    shape = (draw(st.integers(1, 4)), draw(st.integers(1, 4)), *draw(st.sampled_from([(), (2,)])))
    if fault == "empty":
        shape = (0, *shape[1:]) if draw(st.booleans()) else (shape[0], 0, *shape[2:])
    mean = draw(real_arrays(shape, fault="any" if fault == "mean" else None))
    var_shape = draw(st.sampled_from([mean.shape, mean.shape[1:], (1,), ()]))
    variance = draw(real_arrays(var_shape, positive=True, fault="any" if fault == "variance" else None))
    targets = draw(real_arrays(mean.shape[1:], fault="any" if fault == "targets" else None))
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


# --------------------------------------------------------------------------- torch BNN: loss and predict

NUM_IN, NUM_CLASSES = 5, 3


@cache
def _bnns():
    torch.manual_seed(0)
    clf = bayesian(nn.Sequential(nn.Linear(NUM_IN, 8), nn.ReLU(), nn.Linear(8, NUM_CLASSES)), num_data=20)
    reg = bayesian(
        nn.Sequential(nn.Linear(NUM_IN, 8), nn.Tanh(), nn.Linear(8, 1)), num_data=20, likelihood="normal"
    )
    return clf, reg


TORCH_DTYPES = [torch.float32] * 4 + [torch.float64, torch.float16, torch.int64, torch.bool]


X_FAULTS = ["shape", "empty", "values", "dtype", "numpy", "meta"]


@st.composite
def torch_inputs(draw, fault: str | None = "any"):
    """``x[B, 5]`` float32 on the CPU, unless ``fault`` names what to break."""
    if fault == "any":
        fault = draw(faults(X_FAULTS))
    b = draw(st.integers(1, 4)) if fault != "empty" else 0
    shape = (b, NUM_IN)
    if fault == "shape":
        shape = draw(st.sampled_from([(NUM_IN,), (b, NUM_IN + 1), (b, 2, NUM_IN), (b, 1), ()]))
    a = np.random.default_rng(draw(st.integers(0, 2**16))).normal(size=shape)
    if fault == "values" and a.size:
        a.reshape(-1)[draw(st.integers(0, a.size - 1))] = draw(
            st.sampled_from([np.nan, np.inf, -np.inf, 1e30, 3e38])
        )
    dtype = torch.float32
    if fault == "dtype":
        dtype = draw(st.sampled_from([torch.float64, torch.float16, torch.int64, torch.bool]))
    with np.errstate(all="ignore"):
        x = torch.from_numpy(np.asarray(a).copy()).to(dtype)
    if fault == "numpy":
        return x.numpy()
    return x.to("meta") if fault == "meta" else x


def x_valid(x) -> bool:
    return (
        isinstance(x, torch.Tensor)
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and tuple(x.shape[1:]) == (NUM_IN,)
        and x.shape[0] > 0
        and bool(torch.isfinite(x).all())
    )


def x_huge(x) -> bool:
    return x_valid(x) and float(x.abs().max()) > 1e15


X_WORDS = (
    "shape",
    "dtype",
    "nan",
    "non-empty",
    "torch.tensor",
    " on ",
    "cannot be applied",
    "not finite",
    "outputs",
)


@st.composite
def class_labels(draw, b: int, fault: str | None = "any"):
    """Label tensors ``[b]``; a fault may also hand over a numpy array or a list instead of a tensor."""
    if fault == "any":
        fault = draw(faults([*LABEL_FAULTS, "numpy"]))
    y = draw(label_arrays(b, NUM_CLASSES, fault=None if fault == "numpy" else fault))
    return y if isinstance(y, list) or fault == "numpy" else torch.from_numpy(y.copy())


@FUZZ
@given(data=st.data(), fault=faults(["x", "y", "y", "num_particles"]))
def test_bnn_classifier_loss_is_finite_or_refuses_clearly(data, fault):
    clf, _ = _bnns()
    x = data.draw(torch_inputs(fault="any" if fault == "x" else None))
    b = x.shape[0] if getattr(x, "ndim", 0) else 0
    y = data.draw(class_labels(b, fault="any" if fault == "y" else None))
    num_particles = data.draw(st.sampled_from([0, 1.5, True] if fault == "num_particles" else [1, 2]))
    ok, loss = attempt(
        lambda: clf.loss(x, y, num_particles=num_particles),
        *X_WORDS,
        "label",
        "integer",
        "batch size",
        "num_particles",
        "elbo is not finite",
    )
    valid = (
        x_valid(x)
        and isinstance(y, torch.Tensor)
        and labels_valid(y, b, NUM_CLASSES)
        and num_particles in (1, 2)
        and not isinstance(num_particles, bool)
    )
    if not x_huge(x):
        assert ok == valid, f"valid={valid} but got {loss!r}"
    if ok:
        assert loss.dim() == 0 and torch.isfinite(loss) and loss.requires_grad


@FUZZ
@given(x=torch_inputs(), num_samples=st.sampled_from([3, 1, 3, 3, 0, -1, 2.5, "2", True]))
def test_bnn_predict_is_a_distribution_or_refuses_clearly(x, num_samples):
    clf, reg = _bnns()
    valid_samples = num_samples in (1, 3) and not isinstance(num_samples, bool)
    valid = x_valid(x) and valid_samples
    ok, probs = attempt(lambda: clf.predict(x, num_samples=num_samples), *X_WORDS, "num_samples")
    if not x_huge(x):
        assert ok == valid, f"valid={valid} but got {probs!r}"
    if ok:
        assert tuple(probs.shape) == (num_samples, x.shape[0], NUM_CLASSES)
        assert torch.isfinite(probs).all() and (probs >= 0).all()
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:2]))
    ok, pred = attempt(lambda: reg.predict(x, num_samples=num_samples), *X_WORDS, "num_samples")
    # a regressor may have per-input outputs [N, ...]: x[B, 2, 5] gives means [S, B, 2, 1]
    extra_axis = valid_samples and x_valid(x[:, 0]) if getattr(x, "ndim", 0) == 3 else False
    if not x_huge(x):
        assert ok == (valid or extra_axis), f"valid={valid} but got {pred!r}"
    if ok:
        want = (num_samples, *x.shape[:-1], 1)
        assert tuple(pred.mean.shape) == tuple(pred.variance.shape) == want
        assert torch.isfinite(pred.mean).all() and (pred.variance > 0).all()


@FUZZ
@given(
    data=st.data(),
    kind=st.sampled_from(
        ["ok"] * 4 + ["f64", "f16", "x", "x", "flat", "int", "nan", "huge", "numpy", "short"]
    ),
)
def test_bnn_regression_loss_is_finite_or_refuses_clearly(data, kind):
    _, reg = _bnns()
    x = data.draw(torch_inputs(fault="any" if kind == "x" else None))
    b = x.shape[0] if getattr(x, "ndim", 0) else 1
    y = torch.randn(b, 1)
    y = {
        "flat": y.reshape(-1),
        "int": y.long(),
        "f64": y.double(),
        "f16": y.half(),
        "nan": torch.full_like(y, float("nan")),
        "huge": torch.full_like(y, 1e30),
        "numpy": y.numpy(),
        "short": y[:-1],
    }.get(kind, y)
    ok, loss = attempt(lambda: reg.loss(x, y), *X_WORDS, "target", "batch size", "elbo is not finite")
    valid = x_valid(x) and kind in ("ok", "f64", "f16", "x")  # kind "x" may draw a valid x too
    if not x_huge(x):
        assert ok == valid, f"valid={valid} but got {loss!r}"
    if ok:
        assert loss.dim() == 0 and torch.isfinite(loss)


# --------------------------------------------------------------------------- torch signals


@st.composite
def logits_tensors(draw):
    fault = draw(faults(["shape", "values", "dtype", "numpy"]))
    shape = draw(st.sampled_from([(4, 3), (2, 4, 3), (1, 4, 3), (3, 2)]))
    if fault == "shape":
        shape = draw(st.sampled_from([(0, 3), (4, 0), (2, 0, 3), (0, 4, 3), (3,), (2, 2, 2, 3)]))
    a = np.random.default_rng(draw(st.integers(0, 2**16))).normal(scale=3.0, size=shape)
    if fault == "values" and a.size:
        a.reshape(-1)[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf, 1e30, -1e30]))
    dtype = draw(
        st.sampled_from([torch.int64, torch.bool] if fault == "dtype" else [torch.float32, torch.float64])
    )
    t = torch.from_numpy(a.copy()).to(dtype)
    return t.numpy() if fault == "numpy" else t


@FUZZ
@given(data=st.data(), logits=logits_tensors())
def test_torch_signals_are_bounded_or_refuse_clearly(data, logits):
    is_t = isinstance(logits, torch.Tensor)
    shape_ok = is_t and logits.dim() in (2, 3) and logits.numel() > 0
    valid = shape_ok and logits.dtype.is_floating_point
    words = ("shape", "dtype", "floating", "torch.tensor", "empty", "classes")
    ok, h = attempt(lambda: batch_entropy(logits), *words)
    assert ok == valid, f"valid={valid} but got {h!r}"
    c = logits.shape[-1] if valid else 1
    finite_in = valid and bool(torch.isfinite(logits).all())
    if ok and finite_in:  # non-finite logits give a NaN signal, which the modulator holds (no host sync here)
        assert h.dim() == 0 and 0.0 <= float(h) <= math.log(c) + 1e-5
    ok, mi = attempt(lambda: batch_mutual_information(logits), *words)
    assert ok == (valid and c >= 2)
    if ok and finite_in:
        assert -1e-6 <= float(mi) <= float(h) + 1e-5
    b = logits.shape[-2] if shape_ok else 0
    y = data.draw(class_labels(b, fault=data.draw(faults([*LABEL_FAULTS, "numpy"]))))
    ok, loss = attempt(lambda: confidence_weighted_nll(logits, y), *words, "label", "integer")
    assert ok == (valid and isinstance(y, torch.Tensor) and labels_valid(y, b, c)), f"got {loss!r}"
    if ok and finite_in:
        assert loss.dim() == 0 and torch.isfinite(loss) and float(loss) >= 0


# --------------------------------------------------------------------------- the modulator and its rules

signals = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e30, -1e30, 1e300, 0.0, -1.0]),
    st.floats(0.01, 10.0).map(np.float64),
    st.floats(0.01, 10.0).map(lambda v: torch.tensor(v, dtype=torch.float32)),
    st.sampled_from(
        [torch.tensor(float("nan")), torch.tensor(float("inf"), dtype=torch.float64), torch.tensor(3)]
    ),
    st.sampled_from([torch.tensor(True), np.array([2.0]), torch.ones(1, 1)]),
)
bad_signals = st.sampled_from(
    [np.ones(3), torch.ones(2), torch.zeros(0), "1.0", None, [1.0], torch.tensor(1 + 1j), np.array(["a"])]
)


def _as_float32(u) -> float:
    v = float(u.reshape(-1)[0]) if isinstance(u, (torch.Tensor, np.ndarray)) else float(u)
    with np.errstate(all="ignore"):
        return float(np.float32(v))


@FUZZ
@given(
    seq=st.lists(st.one_of(signals, bad_signals), min_size=1, max_size=6),
    rule=st.sampled_from([Ratio(warmup=0), Ratio(warmup=2, kappa=0.5), ZScore(warmup=1)]),
)
def test_modulator_holds_nonfinite_signals_and_refuses_bad_ones(seq, rule):
    net = nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    mod = Modulator(rule).attach(opt)
    expected_nonfinite, prev_scale = 0, 1.0
    for u in seq:
        opt.zero_grad()
        net(torch.randn(4, 3)).pow(2).mean().backward()
        ok, _ = attempt(lambda u=u: mod.observe(u), "scalar", "real")
        if not ok:
            continue
        opt.step()
        v = _as_float32(u)
        with np.errstate(all="ignore"):
            # observe() takes the signal as float32; the rule's state is float64, where the square of a finite
            # float32 never overflows: only NaN and inf are held
            held = not np.isfinite(np.float64(np.float32(v)) ** 2)
        expected_nonfinite += held
        rec = mod.history[-1]
        lo, hi = (1 / rule.s_max, rule.s_max) if isinstance(rule, ZScore) else (rule.s_min, rule.s_max)
        assert lo - 1e-6 <= rec["scale"] <= hi + 1e-6
        if held:
            assert rec["scale"] == prev_scale
        prev_scale = rec["scale"]
        assert opt.param_groups[0]["lr"] == 0.1
        assert all(torch.isfinite(p).all() for p in net.parameters())
        assert int(mod.rule_state.nonfinite) == expected_nonfinite


numbers_or_junk = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-3, 30),
    st.sampled_from([True, None, "0.5", np.float32(0.5), np.float64(0.9), np.ones(2)]),
)


def _number_ok(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@FUZZ
@given(
    cls=st.sampled_from([Ratio, ZScore, SigmaRatio, GradSigmaRatio, VarianceRatio]),
    field=st.sampled_from(["kappa", "s_min", "s_max", "decay", "warmup", "eps"]),
    value=numbers_or_junk,
)
def test_rule_constructors_validate_every_numeric_field(cls, field, value):
    if not hasattr(cls(), field):
        return
    ok, rule = attempt(lambda: cls(**{field: value}), field, "bounds")
    base = cls()
    if not _number_ok(value):
        assert not ok
        return
    v = value
    valid = {
        "kappa": math.isfinite(v),
        "decay": 0 <= v < 1,
        "warmup": isinstance(v, int) and v >= 0,
        "eps": v > 0 and math.isfinite(v),
        "s_min": 0 < v <= 1,
        "s_max": 1 <= v < math.inf and (not hasattr(base, "s_min") or base.s_min <= 1),
    }[field]
    assert ok == valid, f"{cls.__name__}({field}={value!r}): valid={valid} but got {rule!r}"
    if ok and not rule.per_parameter:  # a valid rule maps finite signals to bounded finite factors
        state = rule.init()
        for u in (1.0, 2.0, 0.5, 3.0):
            s, state = rule.update(u, state)
            assert math.isfinite(float(s)) and float(s) > 0
    if ok and rule.per_parameter:
        s, _ = rule.update(
            ParamSignal(np.array([0.1, -1.0, 2.0]), np.array([0.5, 1.0, 2.0])), rule.init(np.zeros(3))
        )
        assert np.isfinite(s).all() and (s > 0).all()


@FEW
@given(decay=numbers_or_junk, kappa=numbers_or_junk, w_min=numbers_or_junk)
def test_gradient_noise_and_confidence_weights_validate_numbers(decay, kappa, w_min):
    ok, _ = attempt(lambda: GradientNoise(decay=decay), "decay")
    assert ok == (_number_ok(decay) and 0 <= decay < 1)
    ok, w = attempt(
        lambda: confidence_weights(np.array([0.1, 0.5, 1.0]), kappa=kappa, w_min=w_min), "kappa", "w_min"
    )
    assert ok == (_number_ok(kappa) and math.isfinite(kappa) and _number_ok(w_min) and 0 < w_min <= 1)
    if ok:
        assert np.isfinite(w).all() and w.mean() == pytest.approx(1.0)


# --------------------------------------------------------------------------- checkpoints


@cache
def _checkpoint_bytes() -> bytes:
    clf, _ = _bnns()
    with tempfile.TemporaryDirectory() as d:
        opt = torch.optim.Adam(clf.parameters())
        mod = Modulator(Ratio()).attach(opt)
        path = save_checkpoint(os.path.join(d, "ok.pt"), model=clf, optimizer=opt, modulator=mod, step=3)
        mod.detach()
        with open(path, "rb") as f:
            return f.read()


@st.composite
def damaged_files(draw):
    data = _checkpoint_bytes()
    kind = draw(
        st.sampled_from(
            ["intact", "truncate", "truncate", "flip", "flip", "random", "text", "pickle", "empty"]
        )
    )
    if kind == "intact":
        return data
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "flip":
        b = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
        return bytes(b)
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=300))
    if kind == "text":
        return draw(st.text(max_size=100)).encode()
    if kind == "pickle":
        return pickle.dumps(
            draw(st.sampled_from([3, [1, 2], {"format": "uncertlr.checkpoint/1"}, "x"])), protocol=2
        )
    return b""


@FEW
@given(content=damaged_files())
def test_damaged_checkpoint_loads_or_refuses_clearly(content, tmp_path_factory):
    clf, _ = _bnns()
    path = tmp_path_factory.mktemp("ckpt") / "damaged.pt"
    path.write_bytes(content)
    state = {k: v.clone() for k, v in clf.state_dict().items()}
    opt = torch.optim.Adam(clf.parameters())
    try:
        ok, res = attempt(
            lambda: load_checkpoint(path, model=clf, optimizer=opt, restore_rng=True), "checkpoint"
        )
        if content == _checkpoint_bytes():
            assert ok and res.step == 3
        if ok:  # a damaged file that loads must load exactly what was saved (its SHA-256 is checked)
            assert res.step == 3 and isinstance(res.history, list)
            assert all(torch.equal(v, state[k]) for k, v in clf.state_dict().items())
        else:  # a refused file changes nothing
            assert all(torch.equal(v, state[k]) for k, v in clf.state_dict().items())
    finally:
        clf.load_state_dict(state)


# --------------------------------------------------------------------------- JAX: bayesian + svi data checks (few, cheap)


@cache
def _jax_bnns():
    jnp = pytest.importorskip("jax.numpy")
    pytest.importorskip("numpyro")
    from uncertlr.jax import bayesian as jax_bayesian

    clf = jax_bayesian(lambda p, x: x @ p["w"], params={"w": jnp.zeros((NUM_IN, NUM_CLASSES))}, num_data=8)
    reg = jax_bayesian(
        lambda p, x: x @ p["w"], params={"w": jnp.zeros((NUM_IN, 1))}, num_data=8, likelihood="normal"
    )
    return clf, reg


@st.composite
def jax_data(draw):
    """``(x, y, regression)``: valid numpy/jax data unless one fault breaks x or y (shape, dtype, values, library)."""
    jnp = pytest.importorskip("jax.numpy")
    regression = draw(st.booleans())
    y_value_fault = "y_values" if regression else "y_range"
    fault = draw(faults(["x_shape", "x_values", "x_lib", "y_shape", "y_dtype", y_value_fault, "y_lib"]))
    b = draw(st.integers(1, 4))
    shape = (b, NUM_IN)
    if fault == "x_shape":
        shape = draw(st.sampled_from([(NUM_IN,), (b, NUM_IN + 1), (b, 2, NUM_IN), (0, NUM_IN), ()]))
    x = np.random.default_rng(draw(st.integers(0, 99))).normal(size=shape).astype(np.float32)
    if fault == "x_values" and x.size:
        x.reshape(-1)[0] = draw(st.sampled_from([np.nan, np.inf]))
    if regression:
        y = np.zeros((b, 1), np.float32)
        if fault == "y_shape":
            y = y.reshape(-1) if draw(st.booleans()) else y[:-1]
        elif fault == "y_dtype":
            y = y.astype(np.int32)
        elif fault == "y_values":
            y[0] = np.nan
    else:
        y = np.zeros(b, np.int32)
        if fault == "y_shape":
            y = y[:, None] if draw(st.booleans()) else y[:-1]
        elif fault == "y_dtype":
            y = y.astype(draw(st.sampled_from([np.float32, np.bool_])))
        elif fault == "y_range":
            y[0] = draw(st.sampled_from([-1, NUM_CLASSES]))
    lib = lambda a, broken: (  # noqa: E731
        torch.from_numpy(a.copy())
        if broken == "torch"
        else a.tolist()
        if broken == "list"
        else jnp.asarray(a)
    )
    x = lib(
        x,
        draw(st.sampled_from(["torch", "list"]))
        if fault == "x_lib"
        else draw(st.sampled_from(["np", "jax"])),
    )
    x = np.asarray(x) if isinstance(x, np.ndarray) else x
    y = lib(y, draw(st.sampled_from(["torch", "list"])) if fault == "y_lib" else "jax")
    return x, y, regression, fault


@pytest.mark.jax
@FEW
@given(case=jax_data())
def test_jax_data_checks_accept_valid_data_and_name_bad_data(case):
    x, y, regression, fault = case
    clf, reg = _jax_bnns()
    bnn = reg if regression else clf
    ok, res = attempt(
        lambda: bnn.check_data(x, y),
        "shape",
        "dtype",
        "integer",
        "floating",
        "nan",
        "labels must lie",
        "batch",
        "numpy or jax array",
        "cannot be applied",
        "outputs",
    )
    assert ok == (fault is None), f"fault={fault} but got {res!r}"
    if ok:
        xx, yy = res
        assert type(xx).__module__.startswith("jax") and xx.shape == (len(yy), NUM_IN)


@pytest.mark.jax
def test_jax_svi_fits_valid_data_and_predict_names_bad_input():
    jnp = pytest.importorskip("jax.numpy")
    optax = pytest.importorskip("optax")
    from uncertlr.jax import svi

    clf, _ = _jax_bnns()
    x = np.random.default_rng(0).normal(size=(8, NUM_IN)).astype(np.float32)
    y = np.arange(8, dtype=np.int32) % NUM_CLASSES
    for bad_x, bad_y, words in [
        (torch.from_numpy(x), y, ("numpy or jax array",)),
        (x, torch.from_numpy(y), ("numpy or jax array",)),
        (x, y.astype(np.float32), ("integer",)),
        (x[:, None], y, ("outputs",)),
    ]:
        ok, exc = attempt(
            lambda bx=bad_x, by=bad_y: svi(
                clf, bx, by, optimizer=optax.adam(0.1), num_steps=1, progress=False
            ),
            *words,
        )
        assert not ok
    res = svi(clf, x, y, optimizer=optax.adam(0.1), num_steps=2, progress=False)
    probs = res.predict(jnp.asarray(x), num_samples=3)
    assert probs.shape == (3, 8, NUM_CLASSES) and bool(jnp.isfinite(probs).all())
    np.testing.assert_allclose(np.asarray(probs.sum(-1)), 1.0, atol=1e-5)
    for bad in (x[0], torch.from_numpy(x), np.full((2, NUM_IN), np.nan, np.float32)):
        ok, _ = attempt(lambda b=bad: res.predict(b, num_samples=2), "outputs", "numpy or jax array", "nan")
        assert not ok
    ok, _ = attempt(lambda: res.predict(x, num_samples=2.5), "num_samples")
    assert not ok
