"""Inference for :class:`~uncertlr.jax.BNN`: NUTS/HMC (:func:`mcmc`) and stochastic VI (:func:`svi`).

Both return a result with the torch backend's uncertainty API:

* ``result.predict(x, num_samples=S)`` — probabilities ``[S, N, C]`` (classification) or a
  :class:`~uncertlr.likelihoods.NormalPrediction` with ``mean``/``variance`` ``[S, N, ...]``;
* ``result.sample_outputs(x, num_samples=S)`` — raw network outputs ``[S, N, ...]``;
* ``result.posterior_loc()`` / ``result.posterior_scale()`` — ``{name: array}`` shaped like
  the parameters; ``result.posterior_spread()`` — per-layer mean σ and ``|μ|/σ``.

:class:`MCMCResult` exposes the ``numpyro.infer.MCMC`` object as ``.mcmc`` (for
``arviz.from_numpyro``), the draws as ``.samples`` and the number of divergent
transitions as ``.num_divergences`` (a :class:`DivergenceWarning` is raised when it is not 0).
:class:`SVIResult` exposes ``.model``, ``.guide``, ``.params`` and the training ``.history``.

Nothing here is device-specific: chains and batches go wherever JAX puts them
(``chain_method="parallel"`` runs one chain per device; ``svi(..., data_parallel=True)``
splits each batch across all devices).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec
from numpyro import handlers
from numpyro.distributions import biject_to, constraints
from numpyro.infer import HMC, MCMC, NUTS, TraceMeanField_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.infer.initialization import init_to_sample, init_to_uniform, init_to_value

from uncertlr import likelihoods as _lik
from uncertlr import metrics
from uncertlr._progress import progress_bar
from uncertlr.jax.bnn import BNN, NOISE_SITE, ELBOTerms
from uncertlr.likelihoods import NormalPrediction
from uncertlr.metrics import LayerSpread, layer_spread

__all__ = ["DATA_AXIS", "DivergenceWarning", "MCMCResult", "SVIResult", "mcmc", "posterior_scale_args", "svi"]

Array = Any

#: Name of the device axis in data-parallel SVI (give it to collectives such as the modulator's ``axis_name``).
DATA_AXIS = "data"
#: Standard deviation of the per-chain jitter around the network's weights, in units of the prior std.
INIT_JITTER = 0.1

_KERNELS = {"nuts": NUTS, "hmc": HMC}
_CHAIN_METHODS = ("sequential", "vectorized", "parallel")
_SIGNALS = {
    "entropy": metrics.predictive_entropy,
    "mutual_information": metrics.mutual_information,
    "expected_entropy": metrics.expected_entropy,
}


class DivergenceWarning(UserWarning):
    """Some post-warm-up HMC/NUTS transitions diverged: the draws may not represent the posterior."""


def _key(rng_key: Any) -> Array:
    if isinstance(rng_key, (int, np.integer)):
        return jax.random.key(int(rng_key))
    return rng_key


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- common posterior API


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


# --------------------------------------------------------------------------- MCMC


class MCMCResult(_Posterior):
    """Draws from NUTS/HMC; create it with :func:`mcmc`.

    Attributes:
        bnn: the :class:`~uncertlr.jax.BNN`.
        mcmc: the ``numpyro.infer.MCMC`` object (``arviz.from_numpyro(result.mcmc)`` works).
        model: the NumPyro model that was sampled (``bnn.mcmc_model``).
        samples: ``{site: [num_chains * num_samples, *shape]}``, the random parameters
            (and ``noise_scale`` when the noise std is learned).
        num_divergences: divergent post-warm-up transitions, all chains together.
        divergences: per chain, ``[num_chains]``.
        seconds: wall time of warm-up and sampling (compilation included).
    """

    def __init__(self, bnn: BNN, sampler: MCMC, model: Callable[..., Any], seconds: float):
        self.bnn = bnn
        self.mcmc = sampler
        self.model = model
        self.seconds = float(seconds)
        self.samples: dict[str, Array] = sampler.get_samples()
        div = np.asarray(sampler.get_extra_fields(group_by_chain=True)["diverging"])
        self.divergences = div.sum(axis=1).astype(int)
        self.num_divergences = int(self.divergences.sum())

    @property
    def num_draws(self) -> int:
        """Total number of draws, all chains together."""
        return int(next(iter(self.samples.values())).shape[0])

    def get_samples(self, group_by_chain: bool = False) -> dict[str, Array]:
        """The draws, ``[C * D, ...]`` or ``[C, D, ...]`` with ``group_by_chain``."""
        return self.mcmc.get_samples(group_by_chain=group_by_chain)

    def sample_parameters(self, num_samples: int | None = None, *, rng_key: Any = None) -> dict[str, Array]:
        """``num_samples`` draws spread evenly over all chains (all of them when None); ``rng_key`` is unused."""
        total = self.num_draws
        if num_samples is None or num_samples == total:
            return dict(self.samples)
        num_samples = _positive_int("num_samples", num_samples)
        if num_samples > total:
            raise ValueError(
                f"num_samples={num_samples} exceeds the {total} MCMC draws; pass None for all of them"
            )
        idx = np.round(np.linspace(0, total - 1, num_samples)).astype(int)
        return {k: v[idx] for k, v in self.samples.items()}

    def posterior_loc(self) -> dict[str, Array]:
        return {n: self.samples[n].mean(0) for n in self.bnn.random_names}

    def posterior_scale(self) -> dict[str, Array]:
        return {n: self.samples[n].std(0) for n in self.bnn.random_names}

    def log_likelihood(self, x: Array, y: Array, *, group_by_chain: bool = True) -> Array:
        """Pointwise log-likelihood of ``(x, y)`` under every draw: ``[C, D, N]`` (or ``[C * D, N]``).

        For held-out data this is the input to predictive R-hat/ESS and to ``arviz`` LOO/WAIC.
        """
        x, y = self.bnn.check_data(x, y)
        out = self.bnn.sample_outputs({n: self.samples[n] for n in self.bnn.random_names}, x, self._fixed())
        ll = self.bnn.log_likelihood(out, y, self._noise(self.samples))
        if group_by_chain:
            ll = ll.reshape(self.mcmc.num_chains, -1, ll.shape[-1])
        return ll

    def __repr__(self) -> str:
        return (
            f"MCMCResult({self.mcmc.num_chains} chains x {self.mcmc.num_samples} draws, "
            f"divergences={self.num_divergences}, {self.seconds:.1f} s)"
        )


def _init_near_weights(bnn: BNN, num_chains: int, key: Array) -> dict[str, Array]:
    """Unconstrained initial values: the network's weights plus ``INIT_JITTER`` prior stds of noise, per chain."""
    out = {}
    keys = jax.random.split(key, len(bnn.random_names))
    for k, n in zip(keys, bnn.random_names):
        shape = bnn.shapes[n]
        w = bnn.network.values[n]
        noise = jax.random.normal(k, (num_chains, *shape), w.dtype) * (INIT_JITTER * bnn.prior_scale[n])
        out[n] = w + noise
    if bnn.learned_noise:
        out[NOISE_SITE] = jnp.full((num_chains,), math.log(bnn.likelihood.init_scale))  # type: ignore[union-attr]
    if num_chains == 1:
        out = {k: v[0] for k, v in out.items()}
    return out


