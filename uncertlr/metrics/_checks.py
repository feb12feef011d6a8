"""Validation and small helpers shared by the metric modules (private)."""

from __future__ import annotations

import math
from typing import Any

from uncertlr._arrays import compat_namespace, convert, is_concrete

Array = Any

#: Absolute tolerance on ``sum_c p[..., c] == 1`` when checking probabilities.
PROB_SUM_ATOL = 1e-3


def _check_probs(probs: Array, name: str = "probs", *, validate: bool = True) -> tuple[Any, Array]:
    xp = compat_namespace(probs, name)
    if probs.ndim == 2:
        probs = probs[None, ...]
    if probs.ndim != 3:
        raise ValueError(
            f"{name} must have shape [S, N, C] (samples, inputs, classes) or [N, C]; got shape {tuple(probs.shape)}"
        )
    if probs.shape[-1] < 2:
        raise ValueError(f"{name} needs at least 2 classes on its last axis; got shape {tuple(probs.shape)}")
    if probs.shape[0] == 0:
        raise ValueError(f"{name} is empty: no samples on its first axis (shape {tuple(probs.shape)})")
    if not xp.isdtype(probs.dtype, "real floating"):
        raise TypeError(f"{name} must be a floating-point array; got dtype {probs.dtype}")
    if validate and is_concrete(probs) and probs.shape[0] * probs.shape[1] > 0:
        if not bool(xp.all(xp.isfinite(probs))):
            raise ValueError(f"{name} contains NaN or inf")
        if bool(xp.any(probs < 0)) or bool(xp.any(probs > 1 + PROB_SUM_ATOL)):
            raise ValueError(f"{name} must lie in [0, 1]; did you pass logits? Apply softmax first")
        sums = xp.sum(probs, axis=-1)
        if bool(xp.any(xp.abs(sums - 1) > PROB_SUM_ATOL)):
            worst = float(xp.max(xp.abs(sums - 1)))
            raise ValueError(
                f"{name} must sum to 1 over the class axis (off by up to {worst:.3g}); "
                "did you pass logits? Apply softmax first"
            )
    return xp, probs


def _check_labels(labels: Array, n: int, num_classes: int, xp: Any, like: Array) -> Array:
    labels = convert(labels, xp, like, "labels")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape [N] = [{n}]; got shape {tuple(labels.shape)}")
    if not xp.isdtype(labels.dtype, "integral"):
        raise TypeError(f"labels must be integer class indices; got dtype {labels.dtype}")
    if is_concrete(labels) and n > 0:
        lo, hi = int(xp.min(labels)), int(xp.max(labels))
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}); got values in [{lo}, {hi}]")
    return labels


def _entropy(p: Array, xp: Any) -> Array:
    """Shannon entropy over the last axis with ``0 log 0 = 0`` (gradient-safe)."""
    tiny = xp.finfo(p.dtype).tiny
    return -xp.sum(p * xp.log(xp.clip(p, tiny, None)), axis=-1)


def _maybe_normalize(h: Array, normalized: bool, num_classes: int) -> Array:
    return h / math.log(num_classes) if normalized else h


def _broadcast(x: Array, shape: tuple[int, ...], name: str, xp: Any) -> Array:
    try:
        return xp.broadcast_to(x, shape)
    except (ValueError, RuntimeError) as exc:  # numpy/jax: ValueError; torch: RuntimeError
        raise ValueError(
            f"{name} of shape {tuple(x.shape)} does not broadcast to the mean's shape {tuple(shape)}"
        ) from exc


def _one_hot(labels: Array, num_classes: int, dtype: Any, xp: Any) -> Array:
    classes = xp.arange(num_classes, dtype=labels.dtype)
    return xp.astype(labels[:, None] == classes[None, :], dtype)


def _pbar_labels(probs: Array, labels: Array) -> tuple[Any, Array, Array]:
    xp, probs = _check_probs(probs)
    if probs.shape[1] == 0:
        raise ValueError(
            f"probs is empty: no inputs (N = 0, shape {tuple(probs.shape)}); the metric is undefined"
        )
    pbar = xp.mean(probs, axis=0)
    labels = _check_labels(labels, pbar.shape[0], pbar.shape[1], xp, probs)
    return xp, pbar, labels
