"""Data loaders: sklearn's digits and out-of-distribution transforms.

Example:
    >>> from uncertlr.data import load_digits
    >>> split = load_digits(seed=0)
    >>> split.x_train.shape[1:], split.num_classes
    ((64,), 10)
"""

from uncertlr.data.digits import Split, load_digits, shuffle_pixels

__all__ = ["Split", "load_digits", "shuffle_pixels"]
