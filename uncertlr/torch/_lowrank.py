"""Correlated Normal posteriors for :func:`uncertlr.torch.bayesian`: low-rank-plus-diagonal and full covariance.

Both keep the mean-field posterior's interface (flat ``loc``/``log_scale`` over the random
parameters, ``scale``, ``unflatten``, ``draw``, ``sample_kl``), so the BNN, the LR modulator
(which reads ``posterior.loc``/``posterior.scale``) and checkpoints treat them alike:

* :class:`LowRankNormal` — ``q(w) = N(loc, diag(d²) + F Fᵀ)`` with ``d = exp(log_scale)`` and a
  factor ``F = d ⊙ U``, ``U[P, R]`` (``bayesian(net, guide="lowrank", rank=R)``). A draw costs ``P·R`` more
  than mean-field; the KL to a diagonal Normal prior is exact (matrix determinant lemma);
* :class:`FullNormal` — ``q(w) = N(loc, L Lᵀ)`` with a lower-triangular ``L`` whose diagonal is
  ``exp(log_scale)`` (``guide="full"``), for a last layer or another small set of weights
  (at most :data:`MAX_FULL_PARAMS` random parameters).

``scale`` is the *marginal* posterior std (``sqrt(diag Σ)``), which is what
``bnn.posterior_scale()`` and per-parameter modulator rules want. Weight draws must go through
``draw(eps)``: ``loc + scale * eps`` would lose the correlations.

The Pyro guide of a correlated posterior (:func:`joint_guide`) samples the whole vector at one
auxiliary site (``_posterior``, a ``LowRankMultivariateNormal`` / ``MultivariateNormal``) and
exposes each parameter as a ``Delta`` site named like it, as Pyro's own
``AutoLowRankMultivariateNormal`` does; use it with ``Trace_ELBO`` (the analytic KL of
``TraceMeanField_ELBO`` needs one Normal per site).
"""

from __future__ import annotations

from collections.abc import Iterable

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor, nn

from uncertlr.torch._meanfield import MeanFieldNormal

__all__ = ["GUIDES", "MAX_FULL_PARAMS", "FullNormal", "LowRankNormal", "joint_guide", "make_posterior"]

#: Names accepted by ``bayesian(guide=...)``.
GUIDES = ("meanfield", "lowrank", "full")
#: Largest number of random parameters a full-covariance posterior accepts (``L`` is ``P × P``).
MAX_FULL_PARAMS = 4096


def _entropy_terms(
    kl_const: Tensor | float, neg_half_logdet: Tensor, trace_prec: Tensor, maha: Tensor
) -> Tensor:
    """``KL = kl_const - ½ log det Σ + ½ (tr(Σ_p⁻¹ Σ) + (μ - μ_p)ᵀ Σ_p⁻¹ (μ - μ_p))`` for a diagonal prior."""
    return kl_const + neg_half_logdet + 0.5 * (trace_prec + maha)


def _weighted_sum(v: Tensor, prec: Tensor | float) -> Tensor:
    """``Σ v · prec`` for a precision per weight ``[P]`` or one shared by every weight (a number)."""
    return torch.dot(v, prec) if isinstance(prec, Tensor) else v.sum() * prec


