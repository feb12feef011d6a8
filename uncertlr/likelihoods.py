"""Observation models, shared by the torch and JAX backends.

Both backends check targets with :func:`check_labels` / :func:`check_targets` and compute
the Gaussian log-likelihood with :func:`normal_log_prob`, written once on the array API.

Example:
    >>> from uncertlr import likelihoods
    >>> likelihoods.Categorical()
    Categorical()
    >>> likelihoods.Normal().learned           # noise std learned from the data
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from uncertlr._arrays import compat_namespace, is_concrete, namespace

Array = Any

__all__ = [
    "Categorical",
    "Likelihood",
    "Normal",
    "NormalPrediction",
    "as_likelihood",
    "check_labels",
    "check_targets",
    "normal_log_prob",
]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class Categorical:
    """Classification: the network outputs logits ``[N, C]``; labels are integers in ``[0, C)``."""


@dataclass(frozen=True)
class Normal:
    """Regression with homoskedastic Gaussian noise: outputs ``[N]`` or ``[N, D]`` are the means.

    Args:
        scale: a fixed noise std, or ``None`` to learn it (a point estimate, trained by
            the same optimizer as the rest of the model).
        init_scale: the learned noise std's starting value.
    """

    scale: float | None = None
    init_scale: float = 1.0

    def __post_init__(self) -> None:
        for name, v in (("scale", self.scale), ("init_scale", self.init_scale)):
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"Normal likelihood {name} must be positive and finite; got {v!r}")

    @property
    def learned(self) -> bool:
        return self.scale is None


Likelihood = Categorical | Normal


def as_likelihood(lik: Any) -> Categorical | Normal:
    """A likelihood spec from itself or its name (``"categorical"``, ``"normal"``/``"gaussian"``).

    Example:
        >>> as_likelihood("categorical")
        Categorical()
    """
    if isinstance(lik, (Categorical, Normal)):
        return lik
    if lik == "categorical":
        return Categorical()
    if lik in ("normal", "gaussian"):
        return Normal()
    raise ValueError(
        f"likelihood must be likelihoods.Categorical(), likelihoods.Normal(), 'categorical' or 'normal'; got {lik!r}"
    )


class NormalPrediction(NamedTuple):
    """Regression predictions per posterior sample: ``mean[S, N, ...]`` and noise ``variance`` (same shape).

    Returned by ``predict`` of both backends (torch tensors or jax arrays); feed it to
    :func:`uncertlr.metrics.predictive_variance` and :func:`uncertlr.metrics.gaussian_nll`.
    """

    mean: Any
    variance: Any

    def rescale(self, *, loc: Any = 0.0, scale: Any = 1.0) -> NormalPrediction:
        """Undo a standardisation of the targets: ``mean * scale + loc`` and ``variance * scale**2``.

        A model trained on standardised targets ``(y - loc) / scale`` predicts in those units;
        this maps its predictions back to the original ones (an affine map of a Gaussian).

        Args:
            loc: the training targets' mean (a number, or an array broadcastable to the
                trailing output dimensions).
            scale: the training targets' std (same rules as ``loc``).

        Returns:
            A new :class:`NormalPrediction` of the same shape ``[S, N, ...]``, in original units.

        Example:
            >>> import numpy as np
            >>> pred = NormalPrediction(np.array([[0.0, 1.0]]), np.array([[1.0, 0.25]]))
            >>> orig = pred.rescale(loc=10.0, scale=2.0)
            >>> orig.mean.tolist(), orig.variance.tolist()
            ([[10.0, 12.0]], [[4.0, 1.0]])
        """
        return NormalPrediction(self.mean * scale + loc, self.variance * (scale * scale))


def normal_log_prob(y: Array, mean: Array, scale: Array | float) -> Array:
    """Elementwise ``log N(y | mean, scale²)`` (any array library; ``scale`` a number or an array).

    Example:
        >>> import numpy as np
        >>> round(float(normal_log_prob(np.zeros(1), np.zeros(1), 1.0)[0]), 4)
        -0.9189
    """
    xp = namespace(mean)
    log_scale = math.log(scale) if isinstance(scale, (int, float)) else xp.log(scale)
    return -0.5 * ((y - mean) / scale) ** 2 - log_scale - _HALF_LOG_2PI


def check_labels(y: Any, n: int, num_classes: int, *, values: bool = True) -> None:
    """Class labels ``y[N]`` for ``n`` inputs and ``num_classes`` classes, with errors that name the problem.

    Args:
        values: also check every label lies in ``[0, num_classes)`` (reads the labels back to
            the host once; skipped for JAX tracers).

    Raises:
        TypeError: ``y`` is not an array of integers.
        ValueError: ``y`` is not ``[n]``, or a label lies outside ``[0, num_classes)``.

    Example:
        >>> import numpy as np
        >>> check_labels(np.array([0, 3]), 2, 3)
        Traceback (most recent call last):
        ...
        ValueError: labels must lie in [0, 3); got values in [0, 3]
    """
    xp = compat_namespace(y, "labels")
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"labels must have shape [N] = [{n}]; got {tuple(y.shape)}")
    if not xp.isdtype(y.dtype, "integral"):
        raise TypeError(f"labels must be an integer array of class indices; got dtype {y.dtype}")
    if values and n and is_concrete(y):
        lo, hi = int(xp.min(y)), int(xp.max(y))
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}); got values in [{lo}, {hi}]")


def check_targets(y: Any, shape: tuple[int, ...], *, values: bool = True) -> None:
    """Regression targets ``y`` for outputs of ``shape``, with errors that name the problem.

    Raises:
        TypeError: ``y`` is not a floating-point array.
        ValueError: ``y``'s shape differs from ``shape`` (no broadcasting), or (``values``) it
            holds NaN or inf.

    Example:
        >>> import numpy as np
        >>> check_targets(np.zeros(4), (4, 1))
        Traceback (most recent call last):
        ...
        ValueError: regression targets must have the network output's shape (4, 1); got (4,) (reshape y, e.g. y[:, None], rather than rely on broadcasting)
    """
    xp = compat_namespace(y, "regression targets")
    if tuple(y.shape) != tuple(shape):
        raise ValueError(
            f"regression targets must have the network output's shape {tuple(shape)}; got {tuple(y.shape)} "
            "(reshape y, e.g. y[:, None], rather than rely on broadcasting)"
        )
    if not xp.isdtype(y.dtype, "real floating"):
        raise TypeError(f"regression targets must be floating point; got dtype {y.dtype}")
    if values and is_concrete(y) and not bool(xp.all(xp.isfinite(y))):
        raise ValueError("regression targets contain NaN or inf")
