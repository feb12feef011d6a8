"""Reference architectures that examples and benchmarks wrap, installed as ``uncertlr_models``.

Example:
    >>> from uncertlr_models import MLP
    >>> net = MLP(64, (128, 128), 10)
"""

from uncertlr_models.mlp import MLP

__all__ = ["MLP"]
