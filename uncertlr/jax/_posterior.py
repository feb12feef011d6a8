"""What the results of :func:`~uncertlr.jax.mcmc` and :func:`~uncertlr.jax.svi` share.

Both give the torch backend's uncertainty API:

* ``result.predict(x, num_samples=S)`` — probabilities ``[S, N, C]`` (classification) or a
  :class:`~uncertlr.likelihoods.NormalPrediction` with ``mean``/``variance`` ``[S, N, ...]``;
* ``result.sample_outputs(x, num_samples=S)`` — raw network outputs ``[S, N, ...]``;
* ``result.posterior_loc()`` / ``result.posterior_scale()`` — ``{name: array}`` shaped like
  the parameters; ``result.posterior_spread()`` — per-layer mean σ and ``|μ|/σ``.

A result only says how to draw parameters (``sample_parameters``) and where its posterior
sits (``posterior_loc``/``posterior_scale``); the rest is written once here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uncertlr.jax.bnn import BNN, NOISE_SITE
from uncertlr.likelihoods import NormalPrediction
from uncertlr.metrics import LayerSpread, layer_spread

__all__: list[str] = []

Array = Any


def as_key(rng_key: Any) -> Array:
    """A JAX PRNG key from a key or an integer seed."""
    if isinstance(rng_key, (int, np.integer)):
        return jax.random.key(int(rng_key))
    return rng_key


def as_count(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an ``int`` >= ``minimum`` (never a bool); a ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def check_bnn(bnn: Any) -> None:
    """A TypeError unless ``bnn`` comes from :func:`uncertlr.jax.bayesian`."""
    if not isinstance(bnn, BNN):
        raise TypeError(f"bnn must come from uncertlr.jax.bayesian(...); got {type(bnn).__name__}")


class _Posterior:
    """What MCMC and SVI results share: predictions and summaries from parameter draws."""

    bnn: BNN

    def sample_parameters(self, num_samples: int | None = None, *, rng_key: Any = None) -> dict[str, Array]:
        raise NotImplementedError

    def _fixed(self) -> dict[str, Array]:
        return self.bnn.fixed_values()

    def _noise(self, draws: Mapping[str, Array]) -> Array | float | None:
        return draws.get(NOISE_SITE)

    def sample_outputs(self, x: Array, *, num_samples: int | None = None, rng_key: Any = None) -> Array:
        """Raw network outputs ``[S, N, ...]`` under ``S`` posterior draws (vectorised, jitted)."""
        x, _ = self.bnn.check_data(x)
        draws = self.sample_parameters(num_samples, rng_key=rng_key)
        weights = {n: draws[n] for n in self.bnn.random_names}
        return self.bnn.sample_outputs(weights, x, self._fixed())

    def predict(
        self, x: Array, *, num_samples: int | None = None, rng_key: Any = None
    ) -> Array | NormalPrediction:
        """Posterior predictive samples for inputs ``x[N, ...]``.

        Returns:
            classification: probabilities ``[S, N, C]``;
            regression: :class:`~uncertlr.likelihoods.NormalPrediction` with ``mean`` and
            ``variance`` ``[S, N, ...]`` (the noise variance of each draw).
        """
        x, _ = self.bnn.check_data(x)
        draws = self.sample_parameters(num_samples, rng_key=rng_key)
        weights = {n: draws[n] for n in self.bnn.random_names}
        out = self.bnn.sample_outputs(weights, x, self._fixed())
        if self.bnn.validate and not bool(jnp.isfinite(out).all()):
            raise ValueError(
                "the network's outputs are not finite (overflow; largest |x| = "
                f"{float(jnp.abs(x).max()):.3g}); standardise the inputs"
            )
        return self.bnn.to_prediction(out, self._noise(draws))

    def posterior_loc(self) -> dict[str, Array]:
        """Posterior mean of every random parameter, ``{name: array shaped like the parameter}``."""
        raise NotImplementedError

    def posterior_scale(self) -> dict[str, Array]:
        """Posterior std of every random parameter, ``{name: array shaped like the parameter}``."""
        raise NotImplementedError

    def posterior_spread(self) -> dict[str, LayerSpread]:
        """Per layer: mean posterior std and mean ``|μ|/σ`` (see :func:`uncertlr.metrics.layer_spread`)."""
        scale = {
            n: np.maximum(np.asarray(s), np.finfo(np.float32).tiny) for n, s in self.posterior_scale().items()
        }
        return layer_spread({n: np.asarray(v) for n, v in self.posterior_loc().items()}, scale)
