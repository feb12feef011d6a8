"""Scores of regressors' predictive distributions (see :mod:`uncertlr.metrics`)."""

from __future__ import annotations

import math
from typing import Any

from uncertlr._arrays import (
    check_finite,
    check_nonempty,
    check_result,
    compat_namespace,
    convert,
    is_concrete,
)
from uncertlr._arrays import quiet as _quiet
from uncertlr.metrics._checks import _broadcast

Array = Any


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
    xp = compat_namespace(mean, "mean")
    variance = convert(variance, xp, mean, "variance")
    targets = convert(targets, xp, mean, "targets")
    if mean.ndim < 2 or tuple(targets.shape) != tuple(mean.shape[1:]):
        raise ValueError(
            f"mean must have shape [S, N, ...] and targets [N, ...]; got shapes {tuple(mean.shape)} and {tuple(targets.shape)}"
        )
    check_nonempty(mean, "mean", "[S, N, ...]")
    for arr, name in ((mean, "mean"), (variance, "variance"), (targets, "targets")):
        check_finite(arr, name, xp)
    variance = _broadcast(xp.asarray(variance, dtype=mean.dtype), mean.shape, "variance", xp)
    if is_concrete(variance) and bool(xp.any(variance <= 0)):
        raise ValueError("variance must be positive")
    with _quiet(xp):
        logp = -0.5 * (xp.log(2 * math.pi * variance) + (targets[None, ...] - mean) ** 2 / variance)
        m = xp.max(logp, axis=0)
        lse = m + xp.log(xp.mean(xp.exp(logp - m[None, ...]), axis=0))
        out = -xp.mean(lse)
    return check_result(out, "gaussian_nll", xp)


def rmse(mean: Array, targets: Array) -> Array:
    """Root mean squared error of the posterior mean ``mean_s mean[s]`` (``mean[S, N, ...]``); a 0-d array.

    Example:
        >>> import numpy as np
        >>> float(rmse(np.array([[1.0, 3.0]]), np.array([1.0, 1.0])))
        1.4142135623730951
    """
    xp = compat_namespace(mean, "mean")
    targets = convert(targets, xp, mean, "targets")
    if mean.ndim < 2 or tuple(targets.shape) != tuple(mean.shape[1:]):
        raise ValueError(
            f"mean must have shape [S, N, ...] and targets [N, ...]; got shapes {tuple(mean.shape)} and {tuple(targets.shape)}"
        )
    check_nonempty(mean, "mean", "[S, N, ...]")
    check_finite(mean, "mean", xp, allow_int=True)
    check_finite(targets, "targets", xp, allow_int=True)
    with _quiet(xp):
        out = xp.sqrt(xp.mean((xp.mean(mean, axis=0) - targets) ** 2))
    return check_result(out, "rmse", xp)
