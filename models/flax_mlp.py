"""Multi-layer perceptron (Flax linen), the JAX twin of :class:`uncertlr_models.MLP`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

__all__ = ["FlaxMLP"]

_ACTIVATIONS: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {
    "relu": nn.relu,
    "tanh": nn.tanh,
    "gelu": nn.gelu,
    "silu": nn.silu,
}


class FlaxMLP(nn.Module):
    """``hidden... -> out_features`` Dense layers with an activation after every hidden layer.

    Inputs ``[B, ...]`` are flattened to ``[B, features]``. Layers are named ``Dense_0``,
    ``Dense_1``, ... so :func:`uncertlr.select.last_layer` picks the output layer.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from uncertlr_models.flax_mlp import FlaxMLP
        >>> net = FlaxMLP(hidden=(16,), out_features=10, activation="tanh")
        >>> variables = net.init(jax.random.key(0), jnp.zeros((1, 64)))
        >>> net.apply(variables, jnp.zeros((5, 8, 8))).shape
        (5, 10)
    """

    hidden: Sequence[int]
    out_features: int
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}; got {self.activation!r}")
        act = _ACTIVATIONS[self.activation]
        h = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            h = act(nn.Dense(width)(h))
        return nn.Dense(self.out_features)(h)
