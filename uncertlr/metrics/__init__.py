"""Uncertainty and calibration metrics, written once on the array API.

Every function accepts numpy arrays, torch tensors or jax arrays (anything
``array_api_compat.array_namespace`` recognises) and returns arrays of the same
library, so the functions run inside ``jax.jit`` and on the GPU without host
round trips. This module imports neither torch nor jax.

Conventions (shapes in every docstring):

* classification probabilities are ``probs[S, N, C]``: ``S`` posterior samples,
  ``N`` inputs, ``C`` classes. A 2-D ``probs[N, C]`` is a point prediction
  (a deterministic network) and is treated as ``S = 1``.
* regression predictions are ``mean[S, N, ...]`` and ``variance[S, N, ...]``
  (the per-sample predictive mean and noise variance).
* labels are integer class indices ``labels[N]`` in ``[0, C)``.
* scores for OOD detection and selective prediction are ``[N]``, higher = more uncertain
  (entropy, mutual information, ``1 - max p̄``): :func:`ood_auroc`, :func:`fpr_at_tpr`,
  :func:`aupr_in`/:func:`aupr_out` take in- and out-of-distribution scores; :func:`aurc`,
  :func:`eaurc` and :func:`risk_coverage` take scores and whether each prediction is correct.

The information-theoretic decomposition (sample axis first, ``p̄ = mean_s p_s``):

* total uncertainty = predictive entropy ``H[p̄]``
* aleatoric = expected entropy ``E_s H[p_s]``
* epistemic = mutual information ``H[p̄] - E_s H[p_s] >= 0``

Example:
    >>> import numpy as np
    >>> from uncertlr import metrics
    >>> probs = np.array([[[0.9, 0.1]], [[0.1, 0.9]]])   # two samples that disagree
    >>> float(metrics.mutual_information(probs)[0]) > 0.3
    True
"""

from __future__ import annotations

from uncertlr.metrics._calibration import (
    ECEConsistency,
    ReliabilityBins,
    accuracy,
    adaptive_ece,
    brier,
    ece,
    ece_consistency,
    nll,
    reliability_bins,
)
from uncertlr.metrics._checks import PROB_SUM_ATOL
from uncertlr.metrics._ood import aupr_in, aupr_out, fpr_at_tpr, ood_auroc
from uncertlr.metrics._regression import gaussian_nll, rmse
from uncertlr.metrics._selective import RiskCoverage, aurc, eaurc, risk_coverage
from uncertlr.metrics._uncertainty import (
    LayerSpread,
    UncertaintyDecomposition,
    VarianceDecomposition,
    expected_entropy,
    layer_spread,
    mean_probs,
    mutual_information,
    predictive_entropy,
    predictive_variance,
    uncertainty_decomposition,
)

__all__ = [
    "PROB_SUM_ATOL",
    "ECEConsistency",
    "LayerSpread",
    "ReliabilityBins",
    "RiskCoverage",
    "UncertaintyDecomposition",
    "VarianceDecomposition",
    "accuracy",
    "adaptive_ece",
    "aupr_in",
    "aupr_out",
    "aurc",
    "brier",
    "eaurc",
    "ece",
    "ece_consistency",
    "expected_entropy",
    "fpr_at_tpr",
    "gaussian_nll",
    "layer_spread",
    "mean_probs",
    "mutual_information",
    "nll",
    "ood_auroc",
    "predictive_entropy",
    "predictive_variance",
    "reliability_bins",
    "risk_coverage",
    "rmse",
    "uncertainty_decomposition",
]
