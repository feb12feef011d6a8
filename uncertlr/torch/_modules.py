"""What uncertlr needs to know about the user's module tree: parameter owners, fan-ins, readable errors."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

from torch import Tensor, nn

__all__ = ["fan_in", "named_shape_errors", "owner"]


def owner(net: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding parameter ``name`` (dotted path) and the attribute name inside it."""
    *path, leaf = name.split(".")
    mod = net
    for p in path:
        mod = getattr(mod, p)
    return mod, leaf


def fan_in(net: nn.Module, name: str, param: Tensor) -> int:
    """Inputs feeding one output unit of ``name``'s layer (a bias or norm scale: its weight's; else 1)."""
    mod, leaf = owner(net, name)
    if isinstance(mod, nn.Embedding):
        return 1
    if param.dim() >= 2:
        return int(math.prod(param.shape[1:]))
    sibling = getattr(mod, leaf.replace("bias", "weight"), None) if "bias" in leaf else None
    if not isinstance(sibling, Tensor) or sibling.dim() < 2:
        sibling = getattr(mod, "weight", None) if leaf != "weight" else None
    if isinstance(sibling, Tensor) and sibling.dim() >= 2:
        return int(math.prod(sibling.shape[1:]))
    return 1


@contextlib.contextmanager
def named_shape_errors(x: Tensor) -> Iterator[None]:
    """Turn a shape or dtype mismatch deep in the user's forward (an opaque RuntimeError) into a named error."""
    try:
        yield
    except RuntimeError as e:
        if any(k in str(e) for k in ("dtype", "scalar type", "not implemented for")):
            raise TypeError(
                f"the network cannot be applied to x of dtype {x.dtype} (shape {tuple(x.shape)}); cast x to the "
                f"dtype the network expects (floating point for Linear/Conv, integer indices for Embedding). "
                f"torch said: {e}"
            ) from e
        if any(k in str(e) for k in ("shape", "size", "dimension", "must match", "Expected")):
            raise ValueError(
                f"the network cannot be applied to x of shape {tuple(x.shape)} (dtype {x.dtype}); "
                f"check the input shape it expects. torch said: {e}"
            ) from e
        raise
