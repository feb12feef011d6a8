"""Selective prediction: the risk-coverage curve, AURC and E-AURC (see :mod:`uncertlr.metrics`).

A classifier that may abstain answers only its ``k`` most confident inputs; its *risk* at
coverage ``k / N`` is the error rate among them. The area under that curve (AURC, Geifman et
al., 2019) is low when the uncertainty score puts the mistakes last; E-AURC subtracts the
AURC of a perfect ranking of the same mistakes, leaving only the ranking's excess.

Tied uncertainties have no order, so the curve here is its expectation over every order of
the tied inputs (the cumulative error count is interpolated linearly inside a tie): a
deterministic net whose confidences saturate at 1.0 gets the same number however its ties
happen to be sorted.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from uncertlr._arrays import check_finite, compat_namespace, convert, is_concrete

Array = Any


class RiskCoverage(NamedTuple):
    """The risk-coverage curve, each ``[N]``: ``coverage[k-1] = k / N`` and the expected error
    rate ``risk`` among the ``k`` least uncertain inputs."""

    coverage: Array
    risk: Array


def _check_selective(uncertainty: Array, correct: Array) -> tuple[Any, Array, Array]:
    xp = compat_namespace(uncertainty, "uncertainty")
    correct = convert(correct, xp, uncertainty, "correct")
    if uncertainty.ndim != 1 or correct.ndim != 1 or uncertainty.shape[0] != correct.shape[0]:
        raise ValueError(
            "uncertainty and correct must be 1-D of the same length [N]; got shapes "
            f"{tuple(uncertainty.shape)} and {tuple(correct.shape)}"
        )
    if uncertainty.shape[0] == 0:
        raise ValueError("uncertainty is empty (N = 0): the risk-coverage curve is undefined")
    check_finite(uncertainty, "uncertainty", xp, allow_int=True)
    if not (xp.isdtype(correct.dtype, "bool") or xp.isdtype(correct.dtype, "integral")):
        raise TypeError(f"correct must be boolean (or 0/1 integers); got dtype {correct.dtype}")
    if xp.isdtype(correct.dtype, "integral") and is_concrete(correct):
        if bool(xp.any((correct != 0) & (correct != 1))):
            raise ValueError("correct must hold only 0 and 1 (or booleans)")
    dtype = xp.float64 if xp.isdtype(uncertainty.dtype, "integral") else uncertainty.dtype
    return xp, xp.astype(uncertainty, dtype), xp.astype(correct, dtype)


def risk_coverage(uncertainty: Array, correct: Array) -> RiskCoverage:
    """The risk-coverage curve of rejecting the most uncertain inputs first.

    Args:
        uncertainty: ``[N]`` scores, higher = less confident (predictive entropy, mutual
            information, ``1 - max p̄``...).
        correct: ``[N]`` booleans (or 0/1): whether each prediction is right.

    Returns:
        :class:`RiskCoverage` with ``coverage`` and ``risk``, each ``[N]``; ties in
        ``uncertainty`` are averaged over their orders.

    Example:
        >>> import numpy as np
        >>> rc = risk_coverage(np.array([0.1, 0.9, 0.5]), np.array([True, False, True]))
        >>> rc.risk.tolist()
        [0.0, 0.0, 0.3333333333333333]
    """
    xp, u, ok = _check_selective(uncertainty, correct)
    n = u.shape[0]
    order = xp.argsort(u, stable=True)
    u = xp.take(u, order)
    errors = xp.cumulative_sum(1 - xp.take(ok, order), include_initial=True)  # [N + 1], C(0) = 0
    left = xp.searchsorted(u, u, side="left")
    right = xp.searchsorted(u, u, side="right")
    k = xp.arange(1, n + 1, dtype=u.dtype)
    at_left, at_right = xp.take(errors, left), xp.take(errors, right)
    width = xp.astype(right - left, u.dtype)
    expected = at_left + (k - xp.astype(left, u.dtype)) * (at_right - at_left) / width
    return RiskCoverage(k / n, expected / k)


def aurc(uncertainty: Array, correct: Array) -> Array:
    """Area under the risk-coverage curve (mean risk over the coverages ``1/N .. 1``); a 0-d array.

    Lower is better; it mixes the error rate with how well ``uncertainty`` ranks the
    mistakes (see :func:`eaurc` for the ranking alone).

    Args:
        uncertainty: ``[N]`` scores, higher = less confident.
        correct: ``[N]`` booleans: whether each prediction is right.

    Example:
        >>> import numpy as np
        >>> float(aurc(np.array([0.1, 0.9, 0.5]), np.array([True, False, True])))
        0.1111111111111111
    """
    xp = compat_namespace(uncertainty, "uncertainty")
    return xp.mean(risk_coverage(uncertainty, correct).risk)


def eaurc(uncertainty: Array, correct: Array) -> Array:
    """Excess AURC: :func:`aurc` minus the AURC of a perfect ranking of the same mistakes; 0-d.

    0 when every mistake is more uncertain than every correct prediction; the optimum is
    computed exactly for the ``N`` discrete coverages (not Geifman's continuous approximation
    ``r + (1 - r) log(1 - r)``).

    Example:
        >>> import numpy as np
        >>> float(eaurc(np.array([0.1, 0.9, 0.5]), np.array([True, False, True])))
        0.0
    """
    xp, _, ok = _check_selective(uncertainty, correct)
    n = ok.shape[0]
    k = xp.arange(1, n + 1, dtype=ok.dtype)
    num_correct = xp.sum(ok)
    best = xp.mean(xp.clip(k - num_correct, 0, None) / k)  # errors come only after all correct ones
    return aurc(uncertainty, correct) - best
