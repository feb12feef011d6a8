"""Uncertainty signals for the LR modulator, computed from outputs the training step already has.

Every signal is a 0-d tensor without gradient, computed on the device with no host sync, so
feeding it to :meth:`uncertlr.torch.Modulator.observe` every step costs a few kernels:

* :func:`batch_entropy` — mean predictive entropy of the batch (a deterministic net's softmax
  entropy, or the BNN's model average over the ELBO's weight draws);
* :func:`batch_mutual_information` — the epistemic part (needs ``K >= 2`` draws);
* :func:`confidence_weighted_nll` — a loss with per-sample weights from per-sample entropy.

Example:
    >>> import torch
    >>> from uncertlr.torch import bayesian, batch_entropy
    >>> bnn = bayesian(torch.nn.Linear(4, 3), num_data=100)
    >>> terms = bnn.elbo(torch.randn(8, 4), torch.randint(0, 3, (8,)), num_particles=2)
    >>> 0.0 <= float(batch_entropy(terms.outputs)) <= float(torch.log(torch.tensor(3.0)))
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from uncertlr import metrics
from uncertlr.likelihoods import check_labels
from uncertlr.modulation import confidence_weights

__all__ = ["batch_entropy", "batch_mutual_information", "confidence_weighted_nll"]


def _probs(logits: Tensor) -> Tensor:
    """Softmax of ``logits[B, C]`` or ``[K, B, C]`` after shape and dtype checks (no host sync)."""
    _check_logits(logits)
    return torch.softmax(logits.detach(), dim=-1)


def _check_logits(logits: Tensor) -> None:
    """``logits`` must be a non-empty floating-point tensor ``[B, C]`` or ``[K, B, C]`` (no host sync)."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor [B, C] or [K, B, C]; got {type(logits).__name__}")
    if logits.dim() not in (2, 3) or logits.numel() == 0:
        raise ValueError(
            f"logits must have shape [B, C] or [K, B, C] (K weight draws), none of them empty; "
            f"got shape {tuple(logits.shape)}"
        )
    if not logits.dtype.is_floating_point:
        raise TypeError(f"logits must be floating point; got dtype {logits.dtype}")


def batch_entropy(logits: Tensor) -> Tensor:
    """Mean predictive entropy of a batch (nats, 0-d, no gradient, no host sync).

    Args:
        logits: ``[B, C]`` from a deterministic net (softmax entropy) or ``[K, B, C]`` for
            ``K`` weight draws, e.g. ``bnn.elbo(x, y).outputs`` — no second forward pass.

    Example:
        >>> import torch
        >>> round(float(batch_entropy(torch.zeros(5, 4))), 4) == round(float(torch.log(torch.tensor(4.0))), 4)
        True
    """
    _check_logits(logits)
    lg = logits.detach()
    if lg.dim() == 3 and lg.shape[0] == 1:
        lg = lg[0]
    if lg.dim() == 2:  # one draw: -sum p log p straight from log_softmax (fewest ops, no log(0))
        logp = torch.log_softmax(lg, dim=-1).reshape(-1)
        # mean over the batch of -sum_c p log p = -<p, log p> / B over the flattened batch: one
        # fused dot product instead of multiply, row sums and mean (this runs every step)
        return torch.dot(logp.exp(), logp) * (-1.0 / lg.shape[0])
    pbar = torch.softmax(lg, dim=-1).mean(0)
    return -(pbar * pbar.clamp_min(torch.finfo(pbar.dtype).tiny).log()).sum(-1).mean()


def batch_mutual_information(logits: Tensor) -> Tensor:
    """Mean mutual information (epistemic uncertainty) of a batch from ``logits[K, B, C]`` (0-d).

    Needs ``K >= 2`` weight draws (``bnn.elbo(x, y, num_particles=K)``); it is 0 for ``K = 1``.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[[5.0, 0.0]], [[0.0, 5.0]]])   # two draws that disagree
        >>> float(batch_mutual_information(logits)) > 0.5
        True
    """
    return metrics.mutual_information(_probs(logits), validate=False).mean()


def confidence_weighted_nll(
    logits: Tensor, labels: Tensor, *, validate: bool = True, **weights: float
) -> Tensor:
    """Cross-entropy with per-sample weights from the per-sample predictive entropy (mean weight 1).

    The weights come from :func:`uncertlr.modulation.confidence_weights` (keywords ``kappa``,
    ``w_min``, ``w_max`` are passed on) and carry no gradient. For a BNN, use the ELBO's
    outputs and add the KL term yourself::

        terms = bnn.elbo(x, y)
        loss = confidence_weighted_nll(terms.outputs, y) + bnn.kl_weight * terms.kl / bnn.num_data

    Args:
        logits: ``[B, C]`` or ``[K, B, C]`` (the NLL is averaged over the ``K`` draws).
        labels: ``[B]`` integer class indices.
        validate: check that the labels lie in ``[0, C)`` (one host sync); shapes and dtypes
            are always checked.

    Example:
        >>> import torch
        >>> logits, y = torch.randn(6, 3, requires_grad=True), torch.tensor([0, 1, 2, 0, 1, 2])
        >>> loss = confidence_weighted_nll(logits, y, kappa=-0.5)
        >>> loss.backward(); tuple(logits.grad.shape)
        (6, 3)
    """
    p = _probs(logits)
    lg = logits if logits.dim() == 3 else logits.unsqueeze(0)
    k, b, c = lg.shape
    check_labels(labels, b, c, values=validate)
    nll = F.cross_entropy(lg.reshape(k * b, c), labels.long().repeat(k), reduction="none").view(k, b).mean(0)
    w = confidence_weights(metrics.predictive_entropy(p, validate=False), validate=False, **weights)
    return (w.detach() * nll).mean()
