"""The torch realisation of a likelihood spec: target checks, the minibatch NLL and Pyro's ``obs`` site.

The math and the checks are :mod:`uncertlr.likelihoods`' (shared with the JAX backend); this
module only holds the learned noise parameter and the Pyro site.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uncertlr import likelihoods as _lik
from uncertlr.torch import _checks

__all__ = ["LikelihoodModule"]


class LikelihoodModule(nn.Module):
    """Torch realisation of a likelihood spec (holds the learned noise, if any)."""

    def __init__(self, spec: _lik.Categorical | _lik.Normal):
        super().__init__()
        self.spec = spec
        if isinstance(spec, _lik.Normal) and spec.learned:
            self.log_noise = nn.Parameter(torch.tensor(math.log(spec.init_scale)))
        else:
            self.log_noise = None

    @property
    def noise_scale(self) -> Tensor | float:
        if self.log_noise is not None:
            return self.log_noise.exp()
        assert isinstance(self.spec, _lik.Normal) and self.spec.scale is not None
        return float(self.spec.scale)

    def check(self, outputs: Tensor, y: Tensor, *, host: bool = True) -> None:
        """Validate targets against one particle's outputs ``[B, ...]``.

        ``host=False``: the value checks are device-side asserts (see :mod:`uncertlr.torch._checks`).
        """
        if isinstance(self.spec, _lik.Categorical):
            if outputs.dim() != 2:
                raise ValueError(
                    f"Categorical likelihood needs network outputs [B, C] (logits); got {tuple(outputs.shape)}"
                )
            _lik.check_labels(y, outputs.shape[0], outputs.shape[1], values=host)
            if not host:
                _checks.assert_labels(y, outputs.shape[1])
        else:
            _lik.check_targets(y, tuple(outputs.shape), values=host)
            if not host:
                _checks.assert_finite(y, "regression targets contain NaN or inf")

    def nll(self, outputs: Tensor, y: Tensor) -> Tensor:
        """Mean negative log-likelihood over particles and the batch; ``outputs[K, B, ...]``."""
        if isinstance(self.spec, _lik.Categorical):
            # cross_entropy wants int64 (or uint8) targets: int32/int16 labels are just as valid
            k = outputs.shape[0]
            labels = y.long() if k == 1 else y.long().repeat(k)  # one particle: no copy of the labels
            return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), labels)
        per = -_lik.normal_log_prob(y, outputs, self.noise_scale)
        return per.sum(tuple(range(2, per.dim()))).mean() if per.dim() > 2 else per.mean()

    def observe(self, outputs: Tensor, y: Tensor | None, num_data: int) -> None:
        """The Pyro observation site ``obs`` (subsampled plate ``data`` of size ``num_data``)."""
        with pyro.plate("data", num_data, subsample_size=outputs.shape[0]):
            if isinstance(self.spec, _lik.Categorical):
                pyro.sample("obs", dist.Categorical(logits=outputs), obs=y)
            else:
                d = dist.Normal(outputs, self.noise_scale)
                pyro.sample("obs", d.to_event(outputs.dim() - 1) if outputs.dim() > 1 else d, obs=y)
