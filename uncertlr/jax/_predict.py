"""How much memory one input row takes in a JAX network's forward pass, for bounded-memory ``predict``.

:func:`activation_bytes_per_row` traces the network once on a probe of two rows
(``jax.make_jaxpr``, no compilation) and adds up the size of every intermediate value,
nested calls included: an upper bound on what one row costs, which
:func:`uncertlr._spec.chunk_plan` turns into draws × rows per vectorised pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

__all__ = ["activation_bytes_per_row"]

_PROBE_ROWS = 2


def _jaxprs(params: dict[str, Any]) -> Iterator[Any]:
    for v in params.values():
        for item in v if isinstance(v, (list, tuple)) else (v,):
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(getattr(item, "jaxpr", None), "eqns"):
                yield item.jaxpr


def _bytes(jaxpr: Any) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            aval = getattr(v, "aval", None)
            if hasattr(aval, "shape") and hasattr(aval, "dtype"):
                total += math.prod(aval.shape) * np.dtype(aval.dtype).itemsize
        total += sum(_bytes(sub) for sub in _jaxprs(eqn.params))
    return total


def activation_bytes_per_row(apply: Callable[[Any, Any], Any], values: Any, x: Any) -> int:
    """Bytes of the input row and of every intermediate of ``apply(values, x)``, per input row.

    Example:
        >>> import jax.numpy as jnp
        >>> w = jnp.zeros((4, 8))
        >>> activation_bytes_per_row(lambda p, x: jnp.tanh(x @ p), w, jnp.zeros((10, 4)))  # 4 in, 8 + 8 out
        80
    """
    probe = x[:_PROBE_ROWS]
    closed = jax.make_jaxpr(apply)(values, probe)
    total = probe.size * np.dtype(probe.dtype).itemsize + _bytes(closed.jaxpr)
    return max(1, math.ceil(total / probe.shape[0]))
