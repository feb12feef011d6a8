"""Observation models, shared by the torch and JAX backends.

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

__all__ = ["Categorical", "Likelihood", "Normal", "NormalPrediction", "as_likelihood"]


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
