"""sklearn's bundled 8x8 digits (1,797 images, 10 classes) and a shuffled-pixel OOD set."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Split", "load_digits", "shuffle_pixels"]


class Split(NamedTuple):
    """A train/test split as numpy arrays: ``x_*[N, ...]`` float32, ``y_*[N]`` int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


def load_digits(*, test_size: float = 0.25, seed: int = 0, flat: bool = True) -> Split:
    """sklearn digits scaled to [0, 1], split stratified by class.

    Args:
        test_size: fraction of images held out for testing.
        seed: seed of the split.
        flat: ``[N, 64]`` when True, ``[N, 1, 8, 8]`` images when False.
    """
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1); got {test_size!r}")
    x, y = _load(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    if not flat:
        x = x.reshape(-1, 1, 8, 8)
    xtr, xte, ytr, yte = train_test_split(
        x, y.astype(np.int64), test_size=test_size, random_state=seed, stratify=y
    )
    return Split(xtr, ytr, xte, yte, 10)


def shuffle_pixels(x: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Out-of-distribution copies of images ``x[N, ...]``: each image's pixels independently permuted.

    The pixel intensity histogram is kept, the spatial structure destroyed.
    """
    rng = np.random.default_rng(seed)
    flat = x.reshape(len(x), -1)
    idx = np.argsort(rng.random(flat.shape), axis=1)
    return np.take_along_axis(flat, idx, axis=1).reshape(x.shape)
