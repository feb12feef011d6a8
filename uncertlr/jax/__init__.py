"""The JAX backend: NumPyro BNNs from Flax/Equinox models and the LR modulator as optax transformations.

Needs the ``jax`` extra: ``pip install 'uncertlr[jax]'``.
"""

try:
    import jax  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "uncertlr.jax needs the jax extra: pip install 'uncertlr[jax]' (jax, jaxlib, numpyro, optax)"
    ) from exc

__all__: list[str] = []
