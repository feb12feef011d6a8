"""Weight priors, shared by the torch (Pyro) and JAX (NumPyro) backends.

A prior is a frozen dataclass with numeric fields; each backend turns it into
distributions over the parameters it makes random. ``fan_in`` is the number of
inputs feeding one output unit of the parameter's layer (for a bias or a norm
layer's scale: that of the layer's weight, or 1 where there is none).

The math both backends need is written here once, on the array API (numpy, torch or jax
arrays): :func:`normal_kl` (the analytic KL of a mean-field Normal posterior to a Normal
prior), :func:`normal_entropy`, and :meth:`ScaleMixtureNormal.log_prob`. The torch
backend's fused kernel computes the same KL as an optimisation and is tested against
:func:`normal_kl`.

Example:
    >>> from uncertlr import priors
    >>> priors.FanInNormal(gain=1.0).scale_for(fan_in=100)
    0.1
    >>> priors.Normal(scale=0.5).scale_for(fan_in=100)
    0.5
    >>> import numpy as np
    >>> float(priors.normal_kl(np.zeros(1), np.ones(1), 0.0, 1.0).sum())
    0.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from uncertlr._arrays import namespace

Array = Any

__all__ = ["FanInNormal", "Normal", "Prior", "ScaleMixtureNormal", "normal_entropy", "normal_kl"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number; got {value!r}")


@dataclass(frozen=True)
class Normal:
    """Independent ``N(loc, scale^2)`` on every weight.

    Args:
        scale: prior standard deviation.
        loc: prior mean (ignored when ``centered``).
        centered: centre the prior on the wrapped network's current weights
            (a pretrained net's weights become the prior mean).
    """

    scale: float = 1.0
    loc: float = 0.0
    centered: bool = False

    def __post_init__(self) -> None:
        _positive("Normal prior scale", self.scale)
        if not math.isfinite(self.loc):
            raise ValueError(f"Normal prior loc must be finite; got {self.loc!r}")

    def scale_for(self, fan_in: int) -> float:
        """Prior std of a parameter whose layer has ``fan_in`` inputs (ignored here)."""
        return float(self.scale)


@dataclass(frozen=True)
class FanInNormal:
    """Layer-wise ``N(0, gain^2 / fan_in)``: the LeCun/He initialisation scale as a prior.

    The prior variance shrinks with the layer's width, so wide layers are not
    over-regularised or under-regularised relative to narrow ones.

    Args:
        gain: multiplies the std (``sqrt(2)`` matches He initialisation for ReLU nets).
        centered: centre the prior on the wrapped network's current weights.
    """

    gain: float = 1.0
    centered: bool = False

    def __post_init__(self) -> None:
        _positive("FanInNormal gain", self.gain)

    def scale_for(self, fan_in: int) -> float:
        """Prior std ``gain / sqrt(fan_in)``."""
        if fan_in < 1:
            raise ValueError(f"fan_in must be >= 1; got {fan_in}")
        return float(self.gain) / math.sqrt(fan_in)

    @property
    def loc(self) -> float:
        return 0.0


@dataclass(frozen=True)
class ScaleMixtureNormal:
    """Zero-mean scale mixture ``pi N(0, scale1^2) + (1 - pi) N(0, scale2^2)`` (Blundell et al., 2015).

    Its KL to a Normal guide has no closed form: the ELBO uses a one-sample
    Monte Carlo estimate for these parameters.
    """

    pi: float = 0.5
    scale1: float = 1.0
    scale2: float = math.exp(-6)

    def __post_init__(self) -> None:
        if not 0.0 < self.pi < 1.0:
            raise ValueError(f"ScaleMixtureNormal pi must be in (0, 1); got {self.pi!r}")
        _positive("ScaleMixtureNormal scale1", self.scale1)
        _positive("ScaleMixtureNormal scale2", self.scale2)

    centered = False
    loc = 0.0

    def scale_for(self, fan_in: int) -> float:
        """Std of the mixture (used to scale initialisations, not in the KL)."""
        return math.sqrt(self.pi * self.scale1**2 + (1 - self.pi) * self.scale2**2)

    def log_prob(self, w: Array) -> Array:
        """Elementwise log density of the mixture at weights ``w`` (any shape, any array library).

        Example:
            >>> import numpy as np
            >>> p = ScaleMixtureNormal(pi=0.5, scale1=1.0, scale2=1.0)
            >>> round(float(p.log_prob(np.zeros(1))[0]), 4)   # log N(0 | 0, 1)
            -0.9189
        """
        xp = namespace(w)
        a = (math.log(self.pi) - math.log(self.scale1) - _HALF_LOG_2PI) - 0.5 * (w / self.scale1) ** 2
        b = (math.log1p(-self.pi) - math.log(self.scale2) - _HALF_LOG_2PI) - 0.5 * (w / self.scale2) ** 2
        return xp.logaddexp(a, b)


Prior = Normal | FanInNormal | ScaleMixtureNormal


def _log(xp: Any, v: Any) -> Any:
    return math.log(v) if isinstance(v, (int, float)) else xp.log(v)


def normal_kl(loc: Array, scale: Array, prior_loc: Array | float, prior_scale: Array | float) -> Array:
    """Elementwise ``KL(N(loc, scale²) || N(prior_loc, prior_scale²))``; sum it for a whole posterior.

    ``log σ_p - log σ + (σ² + (μ - μ_p)²) / (2 σ_p²) - 1/2``. ``prior_loc`` and ``prior_scale``
    are numbers or arrays broadcastable to ``loc``.

    Example:
        >>> import numpy as np
        >>> normal_kl(np.array([1.0]), np.array([1.0]), 0.0, 1.0).tolist()
        [0.5]
    """
    xp = namespace(loc)
    return (
        _log(xp, prior_scale)
        - xp.log(scale)
        + (scale * scale + (loc - prior_loc) ** 2) / (2 * prior_scale * prior_scale)
        - 0.5
    )


def normal_entropy(scale: Array) -> Array:
    """Elementwise differential entropy of ``N(·, scale²)``: ``log σ + ½ log(2πe)``.

    Example:
        >>> import numpy as np
        >>> round(float(normal_entropy(np.ones(1))[0]), 4)
        1.4189
    """
    xp = namespace(scale)
    return xp.log(scale) + (_HALF_LOG_2PI + 0.5)
