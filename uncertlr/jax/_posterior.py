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

from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uncertlr import likelihoods as _lik
from uncertlr.jax._predict import draws_per_chunk, free_device_memory
from uncertlr.jax.bnn import BNN, NOISE_SITE, PREDICT_CHUNK_ELEMENTS
from uncertlr.likelihoods import NormalPrediction
from uncertlr.metrics import LayerSpread, layer_spread

__all__: list[str] = []

Array = Any


def guide_pairs(keys: Any) -> dict[str, str]:
    """``{loc key: scale key}`` of the guide sites among ``keys``: ``{n}_loc``/``{n}_scale`` (mean-field)
    or ``{n}_auto_loc``/``{n}_auto_scale`` (``AutoNormal``), when both are present."""
    keys = set(keys)
    out = {}
    for k in keys:
        for loc, scale in (("_auto_loc", "_auto_scale"), ("_loc", "_scale")):
            if k.endswith(loc) and k[: -len(loc)] + scale in keys:
                out[k] = k[: -len(loc)] + scale
                break
    return out


def as_key(rng_key: Any) -> Array:
    """A JAX PRNG key from a key or an integer seed."""
    if isinstance(rng_key, (int, np.integer)):
        return jax.random.key(int(rng_key))
    return rng_key


class KeyStream:
    """A seeded stream of JAX keys for ``predict`` calls without ``rng_key`` (each call advances it); kept as
    numpy key data, so whatever holds it pickles.

    Example:
        >>> stream = KeyStream(0)
        >>> a, b = stream.next(None), stream.next(None)
        >>> bool((jax.random.key_data(a) != jax.random.key_data(b)).any()), stream.next(3) is not None
        (True, True)
    """

    def __init__(self, seed: int):
        self._data = np.asarray(jax.random.key_data(jax.random.key(seed)))

    def next(self, rng_key: Any) -> Array:
        """``rng_key`` as a key when given (an int seeds one), else the stream's next key."""
        if rng_key is not None:
            return as_key(rng_key)
        key, new = jax.random.split(jax.random.wrap_key_data(jnp.asarray(self._data)))
        self._data = np.asarray(jax.random.key_data(key))
        return new


def as_prediction(out: Array, likelihood: Any, variance: Any = None) -> Array | NormalPrediction:
    """Outputs ``[S, N, C]`` as the library's prediction: their softmax (categorical), or a ``NormalPrediction``
    of the outputs as means with the noise ``variance`` (a number, or anything that broadcasts to ``[S, 1, 1]``)."""
    if isinstance(likelihood, _lik.Categorical):
        return jax.nn.softmax(out, axis=-1)
    return NormalPrediction(out, jnp.broadcast_to(jnp.asarray(variance, dtype=out.dtype), out.shape))


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
    #: Whether ``sample_parameters`` draws fresh values (SVI) rather than picking stored ones (MCMC).
    _fresh_draws = False

    def _next_key(self, rng_key: Any) -> Array:
        return as_key(rng_key)

    def sample_parameters(self, num_samples: int | None = None, *, rng_key: Any = None) -> dict[str, Array]:
        raise NotImplementedError

    def _fixed(self) -> dict[str, Array]:
        return self.bnn.fixed_values()

    def _noise(self, draws: Mapping[str, Array]) -> Array | float | None:
        return draws.get(NOISE_SITE)

    def _draws(self, num_samples: int | None, rng_key: Any, x: Any = None) -> Iterator[dict[str, Array]]:
        """Posterior draws in chunks of at most ``PREDICT_CHUNK_ELEMENTS`` weights — more on an accelerator
        with the memory for them (:func:`~uncertlr.jax._predict.draws_per_chunk`; ``x`` says which device).
        Fresh draws are sampled chunk by chunk; stored ones, such as MCMC's, are sliced."""
        free = free_device_memory(x)

        def per_chunk(total: int) -> int:
            return draws_per_chunk(
                total, self.bnn.num_params, weight_elements=PREDICT_CHUNK_ELEMENTS, free_memory=free
            )

        count = None if num_samples is None else as_count("num_samples", num_samples)
        per = per_chunk(count) if count is not None else 1
        if not self._fresh_draws or count is None or count <= per:
            draws = self.sample_parameters(num_samples, rng_key=rng_key)
            total = int(next(iter(draws.values())).shape[0])
            if total != count:  # all stored draws: the chunk size for that many (asking the device once)
                per = per_chunk(total)
            for s in range(0, total, per):
                yield {k: v[s : s + per] for k, v in draws.items()}
            return
        keys = jax.random.split(self._next_key(rng_key), -(-count // per))
        for i, key in enumerate(keys):
            yield self.sample_parameters(min(per, count - i * per), rng_key=key)

    def _outputs(
        self, x: Array, num_samples: int | None, rng_key: Any, max_batch: int | None
    ) -> tuple[Array, Any]:
        outs, noises = [], []
        for draws in self._draws(num_samples, rng_key, x):
            weights = {n: draws[n] for n in self.bnn.random_names}
            outs.append(self.bnn.sample_outputs(weights, x, self._fixed(), max_batch=max_batch))
            noises.append(self._noise(draws))
        out = outs[0] if len(outs) == 1 else jnp.concatenate(outs)
        per_draw = noises[0] is not None and jnp.ndim(noises[0]) > 0
        return out, (jnp.concatenate(noises) if per_draw and len(noises) > 1 else noises[0])

    def sample_outputs(
        self, x: Array, *, num_samples: int | None = None, rng_key: Any = None, max_batch: int | None = None
    ) -> Array:
        """Raw network outputs ``[S, N, ...]`` under ``S`` posterior draws (vectorised, jitted, in bounded memory)."""
        x, _ = self.bnn.check_data(x)
        return self._outputs(x, num_samples, rng_key, max_batch)[0]

    def predict(
        self, x: Array, *, num_samples: int | None = None, rng_key: Any = None, max_batch: int | None = None
    ) -> Array | NormalPrediction:
        """Posterior predictive samples for inputs ``x[N, ...]``.

        Memory is bounded: draws are sampled and evaluated a chunk at a time and the inputs
        ``max_batch`` rows at a time (default: chosen from :data:`uncertlr._spec.MEMORY_BUDGET`; on a GPU or
        TPU from a share of its free memory where that budget would split the work).

        Returns:
            classification: probabilities ``[S, N, C]``;
            regression: :class:`~uncertlr.likelihoods.NormalPrediction` with ``mean`` and
            ``variance`` ``[S, N, ...]`` (the noise variance of each draw).
        """
        x, _ = self.bnn.check_data(x)
        out, noise = self._outputs(x, num_samples, rng_key, max_batch)
        if self.bnn.validate and not bool(jnp.isfinite(out).all()):
            raise ValueError(
                "the network's outputs are not finite (overflow; largest |x| = "
                f"{float(jnp.abs(x).max()):.3g}); standardise the inputs"
            )
        return self.bnn.to_prediction(out, noise)

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
