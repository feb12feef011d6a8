"""What a BNN says when its numbers go wrong: bad data (a ``ValueError``) or a diverging optimizer (skipped).

A non-finite ELBO has two very different causes. **Bad data** — inputs so large that the
network overflows on them, regression targets whose square overflows — is the caller's to
fix, so :meth:`BNN.elbo <uncertlr.torch.BNN.elbo>` raises a ``ValueError`` saying so (NaN and
inf in the data are refused before any forward pass). **A diverging optimizer** — posterior
means or scales grown so large that the outputs or the KL overflow on ordinary inputs — is
what :class:`~uncertlr.torch.StepGuard` exists for: the non-finite loss is returned, the step
is skipped and counted, and after ``max_consecutive_skips`` in a row training stops with a
diagnosis. The two are told apart on the data: the same inputs scaled to ``|x| ≤ 1`` are run
through the posterior-mean network; if that is finite, the inputs' magnitude is to blame.

:func:`warn_if_probabilities` warns once per BNN when a classifier's outputs already are
probabilities (a network ending in softmax): the categorical likelihood expects logits.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from uncertlr import likelihoods as _lik
from uncertlr.torch import _checks

__all__ = ["check_predicted", "check_tensor", "nonfinite_cause", "warn_if_probabilities"]


def check_tensor(bnn: Any, x: Tensor, name: str) -> None:
    """One tensor of a batch: on the BNN's device, a batch axis first, its dtype, and (``validate``) finite."""
    ref = bnn.posterior.loc
    if x.device != ref.device:
        raise ValueError(
            f"{name} is on {x.device} but the BNN's parameters are on {ref.device}; move one with .to()"
        )
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"{name} must have a non-empty batch axis first; got shape {tuple(x.shape)}")
    if x.dtype.is_floating_point:
        if x.dtype != ref.dtype:
            raise TypeError(
                f"{name} has dtype {x.dtype} but the BNN's parameters are {ref.dtype}; cast it (.to({ref.dtype}))"
            )
        if not bnn.validate:
            return
        if not bnn._host_checks():
            _checks.assert_finite(x, f"{name} contains NaN or inf")
        # one reduction; the elementwise check runs only if the sum is not finite (NaN/inf, or overflow)
        elif not torch.isfinite(x.sum()) and not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or inf")


def _finite(t: Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def _largest(t: Tensor) -> float:
    return float(t.detach().abs().max().double()) if t.numel() else 0.0


def _input_overflow(bnn: Any, x: Any, y: Tensor | None, what: str) -> str | None:
    """A message when the network overflows on ``x`` but not on ``x`` scaled to ``|x| <= 1``; else None.

    With targets ``y`` the likelihood of the scaled inputs' outputs must be finite too (huge but
    finite logits overflow the likelihood, not the outputs).
    """
    if bnn.adapter.inputs is not None or not x.dtype.is_floating_point:
        return None  # a structured batch: which of its tensors to scale is not known
    big = _largest(x)
    if not big > 1.0:
        return None
    post = bnn.posterior
    with torch.no_grad(), bnn._eval_mode():
        scaled = bnn._call(post.unflatten(post.loc.detach()), x / big)
        if not _finite(scaled) or (y is not None and not _finite(bnn.likelihood_module.nll(scaled[None], y))):
            return None
    return (
        f"{what} is not finite: the network overflows on these inputs (largest |x| = {big:.3g}) "
        "but not on the same inputs scaled to |x| <= 1; standardise the inputs"
    )


def nonfinite_cause(bnn: Any, x: Any, y: Tensor, outputs: Tensor, kl: Tensor) -> str | None:
    """Why an ELBO is not finite, when the data are to blame (checked on the data); None when the model diverged."""
    post = bnn.posterior
    if not (_finite(post.loc) and _finite(post.log_scale)):
        return None  # NaN/inf parameters: an optimizer step that StepGuard would have skipped
    if y.dtype.is_floating_point and _largest(y) ** 2 > torch.finfo(y.dtype).max / 1e3:
        return (
            f"the ELBO is not finite: the targets are too large for {y.dtype} arithmetic "
            f"(largest |y| = {_largest(y):.3g}; their square overflows); standardise the targets"
        )
    if _finite(outputs) and not _finite(kl):
        return None  # the posterior's means or scales overflow the KL: it diverged
    return _input_overflow(bnn, x, y, "the ELBO")


def check_predicted(bnn: Any, x: Tensor, out: Tensor) -> None:
    """Outputs ``[S, N, ...]`` must keep x's batch axis (``[S, N, C]`` logits for a classifier) and be finite."""
    categorical = isinstance(bnn.likelihood, _lik.Categorical)
    if out.dim() < 2 or out.shape[1] != x.shape[0] or (categorical and out.dim() != 3):
        want = "[N, C] (logits)" if categorical else "[N, ...]"
        raise ValueError(
            f"the network's outputs for x of shape {tuple(x.shape)} have shape {tuple(out.shape[1:])}; "
            f"predict needs {want} with N = {x.shape[0]} (is x missing its batch or feature axis?)"
        )
    if not bnn._host_checks(done=True):  # see uncertlr.torch._checks
        _checks.assert_finite(out, "the network's outputs are not finite (overflow); standardise the inputs")
        return
    if not _finite(out):
        raise ValueError(
            _input_overflow(bnn, x, None, "the prediction")
            or (
                f"the network's outputs are not finite under the posterior draws, on inputs of moderate size "
                f"(largest |x| = {_largest(x):.3g}): the posterior's means or scales are extreme (did training diverge?)"
            )
        )
    warn_if_probabilities(bnn, out)


def warn_if_probabilities(bnn: Any, outputs: Tensor) -> None:
    """Warn (once per BNN) when a classifier's outputs ``[K, B, C]`` already are probabilities."""
    if (
        getattr(bnn, "_outputs_checked", False)
        or not isinstance(bnn.likelihood, _lik.Categorical)
        or torch.compiler.is_compiling()
    ):
        return
    bnn._outputs_checked = True
    o = outputs[0].detach()
    if o.dim() != 2 or o.shape[-1] < 2 or not o.dtype.is_floating_point:
        return
    if bool((o >= 0).all() and (o <= 1).all()) and bool(
        torch.allclose(o.sum(-1), torch.ones_like(o[:, 0]), atol=1e-3)
    ):
        warnings.warn(
            "the network's outputs look like probabilities (in [0, 1], each row summing to 1): a categorical "
            "BNN takes logits, so a final softmax is applied twice and predictions come out nearly uniform "
            "and badly calibrated; remove the network's last softmax (a log_softmax is fine)",
            UserWarning,
            stacklevel=4,
        )