def mcmc(
    bnn: BNN,
    x: Array,
    y: Array,
    *,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 1,
    kernel: str = "nuts",
    chain_method: str = "sequential",
    thinning: int = 1,
    init: str | Callable[..., Any] = "weights",
    kernel_options: Mapping[str, Any] | None = None,
    rng_key: Any = 0,
    progress: bool = True,
    jit_model_args: bool = False,
) -> MCMCResult:
    """Sample the posterior of ``bnn`` given all the data ``(x[N, ...], y[N, ...])`` with NUTS or HMC.

    Args:
        bnn: from :func:`uncertlr.jax.bayesian`, with ``num_data == N``.
        num_warmup, num_samples: per chain (step-size and mass-matrix adaptation happen in warm-up).
        num_chains: independent chains (>= 2 to compute R-hat).
        kernel: ``"nuts"`` or ``"hmc"``.
        chain_method: ``"sequential"``, ``"vectorized"`` (one program, chains batched) or
            ``"parallel"`` (one chain per device; on CPU set
            ``XLA_FLAGS=--xla_force_host_platform_device_count=K`` before JAX starts).
        thinning: keep every ``thinning``-th draw.
        init: ``"weights"`` (chains start at the network's weights plus a jitter of
            ``INIT_JITTER`` prior stds), ``"prior"`` (independent prior draws),
            ``"uniform"`` (NumPyro's default, uniform in ``[-2, 2]``) or a NumPyro init strategy.
        kernel_options: passed to ``NUTS``/``HMC`` (``target_accept_prob``, ``max_tree_depth``,
            ``dense_mass``, ``num_steps``, ...).
        rng_key: a JAX PRNG key or an integer seed.
        progress: NumPyro's progress bar (not shown for ``vectorized`` chains).
        jit_model_args: compile the sampler as a function of the data, so that
            ``result.mcmc.run(key, x2, y2)`` with same-shaped data reuses the compiled program
            (used by :class:`~uncertlr.jax.LastLayerMCMCSignal` refreshes).

    Returns:
        :class:`MCMCResult`. A :class:`DivergenceWarning` is emitted when any
        post-warm-up transition diverged; the count is in ``result.num_divergences``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from uncertlr import likelihoods, priors
        >>> from uncertlr.jax import bayesian, mcmc
        >>> x = jax.random.normal(jax.random.key(0), (20, 2)); y = x @ jnp.array([[1.0], [-2.0]])
        >>> bnn = bayesian(lambda p, x: x @ p["w"], params={"w": jnp.zeros((2, 1))}, num_data=20,
        ...                prior=priors.Normal(1.0), likelihood=likelihoods.Normal(scale=0.1))
        >>> res = mcmc(bnn, x, y, num_warmup=100, num_samples=100, progress=False)
        >>> res.predict(x, num_samples=10).mean.shape, res.num_divergences
        ((10, 20, 1), 0)
    """
    if not isinstance(bnn, BNN):
        raise TypeError(f"bnn must come from uncertlr.jax.bayesian(...); got {type(bnn).__name__}")
    num_chains = _positive_int("num_chains", num_chains)
    num_samples = _positive_int("num_samples", num_samples)
    num_warmup = _positive_int("num_warmup", num_warmup, minimum=0)
    thinning = _positive_int("thinning", thinning)
    if kernel not in _KERNELS:
        raise ValueError(f"kernel must be one of {sorted(_KERNELS)}; got {kernel!r}")
    if chain_method not in _CHAIN_METHODS:
        raise ValueError(f"chain_method must be one of {_CHAIN_METHODS}; got {chain_method!r}")
    x, y = bnn.check_data(x, y)
    if x.shape[0] != bnn.num_data:
        raise ValueError(
            f"MCMC conditions on the whole data set at every step: x has {x.shape[0]} rows but the BNN was "
            f"built with num_data={bnn.num_data}; build it with num_data={x.shape[0]}"
        )
    key_init, key_run = jax.random.split(_key(rng_key))
    init_params = None
    if init == "weights":
        # init_to_value takes constrained values (the noise std itself), init_params unconstrained ones
        first = _init_near_weights(bnn, 1, key_init)
        if NOISE_SITE in first:
            first[NOISE_SITE] = jnp.exp(first[NOISE_SITE])
        strategy = init_to_value(values=first)
        init_params = _init_near_weights(bnn, num_chains, key_init)
    elif init == "prior":
        strategy = init_to_sample
    elif init == "uniform":
        strategy = init_to_uniform
    elif callable(init):
        strategy = init
    else:
        raise ValueError(
            f"init must be 'weights', 'prior', 'uniform' or a NumPyro init strategy; got {init!r}"
        )
    model = bnn.mcmc_model
    sampler_kernel = _KERNELS[kernel](model, init_strategy=strategy, **dict(kernel_options or {}))
    sampler = MCMC(
        sampler_kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method=chain_method,
        thinning=thinning,
        progress_bar=progress,
        jit_model_args=jit_model_args,
    )
    t0 = time.perf_counter()
    sampler.run(
        key_run, x, y, init_params=init_params, extra_fields=("energy", "potential_energy", "num_steps")
    )
    jax.block_until_ready(sampler.get_samples())
    result = MCMCResult(bnn, sampler, model, time.perf_counter() - t0)
    if result.num_divergences:
        total = num_chains * (num_samples // thinning if thinning > 1 else num_samples)
        warnings.warn(
            f"{result.num_divergences} of {total} post-warm-up transitions diverged "
            f"(per chain: {result.divergences.tolist()}); the draws may miss parts of the posterior. "
            "Raise target_accept_prob (kernel_options={'target_accept_prob': 0.95}), use a longer warm-up, "
            "or a tighter prior",
            DivergenceWarning,
            stacklevel=2,
        )
    return result


# --------------------------------------------------------------------------- SVI


def _param_sites(fn: Callable[..., Any], key: Array, *args: Any) -> dict[str, tuple[Array, Any]]:
    tr = handlers.trace(handlers.seed(fn, key)).get_trace(*args)
    return {
        name: (site["value"], site["kwargs"].get("constraint", constraints.real))
        for name, site in tr.items()
        if site["type"] == "param"
    }


def _learning_rate(opt_state: Any) -> float:
    """The learning rate when the optimizer exposes it (``optax.inject_hyperparams``), else NaN."""
    for leaf in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda s: hasattr(s, "hyperparams")):
        if hasattr(leaf, "hyperparams") and "learning_rate" in leaf.hyperparams:
            return float(leaf.hyperparams["learning_rate"])
    return math.nan


