"""Uncertainty and calibration metrics, written once on the array API.

Every function accepts numpy arrays, torch tensors or jax arrays (anything
``array_api_compat.array_namespace`` recognises) and returns arrays of the same
library, so the functions run inside ``jax.jit`` and on the GPU without host
round trips. This module imports neither torch nor jax.

Conventions (shapes in every docstring):

* classification probabilities are ``probs[S, N, C]``: ``S`` posterior samples,
  ``N`` inputs, ``C`` classes. A 2-D ``probs[N, C]`` is a point prediction
  (a deterministic network) and is treated as ``S = 1``.
* regression predictions are ``mean[S, N, ...]`` and ``variance[S, N, ...]``
  (the per-sample predictive mean and noise variance).
* labels are integer class indices ``labels[N]`` in ``[0, C)``.

The information-theoretic decomposition (sample axis first, ``p̄ = mean_s p_s``):

* total uncertainty = predictive entropy ``H[p̄]``
* aleatoric = expected entropy ``E_s H[p_s]``
* epistemic = mutual information ``H[p̄] - E_s H[p_s] >= 0``

Example:
    >>> import numpy as np
    >>> from uncertlr import metrics
    >>> probs = np.array([[[0.9, 0.1]], [[0.1, 0.9]]])   # two samples that disagree
    >>> float(metrics.mutual_information(probs)[0]) > 0.3
    True
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, NamedTuple

from array_api_compat import array_namespace

from uncertlr._arrays import quiet as _quiet

Array = Any

__all__ = [
    "LayerSpread",
    "ReliabilityBins",
    "UncertaintyDecomposition",
    "VarianceDecomposition",
    "accuracy",
    "adaptive_ece",
    "brier",
    "ece",
    "expected_entropy",
    "gaussian_nll",
    "layer_spread",
    "mean_probs",
    "mutual_information",
    "nll",
    "ood_auroc",
    "predictive_entropy",
    "predictive_variance",
    "reliability_bins",
    "rmse",
    "uncertainty_decomposition",
]

#: Absolute tolerance on ``sum_c p[..., c] == 1`` when checking probabilities.
PROB_SUM_ATOL = 1e-3


class UncertaintyDecomposition(NamedTuple):
    """Per-input uncertainty of a classifier, each ``[N]`` (nats, or fractions of ``log C``)."""

    total: Array
    aleatoric: Array
    epistemic: Array


class VarianceDecomposition(NamedTuple):
    """Per-output predictive variance of a regressor, each ``[N, ...]``."""

    total: Array
    aleatoric: Array
    epistemic: Array


class ReliabilityBins(NamedTuple):
    """Reliability-diagram bins, each ``[B]``.

    ``lower``/``upper`` are the confidence range of each bin, ``confidence`` and
    ``accuracy`` the mean confidence and accuracy of the inputs that fell in it
    (0 for empty bins), ``count`` how many did.
    """

    lower: Array
    upper: Array
    confidence: Array
    accuracy: Array
    count: Array


class LayerSpread(NamedTuple):
    """Posterior spread of one layer: mean σ, mean ``|μ|/σ`` (signal-to-noise) and size."""

    mean_scale: float
    mean_snr: float
    size: int


# --------------------------------------------------------------------------- validation


def _is_concrete(x: Array) -> bool:
    """False for JAX tracers (values unknown at trace time): value checks are skipped."""
    return not type(x).__name__.endswith("Tracer")


def _namespace(x: Array, name: str) -> Any:
    """The array namespace of ``x``; a TypeError naming ``name`` for anything that is not an array."""
    try:
        return array_namespace(x)
    except TypeError as exc:
        raise TypeError(f"{name} must be a numpy, torch or jax array; got {type(x).__name__}") from exc


def _convert(x: Array, xp: Any, like: Array, name: str) -> Array:
    """``x`` (labels, targets, variances: any array library or a Python number) as an array of ``xp``.

    The first argument of a metric fixes the library of the result; the others follow it
    (on its device for torch), so numpy labels work with torch or jax probabilities.
    """
    try:
        if array_namespace(x) is xp:
            return x
    except TypeError:
        pass
    if x is None or isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be an array or a number; got {type(x).__name__}")
    kw = {"device": like.device} if type(like).__module__.startswith("torch") else {}
    try:
        return xp.asarray(x, **kw)
    except Exception as exc:  # noqa: BLE001 - any conversion failure means the same thing
        raise TypeError(
            f"{name} ({type(x).__name__}) cannot be converted to an array like {type(like).__name__}: {exc}"
        ) from exc


def _check_result(x: Array, what: str, xp: Any) -> Array:
    """Raise a ValueError naming the overflow when finite inputs gave a non-finite ``x``."""
    if _is_concrete(x) and not bool(xp.all(xp.isfinite(x))):
        raise ValueError(
            f"{what} overflowed in {x.dtype}: the inputs are finite but too large for this dtype; "
            "standardise them or compute in float64"
        )
    return x


def _check_nonempty(x: Array, name: str, layout: str) -> None:
    if math.prod(x.shape) == 0:
        raise ValueError(f"{name} is empty: got shape {tuple(x.shape)} ({layout}); need at least one of each")


def _check_probs(probs: Array, name: str = "probs", *, validate: bool = True) -> tuple[Any, Array]:
    xp = _namespace(probs, name)
    if probs.ndim == 2:
        probs = probs[None, ...]
    if probs.ndim != 3:
        raise ValueError(
            f"{name} must have shape [S, N, C] (samples, inputs, classes) or [N, C]; got shape {tuple(probs.shape)}"
        )
    if probs.shape[-1] < 2:
        raise ValueError(f"{name} needs at least 2 classes on its last axis; got shape {tuple(probs.shape)}")
    if probs.shape[0] == 0:
        raise ValueError(f"{name} is empty: no samples on its first axis (shape {tuple(probs.shape)})")
    if not xp.isdtype(probs.dtype, "real floating"):
        raise TypeError(f"{name} must be a floating-point array; got dtype {probs.dtype}")
    if validate and _is_concrete(probs) and probs.shape[0] * probs.shape[1] > 0:
        if not bool(xp.all(xp.isfinite(probs))):
            raise ValueError(f"{name} contains NaN or inf")
        if bool(xp.any(probs < 0)) or bool(xp.any(probs > 1 + PROB_SUM_ATOL)):
            raise ValueError(f"{name} must lie in [0, 1]; did you pass logits? Apply softmax first")
        sums = xp.sum(probs, axis=-1)
        if bool(xp.any(xp.abs(sums - 1) > PROB_SUM_ATOL)):
            worst = float(xp.max(xp.abs(sums - 1)))
            raise ValueError(
                f"{name} must sum to 1 over the class axis (off by up to {worst:.3g}); "
                "did you pass logits? Apply softmax first"
            )
    return xp, probs


def _check_labels(labels: Array, n: int, num_classes: int, xp: Any, like: Array) -> Array:
    labels = _convert(labels, xp, like, "labels")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape [N] = [{n}]; got shape {tuple(labels.shape)}")
    if not xp.isdtype(labels.dtype, "integral"):
        raise TypeError(f"labels must be integer class indices; got dtype {labels.dtype}")
    if _is_concrete(labels) and n > 0:
        lo, hi = int(xp.min(labels)), int(xp.max(labels))
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}); got values in [{lo}, {hi}]")
    return labels


def _check_finite(x: Array, name: str, xp: Any, *, allow_int: bool = False) -> None:
    if allow_int and xp.isdtype(x.dtype, "integral"):
        return
    if not xp.isdtype(x.dtype, "real floating"):
        kind = "a real-valued" if allow_int else "a floating-point"
        raise TypeError(f"{name} must be {kind} array; got dtype {x.dtype}")
    if _is_concrete(x) and not bool(xp.all(xp.isfinite(x))):
        raise ValueError(f"{name} contains NaN or inf")


def _entropy(p: Array, xp: Any) -> Array:
    """Shannon entropy over the last axis with ``0 log 0 = 0`` (gradient-safe)."""
    tiny = xp.finfo(p.dtype).tiny
    return -xp.sum(p * xp.log(xp.clip(p, tiny, None)), axis=-1)


def _maybe_normalize(h: Array, normalized: bool, num_classes: int) -> Array:
    return h / math.log(num_classes) if normalized else h


# --------------------------------------------------------------------------- uncertainty


def mean_probs(probs: Array) -> Array:
    """Bayesian model average ``p̄[N, C] = mean_s probs[s]`` of ``probs[S, N, C]`` (or ``[N, C]``).

    Example:
        >>> import numpy as np
        >>> mean_probs(np.array([[[1.0, 0.0]], [[0.0, 1.0]]])).tolist()
        [[0.5, 0.5]]
    """
    xp, probs = _check_probs(probs)
    return xp.mean(probs, axis=0)


def predictive_entropy(probs: Array, *, normalized: bool = False, validate: bool = True) -> Array:
    """Total uncertainty ``H[p̄]`` per input, ``[N]``, from ``probs[S, N, C]`` or ``[N, C]``.

    With ``normalized=True`` the result is divided by ``log C`` (so it lies in [0, 1]).
    ``validate=False`` skips the value checks (NaN/inf, range, sums), which read values
    back to the host: use it inside a training step on an accelerator.

    Example:
        >>> import numpy as np
        >>> round(float(predictive_entropy(np.array([[0.5, 0.5]]), normalized=True)[0]), 6)
        1.0
    """
    xp, probs = _check_probs(probs, validate=validate)
    return _maybe_normalize(_entropy(xp.mean(probs, axis=0), xp), normalized, probs.shape[-1])


def expected_entropy(probs: Array, *, normalized: bool = False) -> Array:
    """Aleatoric uncertainty ``E_s H[p_s]`` per input, ``[N]``, from ``probs[S, N, C]``.

    Example:
        >>> import numpy as np
        >>> float(expected_entropy(np.array([[[1.0, 0.0]], [[0.0, 1.0]]]))[0])
        0.0
    """
    xp, probs = _check_probs(probs)
    return _maybe_normalize(xp.mean(_entropy(probs, xp), axis=0), normalized, probs.shape[-1])


def mutual_information(probs: Array, *, normalized: bool = False, validate: bool = True) -> Array:
    """Epistemic uncertainty ``H[p̄] - E_s H[p_s]`` per input, ``[N]``, from ``probs[S, N, C]``.

    Clipped at 0 against round-off; zero for a point prediction (``S = 1``).
    ``validate=False`` skips the value checks (see :func:`predictive_entropy`).

    Example:
        >>> import numpy as np
        >>> mi = mutual_information(np.array([[[1.0, 0.0]], [[0.0, 1.0]]]))
        >>> round(float(mi[0]), 4) == round(float(np.log(2)), 4)
        True
    """
    return uncertainty_decomposition(probs, normalized=normalized, validate=validate).epistemic


def uncertainty_decomposition(
    probs: Array, *, normalized: bool = False, validate: bool = True
) -> UncertaintyDecomposition:
    """Total, aleatoric and epistemic uncertainty per input (each ``[N]``) in one pass.

    ``total = aleatoric + epistemic`` up to round-off; ``epistemic >= 0``.

    Example:
        >>> import numpy as np
        >>> d = uncertainty_decomposition(np.full((4, 3, 2), 0.5))
        >>> float(d.epistemic.max())
        0.0
    """
    xp, probs = _check_probs(probs, validate=validate)
    total = _entropy(xp.mean(probs, axis=0), xp)
    aleatoric = xp.mean(_entropy(probs, xp), axis=0)
    epistemic = xp.clip(total - aleatoric, 0.0, None)
    c = probs.shape[-1]
    return UncertaintyDecomposition(
        _maybe_normalize(total, normalized, c),
        _maybe_normalize(aleatoric, normalized, c),
        _maybe_normalize(epistemic, normalized, c),
    )


def predictive_variance(mean: Array, variance: Array) -> VarianceDecomposition:
    """Split the predictive variance of a regressor (law of total variance).

    Args:
        mean: per-sample predictive means ``[S, N, ...]``.
        variance: per-sample noise variances, broadcastable to ``mean``.

    Returns:
        ``VarianceDecomposition(total, aleatoric, epistemic)``, each ``[N, ...]``:
        aleatoric = mean of the variances, epistemic = variance of the means (ddof 0).

    Example:
        >>> import numpy as np
        >>> d = predictive_variance(np.array([[0.0], [2.0]]), np.array([[1.0], [1.0]]))
        >>> d.total.tolist(), d.aleatoric.tolist(), d.epistemic.tolist()
        ([2.0], [1.0], [1.0])
    """
    xp = _namespace(mean, "mean")
    variance = _convert(variance, xp, mean, "variance")
    if mean.ndim < 2:
        raise ValueError(
            f"mean must have shape [S, N, ...] with the sample axis first; got {tuple(mean.shape)}"
        )
    if mean.shape[0] == 0:
        raise ValueError(f"mean is empty: no samples on its first axis (shape {tuple(mean.shape)})")
    _check_finite(mean, "mean", xp)
    _check_finite(variance, "variance", xp)
    variance = _broadcast(xp.asarray(variance, dtype=mean.dtype), mean.shape, "variance", xp)
    if _is_concrete(variance) and bool(xp.any(variance < 0)):
        raise ValueError("variance must be non-negative")
    with _quiet(xp):
        aleatoric = xp.mean(variance, axis=0)
        epistemic = xp.var(mean, axis=0)
        total = aleatoric + epistemic
    _check_result(total, "the predictive variance", xp)
    return VarianceDecomposition(total, aleatoric, epistemic)


# --------------------------------------------------------------------------- calibration


def _broadcast(x: Array, shape: tuple[int, ...], name: str, xp: Any) -> Array:
    try:
        return xp.broadcast_to(x, shape)
    except (ValueError, RuntimeError) as exc:  # numpy/jax: ValueError; torch: RuntimeError
        raise ValueError(
            f"{name} of shape {tuple(x.shape)} does not broadcast to the mean's shape {tuple(shape)}"
        ) from exc


def _one_hot(labels: Array, num_classes: int, dtype: Any, xp: Any) -> Array:
    classes = xp.arange(num_classes, dtype=labels.dtype)
    return xp.astype(labels[:, None] == classes[None, :], dtype)


def _pbar_labels(probs: Array, labels: Array) -> tuple[Any, Array, Array]:
    xp, probs = _check_probs(probs)
    if probs.shape[1] == 0:
        raise ValueError(
            f"probs is empty: no inputs (N = 0, shape {tuple(probs.shape)}); the metric is undefined"
        )
    pbar = xp.mean(probs, axis=0)
    labels = _check_labels(labels, pbar.shape[0], pbar.shape[1], xp, probs)
    return xp, pbar, labels


def accuracy(probs: Array, labels: Array) -> Array:
    """Fraction of inputs whose most probable class (under ``p̄``) is the label; a 0-d array.

    Example:
        >>> import numpy as np
        >>> float(accuracy(np.array([[0.8, 0.2], [0.3, 0.7]]), np.array([0, 0])))
        0.5
    """
    xp, pbar, labels = _pbar_labels(probs, labels)
    pred = xp.argmax(pbar, axis=-1)
    return xp.mean(xp.astype(pred == xp.astype(labels, pred.dtype), pbar.dtype))


def nll(probs: Array, labels: Array) -> Array:
    """Mean negative log-likelihood ``-mean_n log p̄[n, y_n]`` of the model average; a 0-d array.

    Probabilities are floored at the dtype's smallest normal number, so a confident
    mistake gives a large finite value rather than inf.

    Example:
        >>> import numpy as np
        >>> round(float(nll(np.array([[0.5, 0.5]]), np.array([1]))), 4)
        0.6931
    """
    xp, pbar, labels = _pbar_labels(probs, labels)
    py = xp.sum(pbar * _one_hot(labels, pbar.shape[1], pbar.dtype, xp), axis=-1)
    return -xp.mean(xp.log(xp.clip(py, xp.finfo(pbar.dtype).tiny, None)))


def brier(probs: Array, labels: Array) -> Array:
    """Multi-class Brier score ``mean_n sum_c (p̄[n, c] - 1[c = y_n])^2`` (range [0, 2]); a 0-d array.

    Example:
        >>> import numpy as np
        >>> float(brier(np.array([[1.0, 0.0]]), np.array([1])))
        2.0
    """
    xp, pbar, labels = _pbar_labels(probs, labels)
    return xp.mean(xp.sum((pbar - _one_hot(labels, pbar.shape[1], pbar.dtype, xp)) ** 2, axis=-1))


def reliability_bins(
    probs: Array, labels: Array, *, num_bins: int = 15, adaptive: bool = False
) -> ReliabilityBins:
    """Reliability-diagram bins of the top-class confidence of ``p̄``.

    Args:
        probs: ``[S, N, C]`` or ``[N, C]`` probabilities.
        labels: ``[N]`` integer labels.
        num_bins: number of bins ``B``.
        adaptive: equal-width bins ``(k/B, (k+1)/B]`` when False; bins holding equal
            numbers of inputs (sorted by confidence) when True.

    Returns:
        ``ReliabilityBins`` with arrays of shape ``[B]``.

    Example:
        >>> import numpy as np
        >>> bins = reliability_bins(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1]), num_bins=10)
        >>> int(bins.count.sum())
        2
    """
    if isinstance(num_bins, bool) or not isinstance(num_bins, numbers.Integral) or num_bins < 1:
        raise ValueError(f"num_bins must be an integer >= 1; got {num_bins!r}")
    num_bins = int(num_bins)
    xp, pbar, labels = _pbar_labels(probs, labels)
    n = pbar.shape[0]
    dtype = pbar.dtype
    conf = xp.max(pbar, axis=-1)
    pred = xp.argmax(pbar, axis=-1)
    correct = xp.astype(pred == xp.astype(labels, pred.dtype), dtype)
    if adaptive:
        order = xp.argsort(conf)
        conf = xp.take(conf, order)
        correct = xp.take(correct, order)
        idx = (xp.arange(n) * num_bins) // max(n, 1)
    else:
        idx = xp.astype(xp.ceil(conf * num_bins), pred.dtype) - 1
        idx = xp.clip(idx, 0, num_bins - 1)
    bin_ids = xp.arange(num_bins)
    onehot = xp.astype(xp.astype(idx, bin_ids.dtype)[:, None] == bin_ids[None, :], dtype)
    count = xp.sum(onehot, axis=0)
    safe = xp.where(count > 0, count, xp.ones_like(count))
    mean_conf = xp.where(count > 0, (conf @ onehot) / safe, xp.zeros_like(count))
    mean_acc = xp.where(count > 0, (correct @ onehot) / safe, xp.zeros_like(count))
    if adaptive:
        big = xp.asarray(2.0, dtype=dtype)
        lower = xp.min(xp.where(onehot > 0, conf[:, None], big), axis=0)
        upper = xp.max(xp.where(onehot > 0, conf[:, None], -big), axis=0)
        lower = xp.where(count > 0, lower, xp.zeros_like(lower))
        upper = xp.where(count > 0, upper, xp.zeros_like(upper))
    else:
        edges = xp.arange(num_bins + 1, dtype=dtype) / num_bins
        lower, upper = edges[:-1], edges[1:]
    return ReliabilityBins(lower, upper, mean_conf, mean_acc, count)


def _ece_from_bins(bins: ReliabilityBins, xp: Any) -> Array:
    total = xp.sum(bins.count)
    return xp.sum(bins.count * xp.abs(bins.accuracy - bins.confidence)) / xp.where(
        total > 0, total, xp.ones_like(total)
    )


def ece(probs: Array, labels: Array, *, num_bins: int = 15) -> Array:
    """Expected calibration error with ``num_bins`` equal-width confidence bins; a 0-d array.

    ``ECE = sum_b (n_b / N) |acc_b - conf_b|`` over the top-class confidence of ``p̄``.

    Example:
        >>> import numpy as np
        >>> round(float(ece(np.array([[0.9, 0.1], [0.9, 0.1]]), np.array([0, 1]))), 4)
        0.4
    """
    bins = reliability_bins(probs, labels, num_bins=num_bins)
    return _ece_from_bins(bins, array_namespace(bins.count))


def adaptive_ece(probs: Array, labels: Array, *, num_bins: int = 15) -> Array:
    """ECE with ``num_bins`` equal-mass bins (each holds ``~N/B`` inputs); a 0-d array.

    Example:
        >>> import numpy as np
        >>> round(float(adaptive_ece(np.array([[0.9, 0.1], [0.9, 0.1]]), np.array([0, 1]), num_bins=1)), 4)
        0.4
    """
    bins = reliability_bins(probs, labels, num_bins=num_bins, adaptive=True)
    return _ece_from_bins(bins, array_namespace(bins.count))


# --------------------------------------------------------------------------- regression


def gaussian_nll(mean: Array, variance: Array, targets: Array) -> Array:
    """Mean negative log-likelihood of targets under the predictive Gaussian mixture.

    Args:
        mean: ``[S, N, ...]`` per-sample predictive means.
        variance: per-sample noise variances, broadcastable to ``mean``.
        targets: ``[N, ...]`` observed values.

    Returns:
        ``-mean_n log (1/S) sum_s N(y_n | mean[s, n], variance[s, n])`` (a 0-d array);
        averaged over trailing output dimensions too.

    Example:
        >>> import numpy as np
        >>> round(float(gaussian_nll(np.zeros((1, 1)), np.ones((1, 1)), np.zeros(1))), 4)
        0.9189
    """
    xp = _namespace(mean, "mean")
    variance = _convert(variance, xp, mean, "variance")
    targets = _convert(targets, xp, mean, "targets")
    if mean.ndim < 2 or tuple(targets.shape) != tuple(mean.shape[1:]):
        raise ValueError(
            f"mean must have shape [S, N, ...] and targets [N, ...]; got shapes {tuple(mean.shape)} and {tuple(targets.shape)}"
        )
    _check_nonempty(mean, "mean", "[S, N, ...]")
    for arr, name in ((mean, "mean"), (variance, "variance"), (targets, "targets")):
        _check_finite(arr, name, xp)
    variance = _broadcast(xp.asarray(variance, dtype=mean.dtype), mean.shape, "variance", xp)
    if _is_concrete(variance) and bool(xp.any(variance <= 0)):
        raise ValueError("variance must be positive")
    with _quiet(xp):
        logp = -0.5 * (xp.log(2 * math.pi * variance) + (targets[None, ...] - mean) ** 2 / variance)
        m = xp.max(logp, axis=0)
        lse = m + xp.log(xp.mean(xp.exp(logp - m[None, ...]), axis=0))
        out = -xp.mean(lse)
    return _check_result(out, "gaussian_nll", xp)


def rmse(mean: Array, targets: Array) -> Array:
    """Root mean squared error of the posterior mean ``mean_s mean[s]`` (``mean[S, N, ...]``); a 0-d array.

    Example:
        >>> import numpy as np
        >>> float(rmse(np.array([[1.0, 3.0]]), np.array([1.0, 1.0])))
        1.4142135623730951
    """
    xp = _namespace(mean, "mean")
    targets = _convert(targets, xp, mean, "targets")
    if mean.ndim < 2 or tuple(targets.shape) != tuple(mean.shape[1:]):
        raise ValueError(
            f"mean must have shape [S, N, ...] and targets [N, ...]; got shapes {tuple(mean.shape)} and {tuple(targets.shape)}"
        )
    _check_nonempty(mean, "mean", "[S, N, ...]")
    _check_finite(mean, "mean", xp, allow_int=True)
    _check_finite(targets, "targets", xp, allow_int=True)
    with _quiet(xp):
        out = xp.sqrt(xp.mean((xp.mean(mean, axis=0) - targets) ** 2))
    return _check_result(out, "rmse", xp)


# --------------------------------------------------------------------------- OOD and posterior spread


def ood_auroc(score_in: Array, score_out: Array) -> Array:
    """Area under the ROC curve for telling out-of-distribution inputs from in-distribution ones.

    Higher scores should mean "more likely out of distribution" (entropy, mutual
    information, ...). Computed exactly with the Mann-Whitney statistic; ties count 1/2.

    Args:
        score_in: ``[N_in]`` scores of in-distribution inputs.
        score_out: ``[N_out]`` scores of out-of-distribution inputs.

    Returns:
        A 0-d array in [0, 1]: 1 means every OOD input scores above every in-distribution input.

    Example:
        >>> import numpy as np
        >>> float(ood_auroc(np.array([0.1, 0.2]), np.array([0.3, 0.15])))
        0.75
    """
    xp = _namespace(score_in, "score_in")
    score_out = _convert(score_out, xp, score_in, "score_out")
    if score_in.ndim != 1 or score_out.ndim != 1:
        raise ValueError(
            f"scores must be 1-D; got shapes {tuple(score_in.shape)} and {tuple(score_out.shape)}"
        )
    n_in, n_out = score_in.shape[0], score_out.shape[0]
    if n_in == 0 or n_out == 0:
        raise ValueError(f"need at least one score on each side; got {n_in} in and {n_out} out")
    _check_finite(score_in, "score_in", xp)
    _check_finite(score_out, "score_out", xp)
    dtype = xp.result_type(score_in.dtype, score_out.dtype, xp.float32)
    scores = xp.concat([xp.astype(score_in, dtype), xp.astype(score_out, dtype)])
    ordered = xp.sort(scores)
    # 1-based average rank of each score: tied scores occupy positions left+1 .. right
    left = xp.searchsorted(ordered, scores, side="left")
    right = xp.searchsorted(ordered, scores, side="right")
    ranks = xp.astype(left + right + 1, dtype) / 2
    # AUROC = (rank-sum of the OOD scores - its minimum) / (n_in n_out), written with a mean for accuracy
    return (xp.mean(ranks[n_in:]) - (n_out + 1) / 2) / n_in


def layer_spread(loc: Mapping[str, Array], scale: Mapping[str, Array]) -> dict[str, LayerSpread]:
    """Posterior spread per layer from per-parameter means and standard deviations.

    Parameters are grouped by layer: the name up to its last dot
    (``"fc1.weight"`` and ``"fc1.bias"`` form layer ``"fc1"``).

    Args:
        loc: parameter name -> posterior mean (any shape).
        scale: parameter name -> posterior std, same names and shapes, positive.

    Returns:
        layer name -> ``LayerSpread(mean_scale, mean_snr, size)``, in first-seen order.

    Example:
        >>> import numpy as np
        >>> s = layer_spread({"fc.weight": np.ones(4)}, {"fc.weight": np.full(4, 0.5)})
        >>> s["fc"].mean_scale, s["fc"].mean_snr, s["fc"].size
        (0.5, 2.0, 4)
    """
    if set(loc) != set(scale):
        raise ValueError(
            f"loc and scale must name the same parameters; differ in {sorted(set(loc) ^ set(scale))}"
        )
    sums: dict[str, list[float]] = {}
    for name, mu in loc.items():
        sigma = scale[name]
        xp = _namespace(mu, f"loc[{name!r}]")
        sigma = _convert(sigma, xp, mu, f"scale[{name!r}]")
        if tuple(mu.shape) != tuple(sigma.shape):
            raise ValueError(f"{name}: loc shape {tuple(mu.shape)} != scale shape {tuple(sigma.shape)}")
        _check_finite(mu, f"{name}: loc", xp, allow_int=True)
        _check_finite(sigma, f"{name}: scale", xp, allow_int=True)
        if _is_concrete(sigma) and bool(xp.any(sigma <= 0)):
            raise ValueError(f"{name}: posterior scales must be positive")
        layer = name.rsplit(".", 1)[0] if "." in name else name
        acc = sums.setdefault(layer, [0.0, 0.0, 0.0])
        acc[0] += float(xp.sum(sigma))
        acc[1] += float(xp.sum(xp.abs(mu) / sigma))
        acc[2] += math.prod(mu.shape)
    return {k: LayerSpread(s / n, r / n, int(n)) for k, (s, r, n) in sums.items() if n > 0}
