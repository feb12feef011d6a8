"""Confidence-weighted losses: per-sample weights from per-sample uncertainty (see :mod:`uncertlr.modulation`)."""

from __future__ import annotations

import math
from typing import Any

from uncertlr._arrays import is_floating, namespace
from uncertlr._arrays import quiet as _quiet
from uncertlr.modulation.rules import _check_number

Array = Any

__all__ = ["confidence_weights"]


def confidence_weights(
    entropy: Array, *, kappa: float = -0.5, w_min: float = 0.25, w_max: float = 4.0, validate: bool = True
) -> Array:
    """Per-sample loss weights from per-sample predictive entropy, renormalised to mean 1.

    ``w_i ∝ clip((h_i / mean h)^κ, w_min, w_max)``: with ``κ < 0`` confident samples
    (low entropy) weigh more, uncertain ones less; ``κ > 0`` emphasises the uncertain ones
    (a focal-loss-like weighting). Treat the weights as constants (detach / stop_gradient)
    when multiplying a loss; :func:`uncertlr.torch.confidence_weighted_nll` does it for you.

    Args:
        entropy: ``[B]`` non-negative per-sample entropies (e.g. ``metrics.predictive_entropy``).
        kappa: exponent κ.
        w_min, w_max: bounds before renormalisation (``0 < w_min <= 1 <= w_max``); the
            returned weights lie in ``[w_min / w_max, w_max / w_min]``.
        validate: check for NaN/inf (reads values back to the host; skipped under ``jax.jit``).

    Returns:
        ``[B]`` weights with mean 1.

    Example:
        >>> import numpy as np
        >>> w = confidence_weights(np.array([0.1, 0.1, 1.0, 2.0]))
        >>> round(float(w.mean()), 6), bool(w[0] > w[2] > w[3])
        (1.0, True)
    """
    xp = namespace(entropy)
    if entropy.ndim != 1 or entropy.shape[0] == 0:
        raise ValueError(f"entropy must have shape [B] with B >= 1; got {tuple(entropy.shape)}")
    if not is_floating(xp, entropy):
        raise TypeError(f"entropy must be floating point; got dtype {entropy.dtype}")
    for field, value in (("kappa", kappa), ("w_min", w_min), ("w_max", w_max)):
        _check_number("confidence_weights", field, value)
    if not (math.isfinite(kappa) and 0.0 < w_min <= 1.0 <= w_max < math.inf):
        raise ValueError(
            f"need finite kappa and 0 < w_min <= 1 <= w_max < inf; got {kappa!r}, [{w_min!r}, {w_max!r}]"
        )
    if validate and not type(entropy).__name__.endswith("Tracer") and not bool(xp.all(xp.isfinite(entropy))):
        raise ValueError("entropy contains NaN or inf")
    tiny = xp.finfo(entropy.dtype).tiny
    with _quiet(xp):
        ratio = (xp.clip(entropy, 0.0, None) + tiny) / (xp.mean(xp.clip(entropy, 0.0, None)) + tiny)
        w = xp.clip(xp.pow(ratio, kappa), w_min, w_max)
        return w / xp.mean(w)
