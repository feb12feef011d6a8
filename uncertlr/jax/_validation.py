"""Input checks of a JAX BNN (``bnn.check_data``, ``bnn.output_shape``), on the host, before anything compiles.

Example:
    >>> import jax.numpy as jnp
    >>> from uncertlr.jax import bayesian
    >>> bnn = bayesian(lambda p, x: x @ p["w"], params={"w": jnp.zeros((3, 2))}, num_data=10)
    >>> output_shape(bnn, jnp.zeros((5, 3)))
    (5, 2)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from uncertlr import likelihoods as _lik

__all__ = ["check_batch", "check_data", "check_inputs", "check_module", "draws_outputs", "output_shape"]


def output_shape(bnn: Any, x: Array) -> tuple[int, ...]:
    """Shape of the network's outputs for inputs ``x`` (traced abstractly, no compute)."""
    try:
        return tuple(jax.eval_shape(bnn.network.apply, bnn.network.values, x).shape)
    except Exception as exc:  # noqa: BLE001 - Flax, Equinox and jax each raise their own shape errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(
            f"the network cannot be applied to x of shape {tuple(x.shape)} and dtype {x.dtype} "
            f"(is x missing its batch axis, or does it have the wrong number of features?): "
            f"{type(exc).__name__}: {first}"
        ) from exc


def check_module(net: Any, params: Any, what: str, hint: str = "") -> str:
    """The framework of ``net`` (``"flax.linen"``, ``"flax.nnx"``, ``"equinox"``), checking that a linen module
    comes with its ``params`` and an nnx or Equinox module without; errors start with ``what``."""
    from uncertlr.jax._networks import _module_kind

    kind = _module_kind(net)
    if kind is None:
        raise TypeError(
            f"{what} reads a flax.linen or flax.nnx module or an Equinox module; got {type(net).__name__}{hint}"
        )
    if kind == "flax.linen":
        if params is None:
            raise ValueError("a flax.linen module holds no parameters: pass params=module.init(key, x)")
    elif params is not None:
        raise ValueError(f"a {kind} module holds its own parameters: do not pass params=")
    return kind


def check_inputs(x: Any) -> None:
    """Raise unless ``x`` holds at least one input ``[N, ...]``: a ValueError naming its shape."""
    if not hasattr(x, "shape") or len(x.shape) == 0 or x.shape[0] == 0:
        raise ValueError(f"x must hold at least one input [N, ...]; got shape {getattr(x, 'shape', None)}")


def check_batch(x: Any) -> Array:
    """One batch of inputs as a JAX array, with a ValueError when a float input holds NaN or inf."""
    xb = jnp.asarray(x)
    if jnp.issubdtype(xb.dtype, jnp.inexact) and not bool(jnp.isfinite(xb).all()):
        raise ValueError("x holds NaN or inf")
    return xb


def draws_outputs(parts: list[Array], who: str) -> Array:
    """Batches of outputs ``[S, n, C]`` joined along the inputs, checked to be ``[S, N, C]`` and finite."""
    out = jnp.concatenate(parts, axis=1)
    if out.ndim != 3:
        raise ValueError(f"{who} must output [N, C]; got [S, N, ...] of shape {tuple(out.shape)}")
    if not bool(jnp.isfinite(out).all()):
        raise ValueError(f"the outputs of {who} are not finite")
    return out


def check_data(bnn: Any, x: Any, y: Any = None) -> tuple[Array, Array | None]:
    """Validate and convert ``x[N, ...]`` and targets ``y`` (labels ``[N]`` or regression targets).

    Raises:
        TypeError / ValueError naming the problem: not an array, empty, NaN/inf, batch-size
        mismatch, float or out-of-range labels, target shape different from the output's.
    """
    if not isinstance(x, (np.ndarray, jax.Array)):
        raise TypeError(f"x must be a numpy or jax array; got {type(x).__name__}")
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"x must have a non-empty batch axis first; got shape {tuple(x.shape)}")
    if jnp.issubdtype(x.dtype, jnp.floating) and bnn.validate and not np.isfinite(np.asarray(x)).all():
        raise ValueError("x contains NaN or inf")
    x = jnp.asarray(x)
    out = output_shape(bnn, x)
    categorical = isinstance(bnn.likelihood, _lik.Categorical)
    if (categorical and len(out) != 2) or not out or out[0] != x.shape[0]:
        want = "[N, C] (logits)" if categorical else "[N, ...]"
        raise ValueError(
            f"the network's outputs for x of shape {tuple(x.shape)} have shape {out}; the "
            f"{'Categorical' if categorical else 'Normal'} likelihood needs {want} with N = {x.shape[0]} "
            "(is x missing its batch or feature axis?)"
        )
    if y is None:
        return x, None
    if not isinstance(y, (np.ndarray, jax.Array)):
        raise TypeError(f"y must be a numpy or jax array; got {type(y).__name__}")
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"x and y must have the same batch size; got {x.shape[0]} and {y.shape[0] if y.ndim else 'a scalar'}"
        )
    y_host = np.asarray(y)  # checked on the host: no device round trips or one-op compiles
    if categorical:
        _lik.check_labels(y_host, x.shape[0], out[1], values=bnn.validate)
    else:
        _lik.check_targets(y_host, out, values=bnn.validate)
    return x, jnp.asarray(y)
