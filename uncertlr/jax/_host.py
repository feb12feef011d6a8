"""Host-side helpers of the JAX SVI step: PRNG keys, the default device, parameter sites and transforms.

Example:
    >>> import numpy as np
    >>> a = derived_key(np.array([1, 2], np.uint32), "order")
    >>> bool((a != np.array([1, 2], np.uint32)).all())
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.distributions.transforms import ExpTransform

from uncertlr.jax._posterior import as_key

__all__ = ["default_device", "derived_key", "inverse", "learning_rate", "param_sites", "typed_key"]


def param_sites(fn: Callable[..., Any], key: Array, *args: Any) -> dict[str, tuple[Array, Any]]:
    tr = handlers.trace(handlers.seed(fn, key)).get_trace(*args)
    return {
        name: (site["value"], site["kwargs"].get("constraint", constraints.real))
        for name, site in tr.items()
        if site["type"] == "param"
    }


def typed_key(rng_key: Any) -> Array:
    """A threefry key array from an integer seed, a typed key or raw ``uint32[2]`` key data."""
    key = as_key(rng_key)
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))
    if jax.random.key_data(key).shape != (2,):
        raise ValueError("rng_key must be an integer seed or a threefry key (jax.random.key(seed))")
    return key


def inverse(transform: Any, value: Any) -> Any:
    """``transform.inv(value)``, on the host for numpy values of the std sites (``log``)."""
    if isinstance(value, np.ndarray) and isinstance(transform, ExpTransform):
        return np.log(value)
    return transform.inv(jnp.asarray(value))


def default_device() -> Any:
    """JAX's default device (``jax.default_device`` / ``jax_default_device`` when set, else the first)."""
    chosen = jax.config.jax_default_device
    if isinstance(chosen, str):
        return jax.devices(chosen)[0]
    return chosen if chosen is not None else jax.devices()[0]


def derived_key(key_data: Any, purpose: str) -> np.ndarray:
    """Key data for another ``purpose`` (data order, prediction) derived from ``key_data`` on the host."""
    salt = {"order": (0x9E3779B9, 0x7F4A7C15), "predict": (0x85EBCA6B, 0xC2B2AE35)}[purpose]
    return np.asarray(key_data, np.uint32) ^ np.asarray(salt, np.uint32)


def learning_rate(opt_state: Any, dtype: Any) -> Array:
    """The learning rate when the optimizer exposes it (``optax.inject_hyperparams``), else NaN."""
    for leaf in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda s: hasattr(s, "hyperparams")):
        if hasattr(leaf, "hyperparams") and "learning_rate" in leaf.hyperparams:
            return jnp.asarray(leaf.hyperparams["learning_rate"], dtype)
    return jnp.full((), jnp.nan, dtype)
