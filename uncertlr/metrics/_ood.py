"""Out-of-distribution detection scores: AUROC, FPR at a TPR, AUPR-in/out (see :mod:`uncertlr.metrics`)."""

from __future__ import annotations

import math
from typing import Any

from uncertlr._arrays import check_finite, compat_namespace, convert

Array = Any


def _check_scores(score_in: Array, score_out: Array) -> tuple[Any, Array, Array]:
    xp = compat_namespace(score_in, "score_in")
    score_out = convert(score_out, xp, score_in, "score_out")
    if score_in.ndim != 1 or score_out.ndim != 1:
        raise ValueError(
            f"scores must be 1-D; got shapes {tuple(score_in.shape)} and {tuple(score_out.shape)}"
        )
    if score_in.shape[0] == 0 or score_out.shape[0] == 0:
        raise ValueError(
            f"need at least one score on each side; got {score_in.shape[0]} in and {score_out.shape[0]} out"
        )
    check_finite(score_in, "score_in", xp)
    check_finite(score_out, "score_out", xp)
    dtype = xp.result_type(score_in.dtype, score_out.dtype, xp.float32)
    return xp, xp.astype(score_in, dtype), xp.astype(score_out, dtype)


def ood_auroc(score_in: Array, score_out: Array) -> Array:
    """Area under the ROC curve for telling out-of-distribution inputs from in-distribution ones.

    Higher scores should mean "more likely out of distribution" (entropy, mutual
    information, ...). Computed exactly with the Mann-Whitney statistic; ties count 1/2.

    Args:
        score_in: ``[N_in]`` scores of in-distribution inputs.
        score_out: ``[N_out]`` scores of out-of-distribution inputs.

    Returns:
        A 0-d array in [0, 1]: 1 means every OOD input scores above every in-distribution input.

    Example:
        >>> import numpy as np
        >>> float(ood_auroc(np.array([0.1, 0.2]), np.array([0.3, 0.15])))
        0.75
    """
    xp, score_in, score_out = _check_scores(score_in, score_out)
    n_in, n_out = score_in.shape[0], score_out.shape[0]
    dtype = score_in.dtype
    scores = xp.concat([score_in, score_out])
    ordered = xp.sort(scores)
    # 1-based average rank of each score: tied scores occupy positions left+1 .. right
    left = xp.searchsorted(ordered, scores, side="left")
    right = xp.searchsorted(ordered, scores, side="right")
    ranks = xp.astype(left + right + 1, dtype) / 2
    # AUROC = (rank-sum of the OOD scores - its minimum) / (n_in n_out), written with a mean for accuracy
    return (xp.mean(ranks[n_in:]) - (n_out + 1) / 2) / n_in


def fpr_at_tpr(score_in: Array, score_out: Array, *, tpr: float = 0.95) -> Array:
    """False-positive rate at a true-positive rate of ``tpr`` (FPR@95%TPR by default); a 0-d array.

    The detector flags inputs whose score reaches a threshold; the threshold is the highest
    one that still flags at least ``tpr`` of the out-of-distribution inputs, and the result
    is the fraction of in-distribution inputs it flags as well (lower is better). Higher
    scores mean "more likely out of distribution", as in :func:`ood_auroc`; this is the
    first point of scikit-learn's ROC curve with ``tpr >= tpr``.

    Args:
        score_in: ``[N_in]`` scores of in-distribution inputs.
        score_out: ``[N_out]`` scores of out-of-distribution inputs.
        tpr: the true-positive rate to reach, in (0, 1].

    Example:
        >>> import numpy as np
        >>> float(fpr_at_tpr(np.array([0.1, 0.2, 0.35, 0.5]), np.array([0.3, 0.4, 0.9]), tpr=0.6))
        0.25
    """
    if isinstance(tpr, bool) or not isinstance(tpr, (int, float)) or not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must lie in (0, 1]; got {tpr!r}")
    xp, score_in, score_out = _check_scores(score_in, score_out)
    n_out = score_out.shape[0]
    k = max(1, min(n_out, math.ceil(tpr * n_out)))  # the fewest OOD inputs to flag: k / n_out >= tpr
    while k > 1 and (k - 1) / n_out >= tpr:
        k -= 1
    while k < n_out and k / n_out < tpr:
        k += 1
    threshold = xp.sort(score_out)[n_out - k]  # the k-th largest OOD score
    return xp.mean(xp.astype(score_in >= threshold, score_in.dtype))


def _average_precision(pos: Array, neg: Array, xp: Any) -> Array:
    """Average precision of ranking ``pos`` above ``neg`` (higher = positive), as scikit-learn's
    ``average_precision_score``: each positive contributes the precision at its own score,
    ``#positives >= s / #all >= s`` (tied scores share one threshold)."""
    everything = xp.sort(xp.concat([pos, neg]))
    pos_sorted = xp.sort(pos)
    ranked = everything.shape[0] - xp.searchsorted(everything, pos, side="left")
    true_pos = pos_sorted.shape[0] - xp.searchsorted(pos_sorted, pos, side="left")
    return xp.mean(xp.astype(true_pos, pos.dtype) / xp.astype(ranked, pos.dtype))


def aupr_out(score_in: Array, score_out: Array) -> Array:
    """Area under the precision-recall curve with the out-of-distribution inputs as positives; 0-d.

    Average precision (scikit-learn's step-wise definition, no interpolation) of flagging OOD
    inputs by their score (higher = more likely OOD, as in :func:`ood_auroc`). Its chance
    level is the OOD fraction ``N_out / (N_in + N_out)``.

    Example:
        >>> import numpy as np
        >>> float(aupr_out(np.array([0.1, 0.2]), np.array([0.3, 0.15])))
        0.8333333333333333
    """
    xp, score_in, score_out = _check_scores(score_in, score_out)
    return _average_precision(score_out, score_in, xp)


def aupr_in(score_in: Array, score_out: Array) -> Array:
    """Area under the precision-recall curve with the in-distribution inputs as positives; 0-d.

    As :func:`aupr_out` with the roles swapped: in-distribution inputs are found by *low*
    scores (so ``-score`` ranks them). Chance level: ``N_in / (N_in + N_out)``.

    Example:
        >>> import numpy as np
        >>> float(aupr_in(np.array([0.1, 0.2]), np.array([0.3, 0.15])))
        0.8333333333333333
    """
    xp, score_in, score_out = _check_scores(score_in, score_out)
    return _average_precision(-score_in, -score_out, xp)