class SVIResult(_Posterior):
    """A fitted variational posterior; create it with :func:`svi`.

    Attributes:
        bnn: the :class:`~uncertlr.jax.BNN`.
        model, guide: the NumPyro model (``bnn.model``) and guide that were fitted.
        guide_kind: ``"meanfield"`` or ``"auto_normal"``.
        params: the fitted parameters by NumPyro site name (constrained values), so
            ``numpyro.infer.Predictive(result.model, guide=result.guide, params=result.params)`` works.
        opt_state: the optimizer's final state.
        history: one record per step: ``step``, ``epoch``, ``loss`` (negative ELBO per data
            point), ``lr`` (NaN unless the optimizer exposes it), ``nll``/``kl`` (mean-field
            guide) and ``signal`` (when a signal was requested).
        seconds: wall time of the fit (compilation included).
    """

    def __init__(
        self,
        bnn: BNN,
        guide: Any,
        guide_kind: str,
        params: dict[str, Array],
        opt_state: Any,
        history: list[dict[str, float]],
        seconds: float,
        rng_key: Array,
    ):
        self.bnn = bnn
        self.model = bnn.model
        self.guide = guide
        self.guide_kind = guide_kind
        self.params = params
        self.opt_state = opt_state
        self.history = history
        self.seconds = float(seconds)
        self._rng_key = rng_key

    @property
    def losses(self) -> np.ndarray:
        """The loss of every step, ``[num_steps]``."""
        return np.array([h["loss"] for h in self.history])

    def _next_key(self, rng_key: Any) -> Array:
        if rng_key is not None:
            return _key(rng_key)
        self._rng_key, key = jax.random.split(self._rng_key)
        return key

    def _fixed(self) -> dict[str, Array]:
        return {n: self.params[n] for n in self.bnn.fixed_names}

    def _noise(self, draws: Mapping[str, Array]) -> Array | float | None:
        return self.params.get(NOISE_SITE)

    def sample_parameters(self, num_samples: int | None = 32, *, rng_key: Any = None) -> dict[str, Array]:
        """``{name: [num_samples, *shape]}`` draws from the guide (fresh ones each call unless ``rng_key`` is given)."""
        num_samples = _positive_int("num_samples", 32 if num_samples is None else num_samples)
        key = self._next_key(rng_key)
        if self.guide_kind == "auto_normal":
            draws = self.guide.sample_posterior(key, self.params, sample_shape=(num_samples,))
            return {n: draws[n] for n in self.bnn.random_names}
        keys = jax.random.split(key, len(self.bnn.random_names))
        loc, scale = self.posterior_loc(), self.posterior_scale()
        return {
            n: loc[n] + scale[n] * jax.random.normal(k, (num_samples, *self.bnn.shapes[n]), loc[n].dtype)
            for k, n in zip(keys, self.bnn.random_names)
        }

    def sample_outputs(self, x: Array, *, num_samples: int | None = 32, rng_key: Any = None) -> Array:
        return super().sample_outputs(x, num_samples=num_samples, rng_key=rng_key)

    def predict(
        self, x: Array, *, num_samples: int | None = 32, rng_key: Any = None
    ) -> Array | NormalPrediction:
        return super().predict(x, num_samples=num_samples, rng_key=rng_key)

    def posterior_loc(self) -> dict[str, Array]:
        suffix = "_auto_loc" if self.guide_kind == "auto_normal" else "_loc"
        return {n: self.params[n + suffix] for n in self.bnn.random_names}

    def posterior_scale(self) -> dict[str, Array]:
        suffix = "_auto_scale" if self.guide_kind == "auto_normal" else "_scale"
        return {n: self.params[n + suffix] for n in self.bnn.random_names}

    def __repr__(self) -> str:
        last = self.history[-1]["loss"] if self.history else math.nan
        return f"SVIResult({self.guide_kind}, {len(self.history)} steps, final loss {last:.4g}, {self.seconds:.1f} s)"


