"""The last-layer Laplace math both backends share: the marginal likelihood and its prior precision.

A last layer with ``P`` parameters, trained to ``θ*`` with training log likelihood ``log p(D | θ*)``
and generalised Gauss-Newton ``H`` (eigenvalues ``λ``), under a prior ``N(0, δ⁻¹ I)``, has the
Laplace log marginal likelihood (MacKay 1992; Immer et al. 2021, eq. 3)

``log p(D | θ*) - δ‖θ*‖²/2 + P/2 log δ - ½ Σ log(λ_i + δ)``

(the constants in ``2π`` cancel between the prior's normaliser and the Gaussian integral).
:func:`fit_prior_precision` maximises it over ``δ``: a 1-D bounded search over ``log δ``.
Plain floats and numpy in float64; :class:`uncertlr.torch.LastLayerLaplace` and
:class:`uncertlr.jax.LastLayerLaplace` build ``H`` and call these.

Example:
    >>> import numpy as np
    >>> evals = np.array([4.0, 1.0, 0.25])
    >>> d = fit_prior_precision(-10.0, 2.0, evals)
    >>> bool(log_marginal_likelihood(-10.0, 2.0, evals, d) >= log_marginal_likelihood(-10.0, 2.0, evals, 2 * d))
    True
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar

__all__ = [
    "PRIOR_PRECISION_BOUNDS",
    "check_prior_precision",
    "fit_prior_precision",
    "log_marginal_likelihood",
]

#: The interval :func:`fit_prior_precision` searches.
PRIOR_PRECISION_BOUNDS = (1e-4, 1e6)


def log_marginal_likelihood(
    log_likelihood: float, theta_sq: float, evals: np.ndarray, prior_precision: float
) -> float:
    """The Laplace log marginal likelihood for prior precision ``δ``.

    Args:
        log_likelihood: ``log p(D | θ*)`` at the trained weights.
        theta_sq: ``‖θ*‖²``.
        evals: the GGN's eigenvalues ``[P]`` (clipped at 0).
        prior_precision: ``δ > 0``.
    """
    d = float(prior_precision)
    evals = np.asarray(evals, dtype=np.float64)
    return float(
        log_likelihood - 0.5 * d * theta_sq + 0.5 * evals.size * math.log(d) - 0.5 * np.log(evals + d).sum()
    )


def fit_prior_precision(
    log_likelihood: float,
    theta_sq: float,
    evals: np.ndarray,
    bounds: tuple[float, float] = PRIOR_PRECISION_BOUNDS,
) -> float:
    """The prior precision ``δ`` in ``bounds`` that maximises :func:`log_marginal_likelihood`."""
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    res = minimize_scalar(
        lambda t: -log_marginal_likelihood(log_likelihood, theta_sq, evals, math.exp(t)),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return math.exp(float(res.x))


def check_prior_precision(prior_precision: float | str) -> float | None:
    """``None`` for ``"marglik"``, the number for a positive finite one; a ValueError naming it otherwise."""
    if prior_precision == "marglik":
        return None
    if (
        isinstance(prior_precision, (int, float))
        and not isinstance(prior_precision, bool)
        and math.isfinite(prior_precision)
        and prior_precision > 0
    ):
        return float(prior_precision)
    raise ValueError(f"prior_precision must be 'marglik' or a positive number; got {prior_precision!r}")
