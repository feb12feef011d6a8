"""Multi-layer perceptron (Equinox), the JAX twin of :class:`uncertlr_models.MLP`."""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

__all__ = ["EqxMLP"]

_ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh, "gelu": jax.nn.gelu, "silu": jax.nn.silu}


class EqxMLP(eqx.Module):
    """``in_features -> hidden... -> out_features`` with an activation after every hidden layer.

    Like every Equinox layer it acts on one example (``[...]`` flattened to ``[in_features]``);
    :func:`uncertlr.jax.bayesian` vmaps it over the batch.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from uncertlr_models.eqx_mlp import EqxMLP
        >>> net = EqxMLP(64, (16,), 10, activation="tanh", key=jax.random.key(0))
        >>> jax.vmap(net)(jnp.zeros((5, 8, 8))).shape
        (5, 10)
    """

    layers: tuple[eqx.nn.Linear, ...]
    activation: str = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        *,
        activation: str = "relu",
        key: jax.Array,
    ):
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}; got {activation!r}")
        dims = [in_features, *hidden, out_features]
        keys = jax.random.split(key, len(dims) - 1)
        self.layers = tuple(eqx.nn.Linear(a, b, key=k) for a, b, k in zip(dims[:-1], dims[1:], keys))
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        act = _ACTIVATIONS[self.activation]
        h = x.reshape(-1)
        for layer in self.layers[:-1]:
            h = act(layer(h))
        return self.layers[-1](h)
