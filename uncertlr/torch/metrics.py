"""Stateful, accumulating versions of uncertlr's selective-prediction and OOD metrics (``torchmetrics``).

Each class subclasses ``torchmetrics.Metric``: call it (or ``update``) on every batch, ``compute``
at the end of an epoch, ``reset`` between epochs — or hand it to Lightning's ``self.log``. Scores
are accumulated across batches (and gathered across processes with ``dist_reduce_fx="cat"``)
and the number is computed once by :mod:`uncertlr.metrics` on the whole epoch, so it equals the
whole-array function exactly. Needs the optional extra ``lightning`` (which brings
``torchmetrics``); ``import uncertlr.torch`` does not import this module.

Inputs of ``update``: ``preds`` are probabilities ``[S, N, C]`` (a BNN's ``predict``) or
``[N, C]`` (a deterministic net), scored by ``uncertainty`` (``"max_probability"``:
``1 - max_c p̄``, ``"entropy"``: predictive entropy, ``"mutual_information"``); or ready-made
scores ``[N]`` (higher = more uncertain).

Example:
    >>> import torch
    >>> from uncertlr.torch.metrics import AURC, FPRAtTPR
    >>> aurc, fpr = AURC(), FPRAtTPR(uncertainty="entropy")
    >>> for _ in range(3):
    ...     probs = torch.softmax(torch.randn(8, 16, 4), -1)              # [S, N, C] from bnn.predict
    ...     aurc.update(probs, torch.randint(0, 4, (16,)))
    ...     fpr.update(probs, torch.arange(16) % 2 == 0)                 # which inputs are OOD
    >>> 0.0 <= float(aurc.compute()) <= 1.0, 0.0 <= float(fpr.compute()) <= 1.0
    (True, True)
"""

from __future__ import annotations

from typing import Any

try:
    from torchmetrics import Metric
    from torchmetrics.utilities import dim_zero_cat
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "uncertlr.torch.metrics needs torchmetrics: pip install 'uncertlr[lightning]' (or torchmetrics>=1.4)"
    ) from exc
import torch
from torch import Tensor

from uncertlr import metrics as _m

__all__ = ["AUPRIn", "AUPROut", "AURC", "EAURC", "FPRAtTPR", "OODAUROC"]

_SCORES = ("max_probability", "entropy", "mutual_information")


def _score(preds: Tensor, uncertainty: str) -> Tensor:
    """``[N]`` uncertainty scores of ``preds`` (``[S, N, C]`` / ``[N, C]`` probabilities, or ``[N]`` scores)."""
    if not isinstance(preds, Tensor):
        raise TypeError(f"preds must be a torch.Tensor; got {type(preds).__name__}")
    if preds.dim() == 1:
        return preds.detach()
    if uncertainty == "max_probability":
        return 1 - _m.mean_probs(preds.detach()).max(-1).values
    if uncertainty == "entropy":
        return _m.predictive_entropy(preds.detach())
    return _m.mutual_information(preds.detach())


class _UncertaintyMetric(Metric):
    is_differentiable = False
    full_state_update = False

    def __init__(self, *, uncertainty: str = "max_probability", **kwargs: Any):
        super().__init__(**kwargs)
        if uncertainty not in _SCORES:
            raise ValueError(f"uncertainty must be one of {_SCORES}; got {uncertainty!r}")
        self.uncertainty = uncertainty
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("flags", default=[], dist_reduce_fx="cat")

    def _gathered(self) -> tuple[Tensor, Tensor]:
        if not self.scores:
            raise ValueError(f"{type(self).__name__}.compute() before any update()")
        return dim_zero_cat(self.scores), dim_zero_cat(self.flags)


class AURC(_UncertaintyMetric):
    """Area under the risk-coverage curve (:func:`uncertlr.metrics.aurc`); ``update(preds, labels)``."""

    higher_is_better = False

    def update(self, preds: Tensor, labels: Tensor) -> None:
        if preds.dim() < 2:
            raise ValueError(
                f"{type(self).__name__} needs probabilities [S, N, C] or [N, C]; got shape {tuple(preds.shape)}"
            )
        self.flags.append(_m.mean_probs(preds.detach()).argmax(-1) == labels)
        self.scores.append(_score(preds, self.uncertainty))

    def compute(self) -> Tensor:
        return _m.aurc(*self._gathered())


class EAURC(AURC):
    """Excess AURC (:func:`uncertlr.metrics.eaurc`); ``update(preds, labels)``."""

    def compute(self) -> Tensor:
        return _m.eaurc(*self._gathered())


class _OODMetric(_UncertaintyMetric):
    def update(self, preds: Tensor, is_ood: Tensor) -> None:
        """``preds`` for a batch of inputs and ``is_ood[N]`` (bool): which of them are out of distribution."""
        if not isinstance(is_ood, Tensor) or is_ood.dtype != torch.bool:
            raise TypeError("is_ood must be a boolean tensor [N] (True for out-of-distribution inputs)")
        self.scores.append(_score(preds, self.uncertainty))
        self.flags.append(is_ood)

    def _split(self) -> tuple[Tensor, Tensor]:
        scores, ood = self._gathered()
        return scores[~ood], scores[ood]


class OODAUROC(_OODMetric):
    """AUROC of telling OOD inputs apart by their uncertainty (:func:`uncertlr.metrics.ood_auroc`)."""

    higher_is_better = True

    def compute(self) -> Tensor:
        return _m.ood_auroc(*self._split())


class FPRAtTPR(_OODMetric):
    """False-positive rate at ``tpr`` true-positive rate (FPR@95%TPR; :func:`uncertlr.metrics.fpr_at_tpr`)."""

    higher_is_better = False

    def __init__(self, tpr: float = 0.95, **kwargs: Any):
        super().__init__(**kwargs)
        self.tpr = tpr

    def compute(self) -> Tensor:
        return _m.fpr_at_tpr(*self._split(), tpr=self.tpr)


class AUPRIn(_OODMetric):
    """AUPR with in-distribution inputs as positives (:func:`uncertlr.metrics.aupr_in`)."""

    higher_is_better = True

    def compute(self) -> Tensor:
        return _m.aupr_in(*self._split())


class AUPROut(_OODMetric):
    """AUPR with out-of-distribution inputs as positives (:func:`uncertlr.metrics.aupr_out`)."""

    higher_is_better = True

    def compute(self) -> Tensor:
        return _m.aupr_out(*self._split())
