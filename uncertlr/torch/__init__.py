"""The PyTorch backend: Bayesian networks built with Pyro from any ``torch.nn.Module``.

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

from uncertlr.torch.bnn import BNN, ELBOTerms, NormalPrediction, bayesian
from uncertlr.torch.modulation import (
    Modulator,
    batch_entropy,
    batch_mutual_information,
    confidence_weighted_nll,
)

__all__ = [
    "BNN",
    "ELBOTerms",
    "Modulator",
    "NormalPrediction",
    "batch_entropy",
    "batch_mutual_information",
    "bayesian",
    "confidence_weighted_nll",
]
