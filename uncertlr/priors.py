"""Weight priors, shared by the torch (Pyro) and JAX (NumPyro) backends.

A prior is a frozen dataclass with numeric fields; each backend turns it into
distributions over the parameters it makes random. ``fan_in`` is the number of
inputs feeding one output unit of the parameter's layer (for a bias or a norm
layer's scale: that of the layer's weight, or 1 where there is none).

Example:
    >>> from uncertlr import priors
    >>> priors.FanInNormal(gain=1.0).scale_for(fan_in=100)
    0.1
    >>> priors.Normal(scale=0.5).scale_for(fan_in=100)
    0.5
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["FanInNormal", "Normal", "Prior", "ScaleMixtureNormal"]


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


Prior = Normal | FanInNormal | ScaleMixtureNormal
