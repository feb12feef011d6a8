"""Uncertainty of classifiers and regressors, and posterior spread per layer (see :mod:`uncertlr.metrics`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from uncertlr._arrays import check_finite, check_result, compat_namespace, convert, is_concrete
from uncertlr._arrays import quiet as _quiet
from uncertlr.metrics._checks import _broadcast, _check_probs, _entropy, _maybe_normalize

Array = Any


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


class LayerSpread(NamedTuple):
    """Posterior spread of one layer: mean σ, mean ``|μ|/σ`` (signal-to-noise) and size."""

    mean_scale: float
    mean_snr: float
    size: int


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
    xp = compat_namespace(mean, "mean")
    variance = convert(variance, xp, mean, "variance")
    if mean.ndim < 2:
        raise ValueError(
            f"mean must have shape [S, N, ...] with the sample axis first; got {tuple(mean.shape)}"
        )
    if mean.shape[0] == 0:
        raise ValueError(f"mean is empty: no samples on its first axis (shape {tuple(mean.shape)})")
    check_finite(mean, "mean", xp)
    check_finite(variance, "variance", xp)
    variance = _broadcast(xp.asarray(variance, dtype=mean.dtype), mean.shape, "variance", xp)
    if is_concrete(variance) and bool(xp.any(variance < 0)):
        raise ValueError("variance must be non-negative")
    with _quiet(xp):
        aleatoric = xp.mean(variance, axis=0)
        epistemic = xp.var(mean, axis=0)
        total = aleatoric + epistemic
    check_result(total, "the predictive variance", xp)
    return VarianceDecomposition(total, aleatoric, epistemic)


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
        xp = compat_namespace(mu, f"loc[{name!r}]")
        sigma = convert(sigma, xp, mu, f"scale[{name!r}]")
        if tuple(mu.shape) != tuple(sigma.shape):
            raise ValueError(f"{name}: loc shape {tuple(mu.shape)} != scale shape {tuple(sigma.shape)}")
        check_finite(mu, f"{name}: loc", xp, allow_int=True)
        check_finite(sigma, f"{name}: scale", xp, allow_int=True)
        if is_concrete(sigma) and bool(xp.any(sigma <= 0)):
            raise ValueError(f"{name}: posterior scales must be positive")
        layer = name.rsplit(".", 1)[0] if "." in name else name
        acc = sums.setdefault(layer, [0.0, 0.0, 0.0])
        acc[0] += float(xp.sum(sigma))
        acc[1] += float(xp.sum(xp.abs(mu) / sigma))
        acc[2] += math.prod(mu.shape)
    return {k: LayerSpread(s / n, r / n, int(n)) for k, (s, r, n) in sums.items() if n > 0}
