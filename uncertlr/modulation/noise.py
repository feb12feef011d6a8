"""σ for deterministic weights: the minibatch gradient's noise (see :mod:`uncertlr.modulation`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from uncertlr._arrays import float_dtype, full, namespace
from uncertlr._arrays import quiet as _quiet
from uncertlr.modulation.rules import _check_number

Array = Any

__all__ = ["GradientNoise", "NoiseState"]


class NoiseState(NamedTuple):
    """Running gradient moments of one tensor: ``count`` (0-d), ``mean`` and ``sq`` (shaped like it)."""

    count: Array
    mean: Array
    sq: Array


@dataclass(frozen=True)
class GradientNoise:
    """A per-weight uncertainty for deterministic weights: the std of the minibatch gradient.

    ``σ_j = sqrt(max(E[g_j²] - E[g_j]², 0))`` from bias-corrected EMAs. Per-parameter rules
    are scale-free (they compare each weight with its tensor's mean), so a gradient-noise
    std can stand in for a posterior std: weights whose gradient fluctuates most across
    minibatches are the ones the data pin down least. A non-finite gradient, or one whose
    square overflows the dtype, leaves the moments untouched.

    Example:
        >>> import numpy as np
        >>> est = GradientNoise(decay=0.5)
        >>> state = est.init(np.zeros(2))
        >>> for g in ([1.0, 1.0], [3.0, 1.0]):
        ...     sigma, state = est.update(np.array(g), state)
        >>> sigma.round(3).tolist()
        [0.943, 0.0]
    """

    decay: float = 0.99

    def __post_init__(self) -> None:
        _check_number("GradientNoise", "decay", self.decay)
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"GradientNoise: decay must be in [0, 1); got {self.decay!r}")

    def init(self, like: Array) -> NoiseState:
        """Zero moments for a tensor shaped like ``like``."""
        xp = namespace(like)
        dt = float_dtype(xp, like)
        z = xp.zeros_like(like, dtype=dt)
        return NoiseState(full(xp, like, 0.0, dt), z, z)

    def update(self, grad: Array, state: NoiseState) -> tuple[Array, NoiseState]:
        """Fold in one gradient; returns ``(sigma, state)``."""
        xp = namespace(grad)
        d = self.decay
        with _quiet(xp):
            # NaN/inf in the gradient, or a square that overflows (|g| > ~1.8e19 in float32), makes
            # this sum non-finite: the step is left out of the moments instead of poisoning them
            g2 = grad * grad
            ok = xp.isfinite(xp.sum(g2))
            mean = xp.where(ok, d * state.mean + (1.0 - d) * grad, state.mean)
            sq = xp.where(ok, d * state.sq + (1.0 - d) * g2, state.sq)
            count = state.count + xp.where(ok, 1.0, 0.0)
            corr = xp.clip(1.0 - xp.pow(d, count), xp.finfo(state.count.dtype).tiny, None)
            m = mean / corr
            sigma = xp.sqrt(xp.clip(sq / corr - m * m, 0.0, None))
            return sigma, NoiseState(count, mean, sq)
