"""Deep ensembles (Lakshminarayanan et al., 2017) of deterministic networks or of BNNs, behind one ``predict``.

:func:`deep_ensemble` copies a network ``size`` times and re-initialises every copy
(``reset_parameters()`` of each layer under its own seed), or calls a factory ``size`` times
(e.g. ``lambda: bayesian(MyNet(), num_data=N)`` for an ensemble of BNNs). The
:class:`Ensemble` trains all members in your loop at once: ``ens.elbo(x, y)`` returns the
sum of the members' losses (their gradients do not mix, so one optimizer over
``ens.parameters()`` trains each member as if alone) and the outputs of every member, so the
batch's ensemble entropy is a modulator signal without a second forward pass.

``ens.predict(x, num_samples=S)`` returns ``[S', N, C]`` probabilities (or a
:class:`~uncertlr.likelihoods.NormalPrediction`) for :mod:`uncertlr.metrics`: one draw per
deterministic member (``S' = size``), ``ceil(S / size)`` posterior draws per BNN member.

Example:
    >>> import torch
    >>> from uncertlr.torch import deep_ensemble
    >>> ens = deep_ensemble(torch.nn.Linear(4, 3), size=5, seed=0)
    >>> opt = torch.optim.Adam(ens.parameters(), lr=1e-2)
    >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    >>> ens.loss(x, y).backward(); opt.step()
    >>> tuple(ens.predict(x).shape)
    (5, 16, 3)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from uncertlr import likelihoods as _lik
from uncertlr._spec import ELBOTerms, positive_int
from uncertlr.likelihoods import NormalPrediction
from uncertlr.torch._likelihood import LikelihoodModule
from uncertlr.torch.bnn import BNN

__all__ = ["Ensemble", "PointNetwork", "deep_ensemble"]


class PointNetwork(nn.Module):
    """A deterministic network with a likelihood: the ensemble member (and MC-dropout base) for plain nets.

    ``elbo(x, y)`` gives :class:`~uncertlr.torch.ELBOTerms` with ``kl = 0`` and outputs
    ``[1, B, ...]``; ``predict(x)`` one draw ``[1, N, C]`` (or a one-draw ``NormalPrediction``
    with the learned noise for ``likelihoods.Normal()``).
    """

    def __init__(self, net: nn.Module, likelihood: _lik.Categorical | _lik.Normal | str = "categorical"):
        super().__init__()
        self.net = net
        self.likelihood_module = LikelihoodModule(_lik.as_likelihood(likelihood))

    @property
    def likelihood(self) -> _lik.Categorical | _lik.Normal:
        return self.likelihood_module.spec

    def elbo(self, x: Tensor, y: Tensor) -> ELBOTerms:
        out = self.net(x)[None]
        self.likelihood_module.check(out[0], y)
        nll = self.likelihood_module.nll(out, y)
        return ELBOTerms(nll, nll, torch.zeros((), dtype=nll.dtype, device=nll.device), out)

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        return self.elbo(x, y).loss

    def outputs_to_prediction(self, out: Tensor) -> Tensor | NormalPrediction:
        """Raw outputs ``[S, N, ...]`` -> probabilities, or means with the learned noise variance."""
        if isinstance(self.likelihood, _lik.Categorical):
            return torch.softmax(out, dim=-1)
        scale = self.likelihood_module.noise_scale
        var = scale * scale if isinstance(scale, Tensor) else torch.tensor(scale * scale)
        return NormalPrediction(out, var.detach().to(out).expand_as(out))

    @torch.no_grad()
    def predict(self, x: Tensor, *, num_samples: int = 1) -> Tensor | NormalPrediction:
        """One draw ``[1, N, C]`` (``num_samples`` is accepted for a uniform interface and ignored)."""
        was = self.training
        self.eval()
        try:
            return self.outputs_to_prediction(self.net(x)[None])
        finally:
            self.train(was)


def _reset(module: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    found = False
    for m in module.modules():
        if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
            m.reset_parameters()
            found = True
    if not found:
        raise ValueError(
            f"{type(module).__name__} has no layer with reset_parameters(); pass a factory (a callable that "
            "builds a freshly initialised member) instead of a module"
        )
    return module


class Ensemble(nn.Module):
    """Independently trained members behind one ``predict``; build it with :func:`deep_ensemble`.

    Args:
        members: :class:`~uncertlr.torch.BNN` s or :class:`PointNetwork` s (anything with
            ``elbo(x, y)`` and ``predict(x, num_samples=...)``), all with the same likelihood.
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members; got {len(members)}")
        kinds = {type(m.likelihood).__name__ for m in members}  # type: ignore[union-attr]
        if len(kinds) != 1:
            raise ValueError(f"every member must have the same likelihood; got {sorted(kinds)}")
        self.members = nn.ModuleList(members)

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def likelihood(self) -> _lik.Categorical | _lik.Normal:
        return self.members[0].likelihood  # type: ignore[return-value]

    def elbo(self, x: Tensor, y: Tensor, *, num_particles: int = 1) -> ELBOTerms:
        """Sum of the members' losses (each a per-data-point negative ELBO or NLL); outputs of all members.

        Returns:
            ``ELBOTerms(loss = Σ_m loss_m, nll = mean_m nll_m, kl = Σ_m kl_m, outputs [Σ K_m, B, ...])``.
        """
        terms = [
            m.elbo(x, y, num_particles=num_particles) if isinstance(m, BNN) else m.elbo(x, y)  # type: ignore[operator]
            for m in self.members
        ]
        loss = torch.stack([t.loss for t in terms]).sum()
        nll = torch.stack([t.nll for t in terms]).mean()
        kl = torch.stack([torch.as_tensor(t.kl, dtype=loss.dtype) for t in terms]).sum()
        return ELBOTerms(loss, nll, kl, torch.cat([t.outputs for t in terms]))

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        return self.elbo(x, y).loss

    def predict(self, x: Tensor, *, num_samples: int = 32) -> Tensor | NormalPrediction:
        """``[S', N, C]`` probabilities, or a ``NormalPrediction`` ``[S', N, ...]``, over all members.

        Deterministic members give one draw each; BNN members ``ceil(num_samples / size)`` each.
        """
        num_samples = positive_int("num_samples", num_samples)
        per = math.ceil(num_samples / self.size)
        preds = [m.predict(x, num_samples=per) for m in self.members]  # type: ignore[operator]
        if isinstance(preds[0], NormalPrediction):
            return NormalPrediction(
                torch.cat([p.mean for p in preds]),  # type: ignore[union-attr]
                torch.cat([p.variance for p in preds]),  # type: ignore[union-attr]
            )
        return torch.cat(preds)  # type: ignore[arg-type]

    def parameter_scale(self) -> dict[Tensor, Tensor]:
        """``{parameter: σ}`` for the LR modulator's ``sigma=`` (per-parameter rules).

        BNN members: each member's posterior std for its posterior mean. Deterministic
        members: the spread of the ensemble, the elementwise std over members of the same
        parameter (each member's tensor gets that std).

        Example:
            >>> import torch
            >>> from uncertlr.modulation import GradSigmaRatio
            >>> from uncertlr.torch import Modulator, deep_ensemble
            >>> ens = deep_ensemble(torch.nn.Linear(4, 3), size=3, seed=0)
            >>> opt = torch.optim.Adam(ens.parameters(), lr=1e-2)
            >>> mod = Modulator(GradSigmaRatio(), sigma=ens.parameter_scale).attach(opt)
        """
        out: dict[Tensor, Tensor] = {}
        if isinstance(self.members[0], BNN):
            for m in self.members:
                out[m.posterior.loc] = m.posterior.scale.detach()  # type: ignore[union-attr]
            return out
        named = [dict(m.net.named_parameters()) for m in self.members]  # type: ignore[union-attr]
        for name in named[0]:
            group = [d[name] for d in named]
            if len({tuple(p.shape) for p in group}) != 1:
                continue
            sd = torch.stack([p.detach() for p in group]).std(0)
            for p in group:
                out[p] = sd
        return out


