"""MC dropout (Gal & Ghahramani, 2016): dropout kept on at prediction time, behind one ``predict``.

:func:`mc_dropout` wraps a copy of your network (the original is untouched). With ``p=None``
it uses the network's own ``nn.Dropout`` layers; with ``p`` it adds dropout (rate ``p``) to the
input of every ``Linear``/``Conv`` layer after the first (chosen by ``select=`` when given),
through forward pre-hooks, so no layer of your network is replaced. Train it as a
deterministic network with dropout on (``model.elbo(x, y)`` / ``model.loss(x, y)``; weight decay
through your optimizer plays the role of the prior).

``model.predict(x, num_samples=S)`` evaluates ``S`` dropout masks in one batched forward pass
(``x`` repeated ``S`` times, chunked to a memory budget) with every other layer in eval mode
(BatchNorm uses its running statistics) and returns ``[S, N, C]`` probabilities or a
:class:`~uncertlr.likelihoods.NormalPrediction`.

Example:
    >>> import torch
    >>> from uncertlr.torch import mc_dropout
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    >>> model = mc_dropout(net, p=0.2)
    >>> model.loss(torch.randn(8, 4), torch.randint(0, 3, (8,))).backward()
    >>> tuple(model.predict(torch.randn(5, 4), num_samples=10).shape)
    (10, 5, 3)
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uncertlr import likelihoods as _lik
from uncertlr._spec import ELBOTerms, positive_int
from uncertlr.likelihoods import NormalPrediction
from uncertlr.select import Predicate, Selector, as_selector
from uncertlr.torch.ensemble import PointNetwork

__all__ = ["MCDropout", "mc_dropout"]

#: Upper bound on ``num_samples * N`` rows evaluated at once by ``predict``.
PREDICT_CHUNK_ROWS = 2**15
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class MCDropout(PointNetwork):
    """A network whose dropout stays on when predicting; create it with :func:`mc_dropout`.

    Attributes:
        p: the added dropout rate (``None`` when the network's own dropout layers are used).
        dropped: names of the layers whose input is dropped (added dropout only).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        p: float | None,
        select: Predicate | Selector | None,
        likelihood: _lik.Categorical | _lik.Normal | str,
    ):
        super().__init__(copy.deepcopy(net), likelihood)
        self.p = p
        self.dropped: list[str] = []
        self._sampling = False
        if p is None:
            if select is not None:
                raise ValueError("select= chooses where to add dropout; it needs p=")
            if not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in self.net.modules()):
                raise ValueError(
                    f"{type(net).__name__} has no dropout layer; pass p= to add dropout before its Linear/Conv layers"
                )
            return
        if not (isinstance(p, (int, float)) and not isinstance(p, bool) and 0.0 < p < 1.0):
            raise ValueError(f"p must be a dropout rate in (0, 1); got {p!r}")
        layers = [(n, m) for n, m in self.net.named_modules() if isinstance(m, _LAYERS)]
        if select is None:
            chosen = layers[1:]
        else:
            names = [f"{n}.weight" for n, _ in layers]
            bound = as_selector(select).bind(names)
            chosen = [(n, m) for n, m in layers if bound(f"{n}.weight", m)]
        if not chosen:
            raise ValueError(
                "no layer to add dropout to: the network has a single Linear/Conv layer (or select= chose none); "
                "MC dropout needs dropout on a hidden representation"
            )
        for n, m in chosen:
            m.register_forward_pre_hook(self._hook)
            self.dropped.append(n)

    def _hook(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        if not (self.training or self._sampling):
            return args
        return (F.dropout(args[0], self.p, training=True), *args[1:])  # type: ignore[arg-type]

    @contextlib.contextmanager
    def _sampling_mode(self) -> Iterator[None]:
        """Eval mode everywhere except the dropout (own layers in train mode, or added dropout on)."""
        was = self.training
        self.eval()
        self._sampling = True
        for m in self.net.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.train()
        try:
            yield
        finally:
            self._sampling = False
            self.train(was)

    def elbo(self, x: Tensor, y: Tensor, *, num_particles: int = 1) -> ELBOTerms:
        """The NLL of one dropout mask per input (``num_particles`` masks: outputs ``[K, B, ...]``)."""
        k = positive_int("num_particles", num_particles)
        if k == 1:
            return super().elbo(x, y)
        out = self.net(x.repeat(k, *([1] * (x.dim() - 1))))
        out = out.view(k, x.shape[0], *out.shape[1:])
        self.likelihood_module.check(out[0], y)
        nll = self.likelihood_module.nll(out, y)
        return ELBOTerms(nll, nll, torch.zeros((), dtype=nll.dtype, device=nll.device), out)

    @torch.no_grad()
    def predict(self, x: Tensor, *, num_samples: int = 32) -> Tensor | NormalPrediction:  # type: ignore[override]
        """``num_samples`` dropout masks: ``[S, N, C]`` probabilities or a ``NormalPrediction`` ``[S, N, ...]``."""
        num_samples = positive_int("num_samples", num_samples)
        if not isinstance(x, Tensor) or x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(
                f"x must be a tensor with a non-empty batch axis first; got {getattr(x, 'shape', x)!r}"
            )
        per = max(1, min(num_samples, PREDICT_CHUNK_ROWS // x.shape[0]))
        outs = []
        with self._sampling_mode():
            for start in range(0, num_samples, per):
                k = min(per, num_samples - start)
                out = self.net(x.repeat(k, *([1] * (x.dim() - 1))))
                outs.append(out.view(k, x.shape[0], *out.shape[1:]))
        return self.outputs_to_prediction(torch.cat(outs))

    def parameter_scale(self) -> dict[Tensor, Tensor]:
        """``{weight: σ}`` of the dropout posterior for the LR modulator's ``sigma=`` (added dropout only).

        Inverted dropout of a layer's input multiplies each weight by ``z/(1-p)``,
        ``z ~ Bernoulli(1-p)``: its std is ``|w| sqrt(p / (1-p))``.
        """
        if self.p is None:
            raise ValueError(
                "parameter_scale() needs dropout added with p= (which weights the network's own "
                "dropout layers act on is not known)"
            )
        c = math.sqrt(self.p / (1 - self.p))
        mods = dict(self.net.named_modules())
        return {mods[n].weight: mods[n].weight.detach().abs() * c for n in self.dropped}  # type: ignore[union-attr]


def mc_dropout(
    net: nn.Module,
    *,
    p: float | None = 0.1,
    select: Predicate | Selector | None = None,
    likelihood: _lik.Categorical | _lik.Normal | str = "categorical",
) -> MCDropout:
    """MC dropout around a copy of ``net``.

    Args:
        net: the network (deep-copied).
        p: dropout rate added to the input of every Linear/Conv layer after the first (or
            those ``select`` chooses, by ``"<layer>.weight"`` names); ``None`` uses the
            network's own dropout layers instead.
        select: which layers get the added dropout (a :mod:`uncertlr.select` predicate).
        likelihood: ``"categorical"`` or ``"normal"``/``likelihoods.Normal()`` (learned noise).
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module; got {type(net).__name__}")
    return MCDropout(net, p=p, select=select, likelihood=likelihood)
