"""One call that scores a classifier's predictive samples: calibration, uncertainty and OOD detection.

Backend-neutral (array API): works on the ``[S, N, C]`` probabilities of the torch
and JAX backends alike, and on ``[N, C]`` point predictions.

Example:
    >>> import numpy as np
    >>> from uncertlr.evaluation import classification_summary
    >>> rng = np.random.default_rng(0)
    >>> p_in = rng.dirichlet(np.ones(3) * 0.2, size=(8, 40)); y = p_in.mean(0).argmax(1)
    >>> p_out = rng.dirichlet(np.ones(3) * 5, size=(8, 40))
    >>> s = classification_summary(p_in, y, p_out)
    >>> s["accuracy"], s["auroc_entropy"] > 0.9
    (1.0, True)
"""

from __future__ import annotations

from typing import Any

from uncertlr import metrics

__all__ = ["CLASSIFICATION_KEYS", "SUMMARY_ROWS", "classification_summary"]

#: Keys of :func:`classification_summary` (the per-model entries of ``metrics.json``).
CLASSIFICATION_KEYS = (
    "accuracy",
    "nll",
    "brier",
    "ece",
    "adaptive_ece",
    "entropy_in",
    "aleatoric_in",
    "mi_in",
    "entropy_ood",
    "aleatoric_ood",
    "mi_ood",
    "auroc_mi",
    "auroc_entropy",
)

#: How tables show the entries of ``metrics.json``: (key, label, format), in display order.
SUMMARY_ROWS = (
    ("accuracy", "accuracy", ".3f"),
    ("nll", "NLL", ".3f"),
    ("brier", "Brier", ".3f"),
    ("ece", "ECE (15 bins)", ".3f"),
    ("entropy_in", "entropy, test", ".3f"),
    ("mi_in", "mutual information, test", ".3f"),
    ("entropy_ood", "entropy, OOD", ".3f"),
    ("mi_ood", "mutual information, OOD", ".3f"),
    ("auroc_mi", "OOD AUROC of MI", ".3f"),
    ("auroc_entropy", "OOD AUROC of entropy", ".3f"),
    ("seconds", "seconds", ".1f"),
)


def classification_summary(
    probs: Any, labels: Any, probs_ood: Any | None = None, *, num_bins: int = 15
) -> dict[str, float]:
    """Accuracy, NLL, Brier, ECE, adaptive ECE, mean uncertainties and OOD AUROCs as Python floats.

    Args:
        probs: in-distribution test predictions ``[S, N, C]`` (or ``[N, C]``).
        labels: ``[N]`` integer labels.
        probs_ood: predictions on out-of-distribution inputs ``[S, M, C]``; when given, adds
            ``entropy_ood``, ``mi_ood`` and the AUROC of telling the two sets apart by mutual
            information (``auroc_mi``; 0.5 for point predictions, which have none) and by
            predictive entropy (``auroc_entropy``).
    """
    d_in = metrics.uncertainty_decomposition(probs)
    out: dict[str, float] = {
        "accuracy": float(metrics.accuracy(probs, labels)),
        "nll": float(metrics.nll(probs, labels)),
        "brier": float(metrics.brier(probs, labels)),
        "ece": float(metrics.ece(probs, labels, num_bins=num_bins)),
        "adaptive_ece": float(metrics.adaptive_ece(probs, labels, num_bins=num_bins)),
        "entropy_in": float(d_in.total.mean()),
        "aleatoric_in": float(d_in.aleatoric.mean()),
        "mi_in": float(d_in.epistemic.mean()),
    }
    if probs_ood is not None:
        d_out = metrics.uncertainty_decomposition(probs_ood)
        out.update(
            entropy_ood=float(d_out.total.mean()),
            aleatoric_ood=float(d_out.aleatoric.mean()),
            mi_ood=float(d_out.epistemic.mean()),
            auroc_mi=float(metrics.ood_auroc(d_in.epistemic, d_out.epistemic)),
            auroc_entropy=float(metrics.ood_auroc(d_in.total, d_out.total)),
        )
    return out
