"""The Pyro sites of a BNN's ``model`` and mean-field ``guide`` (the correlated guides are in ``_lowrank``).

:func:`prior_site` is the prior of one random parameter as a Pyro distribution (Normal with the
BNN's per-weight prior precision and location, or the scale mixture); :func:`meanfield_guide`
samples one Normal site per random parameter. Both are used only by :class:`uncertlr.torch.BNN`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor

from uncertlr import priors as _priors

__all__ = ["meanfield_guide", "prior_site"]


def prior_site(bnn: Any, shape: torch.Size, sl: slice) -> dist.Distribution:
    """The prior of the random parameter at ``sl`` of the flat posterior, with event shape ``shape``."""
    pr = bnn.prior
    ref = bnn.posterior.loc
    if isinstance(pr, _priors.ScaleMixtureNormal):
        mix = dist.Categorical(torch.tensor([pr.pi, 1 - pr.pi], dtype=ref.dtype, device=ref.device))
        comp = dist.Normal(
            torch.zeros(2, dtype=ref.dtype, device=ref.device),
            torch.tensor([pr.scale1, pr.scale2], dtype=ref.dtype, device=ref.device),
        )
        return dist.MixtureSameFamily(mix, comp).expand(shape).to_event(len(shape))
    loc = (
        bnn.prior_loc[sl].view(shape)
        if bnn.prior_loc is not None
        else torch.zeros(shape, dtype=ref.dtype, device=ref.device)
    )
    return dist.Normal(loc, bnn.prior_prec[sl].rsqrt().view(shape)).to_event(len(shape))


def meanfield_guide(
    posterior: Any, slices: Iterable[tuple[str, torch.Size, slice]], kl_weight: float
) -> dict[str, Tensor]:
    """One ``Normal(loc, scale)`` site per random parameter, scaled by ``kl_weight``."""
    loc, scale = posterior.loc, posterior.scale
    out = {}
    with poutine.scale(scale=kl_weight):
        for n, s, sl in slices:
            out[n] = pyro.sample(n, dist.Normal(loc[sl].view(s), scale[sl].view(s)).to_event(len(s)))
    return out