def posterior_scale_args(params: Mapping[str, Array]) -> dict[str, dict[str, Array]]:
    """``{"posterior_scale": tree}`` for :func:`svi`'s ``extra_args``: σ of each weight's guide, shaped like the updates.

    Each guide mean ``{name}_loc`` (``{name}_auto_loc`` for ``AutoNormal``) gets its guide's std;
    every other parameter (the stds themselves, deterministic parameters, a learned noise)
    gets ones, i.e. no relative preference within that tensor.

    Example:
        >>> import jax.numpy as jnp
        >>> tree = posterior_scale_args({"w_loc": jnp.zeros(2), "w_scale": jnp.full(2, 0.1), "b": jnp.zeros(1)})
        >>> {k: [round(x, 3) for x in v.tolist()] for k, v in tree["posterior_scale"].items()}
        {'w_loc': [0.1, 0.1], 'w_scale': [1.0, 1.0], 'b': [1.0]}
    """
    out = {}
    for k, v in params.items():
        for loc, scale in (("_auto_loc", "_auto_scale"), ("_loc", "_scale")):
            if k.endswith(loc) and k[: -len(loc)] + scale in params:
                out[k] = params[k[: -len(loc)] + scale]
                break
        else:
            out[k] = jnp.ones_like(v)
    return {"posterior_scale": out}


