"""The PyTorch backend: Bayesian networks built with Pyro from any ``torch.nn.Module``.

* :func:`bayesian` / :class:`BNN` — the Bayesian network (``bnn.elbo``, ``bnn.loss``,
  ``bnn.predict``, ``bnn.posterior_scale``, Pyro ``bnn.model``/``bnn.guide``);
* :func:`batch_entropy`, :func:`batch_mutual_information`, :func:`confidence_weighted_nll`,
  :func:`batch_predictive_variance` (and its epistemic / aleatoric parts), :func:`elbo_signal` —
  uncertainty signals from the outputs the step already has;
* :func:`deep_ensemble` / :class:`Ensemble`, :func:`mc_dropout` / :class:`MCDropout`,
  :class:`LastLayerLaplace` — more posteriors behind the same ``predict(x, num_samples)``
  (``bayesian(guide="lowrank" | "full")`` for correlated variational posteriors);
* :class:`FeatureDensity` — an out-of-distribution score from a trained network's features;
  :class:`DensityTemperature` — predictions softened per input by it (for inputs that drift);
* :class:`Modulator` — the LR modulator for any ``torch.optim`` optimizer;
* :func:`fit` / :class:`StepGuard` — a small explicit loop and its numerical guard;
* :func:`save_checkpoint` / :func:`load_checkpoint` — resumable, pickle-free checkpoints;
* :mod:`uncertlr.torch.distributed` — ``torchrun`` data parallelism.

Example:
    >>> import torch
    >>> from uncertlr.torch import bayesian
    >>> bnn = bayesian(torch.nn.Linear(4, 3), num_data=100)
    >>> tuple(bnn.predict(torch.randn(2, 4), num_samples=5).shape)
    (5, 2, 3)
"""

try:
    import pyro  # noqa: F401
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the core dependencies
    raise ImportError(
        "uncertlr.torch needs torch and pyro-ppl: pip install 'torch==2.13.0' pyro-ppl "
        "(install torch first to keep its CPU build)"
    ) from exc

from uncertlr.torch._allocator import keep_freed_memory
from uncertlr.torch.bnn import BNN, ELBOTerms, NormalPrediction, bayesian
from uncertlr.torch.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from uncertlr.torch.density import DensityTemperature, FeatureDensity
from uncertlr.torch.dropout import MCDropout, mc_dropout
from uncertlr.torch.ensemble import Ensemble, PointNetwork, deep_ensemble
from uncertlr.torch.laplace import LastLayerLaplace
from uncertlr.torch.loop import LoopState, StepGuard, fit
from uncertlr.torch.modulator import Modulator
from uncertlr.torch.signals import (
    batch_aleatoric_variance,
    batch_entropy,
    batch_epistemic_variance,
    batch_mutual_information,
    batch_predictive_variance,
    confidence_weighted_nll,
    elbo_signal,
)

__all__ = [
    "BNN",
    "Checkpoint",
    "DensityTemperature",
    "ELBOTerms",
    "Ensemble",
    "FeatureDensity",
    "LastLayerLaplace",
    "LoopState",
    "MCDropout",
    "Modulator",
    "NormalPrediction",
    "PointNetwork",
    "StepGuard",
    "batch_aleatoric_variance",
    "batch_entropy",
    "batch_epistemic_variance",
    "batch_mutual_information",
    "batch_predictive_variance",
    "bayesian",
    "confidence_weighted_nll",
    "deep_ensemble",
    "elbo_signal",
    "fit",
    "keep_freed_memory",
    "load_checkpoint",
    "mc_dropout",
    "save_checkpoint",
]