def deep_ensemble(
    net: nn.Module | Callable[[], nn.Module],
    *,
    size: int = 5,
    seed: int = 0,
    likelihood: _lik.Categorical | _lik.Normal | str = "categorical",
) -> Ensemble:
    """An :class:`Ensemble` of ``size`` independently initialised members.

    Args:
        net: a network (deep-copied ``size`` times, every copy re-initialised with
            ``reset_parameters()`` under seed ``seed + m``; the original is untouched), or a
            factory called ``size`` times under those seeds — return a
            :class:`~uncertlr.torch.BNN` from it for an ensemble of BNNs.
        size: number of members (at least 2).
        seed: seed of the first member's initialisation.
        likelihood: for plain networks: ``"categorical"`` (outputs are logits) or
            ``"normal"``/``likelihoods.Normal()`` (a learned noise std per member). BNN members
            bring their own.

    Example:
        >>> import torch
        >>> from uncertlr.torch import bayesian, deep_ensemble
        >>> ens = deep_ensemble(lambda: bayesian(torch.nn.Linear(4, 3), num_data=100), size=3)
        >>> tuple(ens.predict(torch.randn(2, 4), num_samples=6).shape)
        (6, 2, 3)
    """
    size = positive_int("size", size)
    if size < 2:
        raise ValueError(f"size must be at least 2; got {size}")
    state = torch.random.get_rng_state()
    try:
        members: list[nn.Module] = []
        for m in range(size):
            if isinstance(net, BNN):
                raise TypeError(
                    "an ensemble of BNNs needs a factory that builds each member, e.g. "
                    "deep_ensemble(lambda: bayesian(MyNet(), num_data=N), size=3); a BNN cannot be re-initialised"
                )
            if isinstance(net, nn.Module):
                member: nn.Module = _reset(copy.deepcopy(net), seed + m)
            elif callable(net):
                torch.manual_seed(seed + m)
                member = net()
                if not isinstance(member, nn.Module):
                    raise TypeError(f"the factory must return a torch.nn.Module; got {type(member).__name__}")
            else:
                raise TypeError(f"net must be a torch.nn.Module or a factory; got {type(net).__name__}")
            members.append(member if isinstance(member, BNN) else PointNetwork(member, likelihood))
    finally:
        torch.random.set_rng_state(state)
    return Ensemble(members)