def _signal_fn(signal: Any, bnn: BNN) -> Callable[[Array], Array] | None:
    if signal is None:
        return None
    if callable(signal):
        return signal
    if signal not in _SIGNALS:
        raise ValueError(
            f"signal must be one of {sorted(_SIGNALS)} or a callable outputs -> scalar; got {signal!r}"
        )
    if not isinstance(bnn.likelihood, _lik.Categorical):
        raise ValueError(
            f"signal={signal!r} needs a classifier; pass a callable outputs[K, B, ...] -> scalar"
        )
    fn = _SIGNALS[signal]
    return lambda outputs: jnp.mean(fn(jax.nn.softmax(outputs, axis=-1)))


def svi(
    bnn: BNN,
    x: Array,
    y: Array,
    *,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    batch_size: int | None = None,
    num_particles: int = 1,
    guide: str = "meanfield",
    signal: str | Callable[[Array], Array] | None = None,
    extra_args: Callable[[dict[str, Array]], Mapping[str, Any]] | None = None,
    data_parallel: bool = False,
    init_params: Mapping[str, Array] | None = None,
    rng_key: Any = 0,
    progress: Any = True,
) -> SVIResult:
    """Fit a variational posterior to ``bnn`` by minibatch stochastic VI with any optax optimizer.

    Each step draws ``num_particles`` weight samples (reparameterised), takes the gradient
    of the negative ELBO per data point and applies ``optimizer``. Batches are drawn
    without replacement in epochs of ``N // batch_size`` steps (the remainder of each
    shuffled epoch is skipped, so every batch has the same shape and nothing recompiles).

    Args:
        bnn: from :func:`uncertlr.jax.bayesian`, with ``num_data == N``.
        optimizer: any ``optax.GradientTransformation``. When ``signal`` is given, the
            optimizer's ``update`` receives it as ``uncertainty=...`` (for
            ``GradientTransformationExtraArgs`` such as the LR modulator's transformations).
        num_steps: optimizer steps.
        batch_size: rows per step (default: all, i.e. full-batch VI).
        num_particles: weight draws per step.
        guide: ``"meanfield"`` (``bnn.guide``: the torch backend's family, analytic KL) or
            ``"auto_normal"`` (NumPyro's ``AutoNormal`` with ``TraceMeanField_ELBO``, means
            started at the network's weights).
        signal: ``"entropy"``, ``"mutual_information"`` (needs ``num_particles >= 2``),
            ``"expected_entropy"`` — the batch mean under this step's particles — or a
            callable ``outputs[K, B, ...] -> scalar``; recorded in ``history`` and passed to the optimizer.
        extra_args: ``extra_args(params) -> {name: value}``, called inside the jitted step with
            the current (constrained) parameters; its entries are passed to the optimizer's
            ``update`` as keyword arguments — e.g. :func:`posterior_scale_args` gives
            ``posterior_scale=`` (the guide's σ, shaped like the updates) for the modulator's
            per-parameter ``scale_by_grad_uncertainty``.
        data_parallel: split each batch across all devices (``jax.shard_map`` over the
            axis :data:`DATA_AXIS`); gradients and losses are averaged with ``pmean``. The
            signal is passed per device: give the modulator ``axis_name=DATA_AXIS``.
        init_params: start from these parameters (e.g. a previous ``result.params``).
        rng_key: a JAX PRNG key or an integer seed.
        progress: True for a progress bar, False for none, or a ``rich.progress.Progress``.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from uncertlr import priors
        >>> from uncertlr.jax import bayesian, svi
        >>> x = jax.random.normal(jax.random.key(0), (64, 3)); y = (x[:, 0] > 0).astype(jnp.int32)
        >>> bnn = bayesian(lambda p, x: x @ p["w"] + p["b"], params={"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)},
        ...                num_data=64, prior=priors.Normal(1.0))
        >>> res = svi(bnn, x, y, optimizer=optax.adam(0.05), num_steps=200, batch_size=16, progress=False)
        >>> res.predict(x, num_samples=8).shape, bool(res.losses[-20:].mean() < res.losses[:20].mean())
        ((8, 64, 2), True)
    """
    if not isinstance(bnn, BNN):
        raise TypeError(f"bnn must come from uncertlr.jax.bayesian(...); got {type(bnn).__name__}")
    num_steps = _positive_int("num_steps", num_steps, minimum=0)
    num_particles = _positive_int("num_particles", num_particles)
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax.GradientTransformation; got {type(optimizer).__name__}")
    x, y = bnn.check_data(x, y)
    n = x.shape[0]
    if n != bnn.num_data:
        raise ValueError(
            f"x has {n} rows but the BNN was built with num_data={bnn.num_data}; the likelihood of each batch "
            "is scaled by num_data, so build the BNN with the training-set size"
        )
    batch_size = n if batch_size is None else _positive_int("batch_size", batch_size)
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the {n} rows of x")
    devices = jax.devices()
    if data_parallel and batch_size % len(devices):
        raise ValueError(
            f"data_parallel splits each batch across {len(devices)} devices: "
            f"batch_size={batch_size} must be a multiple of {len(devices)}"
        )
    sig_fn = _signal_fn(signal, bnn)
    if signal == "mutual_information" and num_particles < 2:
        raise ValueError(
            "signal='mutual_information' needs num_particles >= 2 (it measures disagreement between draws)"
        )

    key = _key(rng_key)
    key, k_init, k_order = jax.random.split(key, 3)
    xb0, yb0 = x[:batch_size], y[:batch_size]
    if guide == "meanfield":
        guide_fn: Any = bnn.guide

        def loss_fn(params: Mapping[str, Array], k: Array, xb: Array, yb: Array) -> ELBOTerms:
            return bnn.elbo(params, k, xb, yb, num_particles=num_particles)
    elif guide == "auto_normal":
        guide_fn = AutoNormal(
            bnn.model, init_loc_fn=init_to_value(values=bnn.initial_values()), init_scale=bnn.init_scale
        )
        elbo = TraceMeanField_ELBO(num_particles=num_particles)

        def loss_fn(params: Mapping[str, Array], k: Array, xb: Array, yb: Array) -> ELBOTerms:
            k1, k2 = jax.random.split(k)
            value = elbo.loss(k1, params, bnn.model, guide_fn, xb, yb) / bnn.num_data
            outputs = None
            if sig_fn is not None:
                draws = guide_fn.sample_posterior(k2, params, sample_shape=(num_particles,))
                fixed = {nm: params[nm] for nm in bnn.fixed_names}
                outputs = jax.vmap(lambda w: bnn.apply(w, xb, fixed))(
                    {nm: draws[nm] for nm in bnn.random_names}
                )
            nan = jnp.full((), jnp.nan)
            return ELBOTerms(value, nan, nan, outputs)
    else:
        raise ValueError(f"guide must be 'meanfield' or 'auto_normal'; got {guide!r}")

    sites = {**_param_sites(bnn.model, k_init, xb0, yb0), **_param_sites(guide_fn, k_init, xb0, yb0)}
    if init_params is not None:
        missing = sorted(set(sites) - set(init_params))
        if missing:
            raise ValueError(f"init_params lacks the parameters {missing[:5]}")
        sites = {s: (jnp.asarray(init_params[s]), c) for s, (_, c) in sites.items()}
    transforms = {s: biject_to(c) for s, (_, c) in sites.items()}
    u = {s: transforms[s].inv(v) for s, (v, _) in sites.items()}

    def constrain(uu: Mapping[str, Array]) -> dict[str, Array]:
        return {s: transforms[s](v) for s, v in uu.items()}

    tx = optax.with_extra_args_support(optimizer)
    opt_state = tx.init(u)
    axis = DATA_AXIS if data_parallel else None

    def step(uu: Any, state: Any, k: Array, xb: Array, yb: Array) -> tuple[Any, Any, Array]:
        if axis is not None:
            k = jax.random.fold_in(k, jax.lax.axis_index(axis))

        def objective(v: Any) -> tuple[Array, ELBOTerms]:
            terms = loss_fn(constrain(v), k, xb, yb)
            return terms.loss, terms

        (_, terms), grads = jax.value_and_grad(objective, has_aux=True)(uu)
        stats = jnp.stack([terms.loss, terms.nll, terms.kl])
        if axis is not None:
            grads, stats = jax.lax.pmean((grads, stats), axis)
        extra = dict(extra_args(constrain(uu))) if extra_args is not None else {}
        sig = jnp.full((), jnp.nan)
        if sig_fn is not None:
            local = sig_fn(terms.outputs)
            extra["uncertainty"] = local
            sig = jax.lax.pmean(local, axis) if axis is not None else local
        updates, state = tx.update(grads, state, uu, **extra)
        return optax.apply_updates(uu, updates), state, jnp.concatenate([stats, sig[None]])

    if data_parallel:
        mesh = Mesh(np.array(devices), (DATA_AXIS,))
        rep, split = PartitionSpec(), PartitionSpec(DATA_AXIS)
        step = jax.shard_map(
            step, mesh=mesh, in_specs=(rep, rep, rep, split, split), out_specs=(rep, rep, rep)
        )
    step = jax.jit(step)

    steps_per_epoch = n // batch_size
    order_rng = np.random.default_rng(np.asarray(jax.random.key_data(k_order)).ravel().tolist())
    history: list[dict[str, float]] = []
    own = progress is True
    bar = progress_bar() if own else (progress or None)
    task = bar.add_task(f"SVI ({guide})", total=num_steps, info="") if bar is not None else None
    if own:
        bar.start()
    t0 = time.perf_counter()
    try:
        order = np.arange(n)
        for i in range(num_steps):
            epoch, j = divmod(i, steps_per_epoch)
            if j == 0 and batch_size < n:
                order = order_rng.permutation(n)
            idx = order[j * batch_size : (j + 1) * batch_size]
            key, k = jax.random.split(key)
            try:
                u, opt_state, stats = step(u, opt_state, k, x[idx], y[idx])
            except Exception as exc:  # noqa: BLE001 - re-raised with the likely cause
                if data_parallel and ("vma" in str(exc).lower() or "varying" in str(exc).lower()):
                    raise ValueError(
                        "under data_parallel=True the optimizer's update varies across devices: an optimizer that "
                        f"uses the signal must average it over the device axis (axis_name={DATA_AXIS!r})"
                    ) from exc
                raise
            loss, nll, kl, sig = (float(v) for v in np.asarray(stats))
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss} at step {i}; lower the learning rate or check the data"
                )
            rec = {"step": float(i), "epoch": float(epoch), "loss": loss, "lr": _learning_rate(opt_state)}
            if guide == "meanfield":
                rec.update(nll=nll, kl=kl)
            if sig_fn is not None:
                rec["signal"] = sig
            history.append(rec)
            if bar is not None:
                bar.update(task, advance=1, info=f"loss {loss:.4f}")
    finally:
        if own:
            bar.stop()
    seconds = time.perf_counter() - t0
    return SVIResult(bnn, guide_fn, guide, constrain(u), opt_state, history, seconds, key)
