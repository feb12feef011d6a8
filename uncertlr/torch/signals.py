"""Uncertainty signals for the LR modulator, computed from outputs the training step already has.

Every signal is a 0-d tensor without gradient, computed on the device with no host sync, so
feeding it to :meth:`uncertlr.torch.Modulator.observe` every step costs a few kernels:

* :func:`batch_entropy` — mean predictive entropy of the batch (a deterministic net's softmax
  entropy, or the BNN's model average over the ELBO's weight draws);
* :func:`batch_mutual_information` — the epistemic part (needs ``K >= 2`` draws);
* :func:`confidence_weighted_nll` — a loss with per-sample weights from per-sample entropy;
* :func:`batch_predictive_variance`, :func:`batch_epistemic_variance`,
  :func:`batch_aleatoric_variance` — for regression (a Normal likelihood, whose outputs are
  the means): the batch's predictive variance and its two parts (law of total variance,
  as :func:`uncertlr.metrics.predictive_variance`), from the ELBO's own particle outputs and
  the likelihood's noise;
* :func:`elbo_signal` — the right signal for a BNN's ``elbo`` terms, chosen by its likelihood
  (entropy and mutual information refuse a regression BNN with a named error).

Entropy and mutual information need logits ``[..., C]`` with ``C >= 2``: a single output column
(a regression mean) is refused, since its "entropy" would be 0 and, with ``κ < 0``, a rule
would pin its factor at the maximum.

Example:
    >>> import torch
    >>> from uncertlr.torch import bayesian, batch_entropy
    >>> bnn = bayesian(torch.nn.Linear(4, 3), num_data=100)
    >>> terms = bnn.elbo(torch.randn(8, 4), torch.randint(0, 3, (8,)), num_particles=2)
    >>> 0.0 <= float(batch_entropy(terms.outputs)) <= float(torch.log(torch.tensor(3.0)))
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from uncertlr import likelihoods as _lik
from uncertlr import metrics
from uncertlr.likelihoods import check_labels
from uncertlr.modulation import confidence_weights
from uncertlr.torch import _native
from uncertlr.torch.bnn import BNN

__all__ = [
    "CLASSIFICATION_SIGNALS",
    "REGRESSION_SIGNALS",
    "batch_aleatoric_variance",
    "batch_entropy",
    "batch_epistemic_variance",
    "batch_mutual_information",
    "batch_predictive_variance",
    "confidence_weighted_nll",
    "elbo_signal",
]

#: Signal names :func:`elbo_signal` accepts for a classifier / a regressor.
CLASSIFICATION_SIGNALS = ("entropy", "mutual_information")
REGRESSION_SIGNALS = ("predictive_variance", "epistemic_variance", "aleatoric_variance")


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
    if logits.shape[-1] < 2:
        raise ValueError(
            f"logits must have at least 2 classes on their last axis; got shape {tuple(logits.shape)}. "
            "One output per example is a regression mean (Normal likelihood), whose entropy is 0: "
            "use batch_predictive_variance / batch_epistemic_variance / batch_aleatoric_variance"
        )


_NATIVE_DTYPES = (torch.float32, torch.float64)


def _native_entropy(logits: Tensor) -> Tensor | None:
    """:func:`batch_entropy` of one draw's CPU logits in one compiled call (``uncertlr.torch._native``), or
    ``None`` where it does not apply (no kernels, not contiguous, tracing, a logit that is not finite)."""
    if torch.compiler.is_compiling() or not logits.is_contiguous():
        return None
    kern = _native.kernels()
    if kern is None:
        return None
    out = torch.empty((), dtype=logits.dtype)
    return out if kern.entropy(logits, out) else None


def batch_entropy(logits: Tensor) -> Tensor:
    """Mean predictive entropy of a batch (nats, 0-d, no gradient, no host sync).

    On a CPU, one draw's float32/float64 logits are reduced in one compiled call, accumulated in
    double (where the compiled kernels are available: ``uncertlr.torch._native``); elsewhere, and
    for logits that hold NaN or inf, by the same formula in torch ops.

    Args:
        logits: ``[B, C]`` from a deterministic net (softmax entropy) or ``[K, B, C]`` for
            ``K`` weight draws, e.g. ``bnn.elbo(x, y).outputs`` — no second forward pass.

    Example:
        >>> import torch
        >>> round(float(batch_entropy(torch.zeros(5, 4))), 4) == round(float(torch.log(torch.tensor(4.0))), 4)
        True
    """
    _check_logits(logits)
    if logits.dtype in _NATIVE_DTYPES and logits.is_cpu and (logits.dim() == 2 or logits.shape[0] == 1):
        out = _native_entropy(logits)
        if out is not None:
            return out
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


# --------------------------------------------------------------------------- regression signals


def _check_means(outputs: Tensor, name: str = "outputs") -> Tensor:
    """``outputs[K, B, ...]``: a non-empty floating-point tensor of K draws' means (detached)."""
    if not isinstance(outputs, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [K, B, ...]; got {type(outputs).__name__}")
    if outputs.dim() < 2 or outputs.numel() == 0:
        raise ValueError(
            f"{name} must have shape [K, B, ...] (K weight draws first; a deterministic net's "
            f"outputs as out[None]), none of them empty; got shape {tuple(outputs.shape)}"
        )
    if not outputs.dtype.is_floating_point:
        raise TypeError(f"{name} must be floating point; got dtype {outputs.dtype}")
    return outputs.detach()


def _noise_variance(noise: BNN | Tensor | float, outputs: Tensor) -> Tensor:
    """The likelihood's noise variance, broadcast to one draw's outputs ``[B, ...]``."""
    if isinstance(noise, BNN):
        if not isinstance(noise.likelihood, _lik.Normal):
            raise ValueError(
                "this BNN has a Categorical likelihood: a predictive variance needs a Normal "
                "likelihood (use batch_entropy / batch_mutual_information for a classifier)"
            )
        noise = noise.likelihood_module.noise_scale
    if isinstance(noise, bool) or not isinstance(noise, (Tensor, int, float)):
        raise TypeError(
            f"noise must be the noise std (a number or a tensor) or the BNN; got {type(noise).__name__}"
        )
    if isinstance(noise, Tensor):
        sd = noise.detach().to(device=outputs.device, dtype=outputs.dtype)
    else:
        sd = torch.tensor(float(noise), device=outputs.device, dtype=outputs.dtype)
    one = outputs[0]
    try:
        var = torch.broadcast_to(sd * sd, one.shape)
    except RuntimeError as exc:
        raise ValueError(
            f"noise of shape {tuple(sd.shape)} does not broadcast to one draw's outputs {tuple(one.shape)}"
        ) from exc
    return var


def batch_epistemic_variance(outputs: Tensor) -> Tensor:
    """Mean over the batch of the variance of the predicted means across weight draws (0-d).

    Args:
        outputs: ``[K, B, ...]`` means of ``K`` weight draws, e.g. ``bnn.elbo(x, y,
            num_particles=K).outputs`` of a Normal-likelihood BNN (0 for ``K = 1``).

    Example:
        >>> import torch
        >>> float(batch_epistemic_variance(torch.tensor([[0.0, 1.0], [2.0, 1.0]])))   # [K=2, B=2]
        0.5
    """
    out = _check_means(outputs)
    return out.var(0, correction=0).mean()


def batch_aleatoric_variance(outputs: Tensor, noise: BNN | Tensor | float) -> Tensor:
    """Mean over the batch of the likelihood's noise variance (0-d).

    Args:
        outputs: ``[K, B, ...]`` means (only their shape, dtype and device are used).
        noise: the noise std — a number, a tensor broadcastable to ``[B, ...]`` (heteroscedastic
            noise), or the Normal-likelihood :class:`~uncertlr.torch.BNN` (its learned noise).

    Example:
        >>> import torch
        >>> float(batch_aleatoric_variance(torch.zeros(1, 4), 0.5))
        0.25
    """
    out = _check_means(outputs)
    return _noise_variance(noise, out).mean()


def batch_predictive_variance(outputs: Tensor, noise: BNN | Tensor | float) -> Tensor:
    """Mean over the batch of the predictive variance: noise variance + variance of the means (0-d).

    The law of total variance, as :func:`uncertlr.metrics.predictive_variance` computes it per
    example (``total = aleatoric + epistemic``), averaged over the batch and output dimensions.

    Args:
        outputs: ``[K, B, ...]`` means of ``K`` weight draws (``bnn.elbo(x, y).outputs``).
        noise: the noise std (number, tensor broadcastable to ``[B, ...]``) or the BNN.

    Example:
        >>> import torch
        >>> from uncertlr import likelihoods
        >>> from uncertlr.torch import bayesian, batch_predictive_variance
        >>> bnn = bayesian(torch.nn.Linear(3, 1), num_data=50, likelihood=likelihoods.Normal())
        >>> terms = bnn.elbo(torch.randn(8, 3), torch.randn(8, 1), num_particles=4)
        >>> float(batch_predictive_variance(terms.outputs, bnn)) > 0
        True
    """
    out = _check_means(outputs)
    return _noise_variance(noise, out).mean() + out.var(0, correction=0).mean()


def elbo_signal(bnn: BNN, kind: str = "auto") -> Callable[[Any], Tensor]:
    """A function ``terms -> 0-d signal`` for ``bnn.elbo(...)`` terms, chosen by the BNN's likelihood.

    Args:
        bnn: the BNN whose ``elbo`` terms will be passed.
        kind: ``"auto"`` (batch entropy for a classifier, predictive variance for a regressor),
            one of :data:`CLASSIFICATION_SIGNALS` (Categorical likelihood only) or
            :data:`REGRESSION_SIGNALS` (Normal likelihood only).

    Raises:
        ValueError: an entropy / mutual-information signal for a regression BNN, a variance
            signal for a classifier, or an unknown ``kind``.

    Example:
        >>> import torch
        >>> from uncertlr import likelihoods
        >>> from uncertlr.torch import bayesian, elbo_signal
        >>> bnn = bayesian(torch.nn.Linear(3, 1), num_data=50, likelihood=likelihoods.Normal())
        >>> signal = elbo_signal(bnn)                       # predictive variance
        >>> float(signal(bnn.elbo(torch.randn(8, 3), torch.randn(8, 1)))) > 0
        True
        >>> elbo_signal(bnn, "entropy")
        Traceback (most recent call last):
        ...
        ValueError: signal 'entropy' needs a classifier (Categorical likelihood); this BNN is a regressor (Normal likelihood): use one of ('predictive_variance', 'epistemic_variance', 'aleatoric_variance')
    """
    if not isinstance(bnn, BNN):
        raise TypeError(f"bnn must be an uncertlr.torch.BNN; got {type(bnn).__name__}")
    regression = isinstance(bnn.likelihood, _lik.Normal)
    if kind == "auto":
        kind = "predictive_variance" if regression else "entropy"
    if kind not in CLASSIFICATION_SIGNALS + REGRESSION_SIGNALS:
        raise ValueError(
            f"kind must be 'auto' or one of {CLASSIFICATION_SIGNALS + REGRESSION_SIGNALS}; got {kind!r}"
        )
    if regression and kind in CLASSIFICATION_SIGNALS:
        raise ValueError(
            f"signal {kind!r} needs a classifier (Categorical likelihood); this BNN is a regressor "
            f"(Normal likelihood): use one of {REGRESSION_SIGNALS}"
        )
    if not regression and kind in REGRESSION_SIGNALS:
        raise ValueError(
            f"signal {kind!r} needs a regressor (Normal likelihood); this BNN is a classifier: "
            f"use one of {CLASSIFICATION_SIGNALS}"
        )
    fns: dict[str, Callable[[Any], Tensor]] = {
        "entropy": lambda t: batch_entropy(t.outputs),
        "mutual_information": lambda t: batch_mutual_information(t.outputs),
        "predictive_variance": lambda t: batch_predictive_variance(t.outputs, bnn),
        "epistemic_variance": lambda t: batch_epistemic_variance(t.outputs),
        "aleatoric_variance": lambda t: batch_aleatoric_variance(t.outputs, bnn),
    }
    return fns[kind]
