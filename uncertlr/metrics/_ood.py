"""Out-of-distribution detection scores (see :mod:`uncertlr.metrics`)."""

from __future__ import annotations

from typing import Any

from uncertlr._arrays import check_finite, compat_namespace, convert

Array = Any


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
    xp = compat_namespace(score_in, "score_in")
    score_out = convert(score_out, xp, score_in, "score_out")
    if score_in.ndim != 1 or score_out.ndim != 1:
        raise ValueError(
            f"scores must be 1-D; got shapes {tuple(score_in.shape)} and {tuple(score_out.shape)}"
        )
    n_in, n_out = score_in.shape[0], score_out.shape[0]
    if n_in == 0 or n_out == 0:
        raise ValueError(f"need at least one score on each side; got {n_in} in and {n_out} out")
    check_finite(score_in, "score_in", xp)
    check_finite(score_out, "score_out", xp)
    dtype = xp.result_type(score_in.dtype, score_out.dtype, xp.float32)
    scores = xp.concat([xp.astype(score_in, dtype), xp.astype(score_out, dtype)])
    ordered = xp.sort(scores)
    # 1-based average rank of each score: tied scores occupy positions left+1 .. right
    left = xp.searchsorted(ordered, scores, side="left")
    right = xp.searchsorted(ordered, scores, side="right")
    ranks = xp.astype(left + right + 1, dtype) / 2
    # AUROC = (rank-sum of the OOD scores - its minimum) / (n_in n_out), written with a mean for accuracy
    return (xp.mean(ranks[n_in:]) - (n_out + 1) / 2) / n_in