class LowRankNormal(MeanFieldNormal):
    """``q(w) = N(loc, D^½ (I + U Uᵀ) D^½)`` with ``D = diag(exp(log_scale)²)`` and ``U[P, R]``.

    The factor is stored relative to the diagonal std (``factor = d ⊙ U``, so
    ``Σ = diag(d²) + factor factorᵀ``): the ``R × R`` capacitance ``I + UᵀU`` of the matrix
    determinant lemma is then well conditioned however small ``d`` is, and an optimizer's steps
    on ``U`` are relative to the posterior's own width, as its steps on ``log_scale`` are.

    Args:
        named_init: parameter name -> initial mean (the network's current weights).
        init_scale: initial marginal posterior std of every weight (``U`` starts at zero).
        rank: columns ``R`` of the factor (``1 <= R <= P``).

    Example:
        >>> import torch
        >>> q = LowRankNormal({"w": torch.zeros(3, 2)}, 0.1, rank=2)
        >>> tuple(q.factor.shape), round(float(q.scale[0].detach()), 3)
        ((6, 2), 0.1)
    """

    def __init__(self, named_init: dict[str, Tensor], init_scale: float, *, rank: int):
        super().__init__(named_init, init_scale)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= self.num_params:
            raise ValueError(
                f"rank must be an integer in [1, {self.num_params}] (the number of random parameters); got {rank!r}"
            )
        self.rank = rank
        self.relative_factor = nn.Parameter(
            torch.zeros(self.num_params, rank, dtype=self.loc.dtype, device=self.loc.device)
        )

    @property
    def diag_scale(self) -> Tensor:
        """The diagonal part's std ``d[P]``."""
        return self.log_scale.exp().clamp_min(torch.finfo(self.log_scale.dtype).tiny)

    @property
    def factor(self) -> Tensor:
        """The covariance factor ``d ⊙ U`` ``[P, R]`` (``Σ = diag(d²) + factor factorᵀ``)."""
        return self.diag_scale[:, None] * self.relative_factor

    @property
    def scale(self) -> Tensor:
        """Marginal posterior std ``d sqrt(1 + rowsum(U²))`` ``[P]`` (differentiable)."""
        return self.diag_scale * (1.0 + self.relative_factor.square().sum(-1)).sqrt()

    def draw(self, eps: Tensor) -> Tensor:
        """Weights ``loc + d ⊙ (eps + U z)`` ``[..., P]`` for standard-normal ``eps[..., P]`` (``z`` drawn here)."""
        z = torch.randn(*eps.shape[:-1], self.rank, dtype=eps.dtype, device=eps.device)
        return self.loc + self.diag_scale * (eps + z @ self.relative_factor.T)

    def covariance(self) -> Tensor:
        """The dense covariance ``[P, P]`` (for tests and small layers)."""
        f = self.factor
        return torch.diag(self.diag_scale.square()) + f @ f.T

    def _half_logdet(self) -> Tensor:
        u = self.relative_factor
        cap = torch.eye(self.rank, dtype=u.dtype, device=u.device) + u.T @ u
        return self.log_scale.sum() + torch.linalg.cholesky(cap).diagonal().log().sum()

    def sample_kl(
        self,
        eps: Tensor,
        prior_loc: Tensor | None,
        prior_prec: Tensor | float,
        kl_const: Tensor | float,
        sign: float = 1.0,
    ) -> tuple[Tensor, Tensor]:
        """Weights ``[..., P]`` (noise ``sign * eps``) and the exact ``KL(q || N(prior_loc, 1/prior_prec))`` (autograd)."""
        eps = eps if sign == 1 else -eps
        diff = self.loc if prior_loc is None else self.loc - prior_loc
        kl = _entropy_terms(
            kl_const,
            -self._half_logdet(),
            _weighted_sum(self.scale.square(), prior_prec),
            _weighted_sum(diff * diff, prior_prec),
        )
        return self.draw(eps), kl

    def distribution(self) -> dist.Distribution:
        """The posterior as one Pyro distribution over ``[P]``."""
        return dist.LowRankMultivariateNormal(self.loc, self.factor, self.diag_scale.square())


