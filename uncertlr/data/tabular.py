"""Regression data: scikit-learn's diabetes set (442 patients, 10 features, disease progression after a year)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["RegressionSplit", "load_diabetes"]


class RegressionSplit(NamedTuple):
    """A regression train/test split: ``x_*[N, D]`` float32, ``y_*[N]`` float32, and how to undo the target scaling.

    Targets are standardised with the training mean and std: the original value is
    ``y * y_scale + y_mean``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    y_mean: float
    y_scale: float


def load_diabetes(*, test_size: float = 0.25, seed: int = 0) -> RegressionSplit:
    """sklearn's diabetes data, features and target standardised with training statistics.

    Args:
        test_size: fraction of patients held out for testing.
        seed: seed of the split.

    Example:
        >>> from uncertlr.data import load_diabetes
        >>> s = load_diabetes(seed=0)
        >>> s.x_train.shape, s.x_test.shape, round(float(s.y_train.mean()), 6)
        ((331, 10), (111, 10), 0.0)
    """
    from sklearn.datasets import load_diabetes as _load
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1); got {test_size!r}")
    x, y = _load(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size, random_state=seed)
    mu, sd = xtr.mean(0), xtr.std(0)
    y_mean, y_scale = float(ytr.mean()), float(ytr.std())

    def f32(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=np.float32)

    return RegressionSplit(
        f32((xtr - mu) / sd),
        f32((ytr - y_mean) / y_scale),
        f32((xte - mu) / sd),
        f32((yte - y_mean) / y_scale),
        y_mean,
        y_scale,
    )
