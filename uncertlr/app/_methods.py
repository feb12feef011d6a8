"""The models behind a pipeline :class:`~uncertlr.app.pipeline.Method`: BNNs (any guide), ensembles,
MC dropout, the post-hoc last-layer Laplace approximation, and the deterministic regressor."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from uncertlr import likelihoods, priors
from uncertlr.likelihoods import NormalPrediction
from uncertlr.torch import LastLayerLaplace, bayesian, deep_ensemble, mc_dropout

__all__ = ["WRAPPERS", "PointRegressor", "build", "check", "laplace"]

WRAPPERS = ("", "ensemble", "mc-dropout", "laplace")


def check(method: Any) -> None:
    """Refuse a method whose wrapper, Bayesian flag and modulator rule do not go together."""
    if method.wrapper not in WRAPPERS:
        raise ValueError(f"wrapper must be one of {WRAPPERS}; got {method.wrapper!r}")
    if method.bayesian and method.wrapper in ("mc-dropout", "laplace"):
        raise ValueError(
            f"{method.name}: wrapper={method.wrapper!r} wraps a deterministic network (bayesian=False)"
        )
    if method.rule is not None and not (method.bayesian or method.wrapper in ("ensemble", "mc-dropout")):
        raise ValueError(
            f"{method.name}: the pipeline modulates Bayesian, ensemble and MC-dropout methods only"
        )


def build(method: Any, net: Any, *, num_data: int, regression: bool, seed: int) -> nn.Module | None:
    """The model of a Bayesian, ensemble or MC-dropout method; ``None`` for a plain network."""
    lik = "normal" if regression else "categorical"
    if method.bayesian:

        def make() -> nn.Module:
            return bayesian(
                net(),
                num_data=num_data,
                prior=priors.Normal(method.prior_scale),
                likelihood=likelihoods.Normal() if regression else likelihoods.Categorical(),
                kl_weight=method.kl_weight,
                init_scale=method.init_scale,
                guide=method.guide,
                rank=method.rank,
            )

        return deep_ensemble(make, size=method.members, seed=seed) if method.wrapper else make()
    if method.wrapper == "ensemble":
        return deep_ensemble(net, size=method.members, seed=seed, likelihood=lik)
    if method.wrapper == "mc-dropout":
        return mc_dropout(net(), p=method.dropout, likelihood=lik)
    return None


def laplace(model: nn.Module, x: Tensor, y: Tensor) -> LastLayerLaplace:
    """Last-layer Laplace on a trained network (a point regressor's learned noise is kept)."""
    log_noise = getattr(model, "log_noise", None)
    if log_noise is None:
        return LastLayerLaplace(model).fit(x, y)
    noise = float(log_noise.detach().exp())
    return LastLayerLaplace(model.net, likelihood="normal", noise_scale=noise).fit(x, y)  # type: ignore[arg-type]


class PointRegressor(nn.Module):
    """A deterministic network with a learned homoskedastic noise std, fitted by maximum likelihood."""

    def __init__(self, net: nn.Module, *, init_scale: float = 1.0):
        super().__init__()
        self.net = net
        self.log_noise = nn.Parameter(torch.tensor(math.log(init_scale)))

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Mean Gaussian negative log-likelihood of ``y[B, D]`` (constant included)."""
        return -likelihoods.normal_log_prob(y, self.net(x), self.log_noise.exp()).mean()

    @torch.no_grad()
    def predict(self, x: Tensor) -> NormalPrediction:
        """A one-sample :class:`NormalPrediction` ``[1, N, D]`` (no epistemic part)."""
        mean = self.net(x)[None]
        return NormalPrediction(mean, torch.exp(2 * self.log_noise).expand_as(mean))
