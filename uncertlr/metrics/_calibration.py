"""Calibration of classifiers: accuracy, NLL, Brier, reliability bins, ECE (see :mod:`uncertlr.metrics`)."""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import numpy as np

from uncertlr._arrays import compat_namespace, host
from uncertlr.metrics._checks import _one_hot, _pbar_labels

Array = Any


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
    return _ece_from_bins(bins, compat_namespace(bins.count, "bins"))


def adaptive_ece(probs: Array, labels: Array, *, num_bins: int = 15) -> Array:
    """ECE with ``num_bins`` equal-mass bins (each holds ``~N/B`` inputs); a 0-d array.

    Example:
        >>> import numpy as np
        >>> round(float(adaptive_ece(np.array([[0.9, 0.1], [0.9, 0.1]]), np.array([0, 1]), num_bins=1)), 4)
        0.4
    """
    bins = reliability_bins(probs, labels, num_bins=num_bins, adaptive=True)
    return _ece_from_bins(bins, compat_namespace(bins.count, "bins"))


class ECEConsistency(NamedTuple):
    """An ECE next to what a perfectly calibrated model with the same confidences scores on as many inputs.

    ``expected`` is the mean ECE of such a model (the estimator's floor at this test-set size: ECE is
    biased upwards, by ~``sqrt(B / N)``), ``upper`` its ``level`` quantile, and ``p_value`` the
    fraction of calibrated draws scoring at least ``ece`` (small: the miscalibration is real;
    large: this test set cannot tell the model from a calibrated one).
    """

    ece: float
    expected: float
    upper: float
    p_value: float


def ece_consistency(
    probs: Array,
    labels: Array,
    *,
    num_bins: int = 15,
    num_draws: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> ECEConsistency:
    """Consistency resampling of :func:`ece` (Bröcker & Smith, 2007): is this ECE more than test-set noise?

    Each draw replaces "the prediction was right" by a coin that lands heads with the
    prediction's own confidence — the outcome a perfectly calibrated model would have — and
    scores the draw with the same bins. Computed on the host (numpy), whatever the array library.

    Args:
        probs: ``[S, N, C]`` or ``[N, C]`` probabilities; labels: ``[N]`` integer labels.
        num_bins: equal-width bins, as in :func:`ece`.
        num_draws: calibrated draws (their spread sets the resolution of ``p_value``: ``1 / (num_draws + 1)``).
        level: the quantile reported as ``upper``.
        seed: seed of the draws (the result is a function of the inputs and the seed).

    Example:
        >>> import numpy as np
        >>> probs = np.tile([[0.8, 0.2]], (500, 1))
        >>> wrong = ece_consistency(probs, np.zeros(500, dtype=int))  # right every time at 80% confidence
        >>> round(wrong.ece, 3), wrong.p_value < 0.01
        (0.2, True)
        >>> labels = (np.random.default_rng(1).random(500) > 0.8).astype(int)  # right 80% of the time
        >>> fine = ece_consistency(probs, labels)
        >>> fine.p_value > 0.05, abs(fine.expected - 0.0143) < 0.001  # E|Binomial(500, 0.8)/500 - 0.8|
        (True, True)
    """
    for name, value, lo in (("num_draws", num_draws, 1), ("num_bins", num_bins, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
            raise ValueError(f"{name} must be an integer >= {lo}; got {value!r}")
    if not (isinstance(level, numbers.Real) and 0.0 < float(level) < 1.0):
        raise ValueError(f"level must lie in (0, 1); got {level!r}")
    observed = float(ece(probs, labels, num_bins=num_bins))  # checks the inputs
    xp, pbar, _ = _pbar_labels(probs, labels)
    conf = host(xp.max(pbar, axis=-1), np.float64)
    n = conf.shape[0]
    idx = np.clip(np.ceil(conf * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
    onehot = np.zeros((n, num_bins))
    onehot[np.arange(n), idx] = 1.0
    conf_sum = conf @ onehot  # [B]
    rng = np.random.default_rng(seed)
    chunk = max(1, (1 << 22) // max(n, 1))  # draws per block: ~4M coins at a time
    scores = []
    for start in range(0, int(num_draws), chunk):
        hits = rng.random((min(chunk, int(num_draws) - start), n)) < conf  # [D, N]
        scores.append(np.abs(hits @ onehot - conf_sum).sum(-1) / max(n, 1))
    draws = np.concatenate(scores)
    return ECEConsistency(
        ece=observed,
        expected=float(draws.mean()),
        upper=float(np.quantile(draws, float(level))),
        p_value=float((1 + np.sum(draws >= observed - 1e-12)) / (1 + draws.size)),
    )
