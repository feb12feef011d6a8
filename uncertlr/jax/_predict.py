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

from uncertlr._spec import MEMORY_BUDGET, grown_budgets

__all__ = ["activation_bytes_per_row", "draws_per_chunk", "free_device_memory"]

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


def free_device_memory(x: Any) -> Callable[[], int | None] | None:
    """How to ask the device that holds ``x`` (JAX's default device for other inputs) for its free bytes.

    ``None`` on the CPU; on a GPU or TPU ``bytes_limit - bytes_in_use`` of ``Device.memory_stats()``
    (``None`` when the device does not report them). :func:`uncertlr._spec.device_chunk_plan` asks only
    when the CPU budgets would split the work.

    Example:
        >>> import jax.numpy as jnp
        >>> free_device_memory(jnp.zeros(3)) is None  # on the CPU
        True
    """
    devices = getattr(x, "devices", None)
    device = next(iter(devices())) if callable(devices) else jax.devices()[0]
    if device.platform == "cpu":
        return None

    def free() -> int | None:
        stats = device.memory_stats()
        if not stats or "bytes_limit" not in stats:
            return None
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))

    return free


def draws_per_chunk(
    num_draws: int, num_params: int, *, weight_elements: int, free_memory: Callable[[], int | None] | None
) -> int:
    """Posterior draws per chunk: ``weight_elements // num_params``, grown with the device's free memory
    (:func:`uncertlr._spec.grown_budgets`) when that would split ``num_draws``.

    Example:
        >>> draws_per_chunk(32, 11_200_000, weight_elements=2**25, free_memory=None)
        2
        >>> draws_per_chunk(32, 11_200_000, weight_elements=2**25, free_memory=lambda: 64 << 30)
        32
    """
    per = max(1, weight_elements // max(1, num_params))
    if num_draws <= per or free_memory is None:
        return min(per, max(1, num_draws))
    free = free_memory()
    if free is None:
        return per
    _, grown = grown_budgets(
        free, memory_budget=MEMORY_BUDGET, weight_elements=weight_elements, element_size=4
    )
    return min(max(1, grown // max(1, num_params)), num_draws)