class FullNormal(MeanFieldNormal):
    """``q(w) = N(loc, L Lᵀ)`` with ``L = diag(d) (I + strictly_lower(U))``, ``d = exp(log_scale)``.

    As for :class:`LowRankNormal`, the free parameters ``U[P, P]`` are relative to the diagonal
    std, so optimizer steps on them scale with the posterior's width and ``log det L = Σ log d``.

    Args:
        named_init: parameter name -> initial mean.
        init_scale: initial posterior std (``L`` starts diagonal).

    Example:
        >>> import torch
        >>> q = FullNormal({"w": torch.zeros(4)}, 0.5)
        >>> torch.allclose(q.covariance(), 0.25 * torch.eye(4))
        True
    """

    def __init__(self, named_init: dict[str, Tensor], init_scale: float):
        super().__init__(named_init, init_scale)
        if self.num_params > MAX_FULL_PARAMS:
            raise ValueError(
                f"guide='full' keeps a {self.num_params} x {self.num_params} covariance factor; it is meant for "
                f"at most {MAX_FULL_PARAMS} random parameters (a last layer: select=select.last_layer()), "
                "or use guide='lowrank'"
            )
        self.relative_tril = nn.Parameter(
            torch.zeros(self.num_params, self.num_params, dtype=self.loc.dtype, device=self.loc.device)
        )

    def scale_tril(self) -> Tensor:
        """``L[P, P]`` (differentiable)."""
        d = self.log_scale.exp().clamp_min(torch.finfo(self.log_scale.dtype).tiny)
        eye = torch.eye(self.num_params, dtype=d.dtype, device=d.device)
        return d[:, None] * (torch.tril(self.relative_tril, -1) + eye)

    @property
    def scale(self) -> Tensor:
        """Marginal posterior std ``sqrt(rowsum(L²))`` ``[P]``."""
        return self.scale_tril().square().sum(-1).sqrt()

    def draw(self, eps: Tensor) -> Tensor:
        """Weights ``loc + L eps`` ``[..., P]`` for standard-normal ``eps[..., P]``."""
        return self.loc + eps @ self.scale_tril().T

    def covariance(self) -> Tensor:
        L = self.scale_tril()
        return L @ L.T

    def sample_kl(
        self,
        eps: Tensor,
        prior_loc: Tensor | None,
        prior_prec: Tensor | float,
        kl_const: Tensor | float,
        sign: float = 1.0,
    ) -> tuple[Tensor, Tensor]:
        """Weights ``[..., P]`` (noise ``sign * eps``) and the exact KL to the diagonal Normal prior (autograd)."""
        eps = eps if sign == 1 else -eps
        L = self.scale_tril()
        diff = self.loc if prior_loc is None else self.loc - prior_loc
        kl = _entropy_terms(
            kl_const,
            -self.log_scale.sum(),
            _weighted_sum(L.square().sum(-1), prior_prec),
            _weighted_sum(diff * diff, prior_prec),
        )
        return self.loc + eps @ L.T, kl

    def distribution(self) -> dist.Distribution:
        return dist.MultivariateNormal(self.loc, scale_tril=self.scale_tril())


def make_posterior(
    guide: str, named_init: dict[str, Tensor], init_scale: float, *, rank: int | None
) -> MeanFieldNormal:
    """The posterior for ``bayesian(guide=..., rank=...)``; ``rank`` only with ``"lowrank"`` (default 10, capped at P)."""
    if guide not in GUIDES:
        raise ValueError(f"guide must be one of {GUIDES}; got {guide!r}")
    if guide != "lowrank" and rank is not None:
        raise ValueError(f"rank= applies to guide='lowrank' only; got guide={guide!r}")
    if guide == "meanfield":
        return MeanFieldNormal(named_init, init_scale)
    if guide == "full":
        return FullNormal(named_init, init_scale)
    if rank is None:
        rank = min(10, sum(t.numel() for t in named_init.values()))
    return LowRankNormal(named_init, init_scale, rank=rank)


def joint_guide(
    posterior: LowRankNormal | FullNormal, slices: Iterable[tuple[str, torch.Size, slice]], kl_weight: float
) -> dict[str, Tensor]:
    """The Pyro guide of a correlated posterior: one auxiliary joint site, a ``Delta`` site per parameter."""
    out = {}
    with poutine.scale(scale=kl_weight):
        flat = pyro.sample("_posterior", posterior.distribution(), infer={"is_auxiliary": True})
        for n, s, sl in slices:
            out[n] = pyro.sample(n, dist.Delta(flat[sl].view(s), event_dim=len(s)))
    return out
