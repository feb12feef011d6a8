"""NUTS/HMC for :class:`~uncertlr.jax.BNN`: :func:`mcmc` and its result, :class:`MCMCResult`.

:class:`MCMCResult` has the uncertainty API every result shares (``predict``,
``sample_outputs``, ``posterior_loc``/``posterior_scale``/``posterior_spread``) and exposes
the ``numpyro.infer.MCMC`` object as ``.mcmc`` (for ``arviz.from_numpyro``), the draws as
``.samples`` and the number of divergent transitions as ``.num_divergences`` (a
:class:`DivergenceWarning` is raised when it is not 0).

``devices=`` chooses where: ``chain_method="parallel"`` runs one chain per device (default:
the first ``num_chains`` visible devices), the other chain methods run on one device (default:
JAX's default device).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import HMC, MCMC, NUTS
from numpyro.infer.initialization import init_to_sample, init_to_uniform, init_to_value

from uncertlr.jax._posterior import _Posterior, as_count, as_key, check_bnn
from uncertlr.jax.bnn import BNN, NOISE_SITE

__all__ = ["INIT_JITTER", "DivergenceWarning", "MCMCResult", "mcmc"]

Array = Any

#: Standard deviation of the per-chain jitter around the network's weights, in units of the prior std.
INIT_JITTER = 0.1

_KERNELS = {"nuts": NUTS, "hmc": HMC}
_CHAIN_METHODS = ("sequential", "vectorized", "parallel")


class DivergenceWarning(UserWarning):
    """Some post-warm-up HMC/NUTS transitions diverged: the draws may not represent the posterior."""


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
        num_samples = as_count("num_samples", num_samples)
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
    devices: Sequence[Any] | None = None,
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
        devices: with ``chain_method="parallel"``, the devices to run one chain each on (at
            least ``num_chains``; default: all visible); otherwise the one device to run on
            (default: JAX's default device). GPUs and TPUs are chosen the same way
            (``jax.devices("gpu")``).

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
    check_bnn(bnn)
    num_chains = as_count("num_chains", num_chains)
    num_samples = as_count("num_samples", num_samples)
    num_warmup = as_count("num_warmup", num_warmup, minimum=0)
    thinning = as_count("thinning", thinning)
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
    method, device = _chain_devices(chain_method, num_chains, devices)
    key_init, key_run = jax.random.split(as_key(rng_key))
    strategy, init_params = _init_strategy(bnn, init, num_chains, key_init)
    model = bnn.mcmc_model
    sampler_kernel = _KERNELS[kernel](model, init_strategy=strategy, **dict(kernel_options or {}))
    sampler = MCMC(
        sampler_kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method=method,
        thinning=thinning,
        progress_bar=progress and not callable(method),
        jit_model_args=jit_model_args,
    )
    t0 = time.perf_counter()
    with jax.default_device(device) if device is not None else contextlib.nullcontext():
        if device is not None:
            x, y, init_params = jax.device_put((x, y, init_params), device)
        sampler.run(
            key_run, x, y, init_params=init_params, extra_fields=("energy", "potential_energy", "num_steps")
        )
        jax.block_until_ready(sampler.get_samples())
    result = MCMCResult(bnn, sampler, model, time.perf_counter() - t0)
    if result.num_divergences:
        _warn_divergences(result, num_chains * (num_samples // thinning if thinning > 1 else num_samples))
    return result


def _chain_devices(
    chain_method: str, num_chains: int, devices: Sequence[Any] | None
) -> tuple[str | Callable[..., Any], Any]:
    """NumPyro's ``chain_method`` (a ``pmap`` over the chosen devices) and the one device of the other methods."""
    if devices is None:
        return chain_method, None
    devices = list(devices)
    if not devices or not all(isinstance(d, jax.Device) for d in devices):
        raise ValueError(f"devices must be a non-empty list of jax devices (jax.devices()); got {devices!r}")
    if chain_method == "parallel":
        if len(devices) < num_chains:
            raise ValueError(
                f"chain_method='parallel' runs one chain per device: {num_chains} chains need {num_chains} "
                f"devices, got {len(devices)}"
            )
        return functools.partial(jax.pmap, devices=devices[:num_chains]), None
    if len(devices) != 1:
        raise ValueError(
            f"chain_method={chain_method!r} runs on one device; got {len(devices)} "
            "(use chain_method='parallel' for one chain per device)"
        )
    return chain_method, devices[0]


def _init_strategy(
    bnn: BNN, init: str | Callable[..., Any], num_chains: int, key: Array
) -> tuple[Callable[..., Any], dict[str, Array] | None]:
    """NumPyro's ``init_strategy`` for ``init``, and the per-chain unconstrained ``init_params`` (or None)."""
    if init == "weights":
        # init_to_value takes constrained values (the noise std itself), init_params unconstrained ones
        first = _init_near_weights(bnn, 1, key)
        if NOISE_SITE in first:
            first[NOISE_SITE] = jnp.exp(first[NOISE_SITE])
        return init_to_value(values=first), _init_near_weights(bnn, num_chains, key)
    if init == "prior":
        return init_to_sample, None
    if init == "uniform":
        return init_to_uniform, None
    if callable(init):
        return init, None
    raise ValueError(f"init must be 'weights', 'prior', 'uniform' or a NumPyro init strategy; got {init!r}")


def _warn_divergences(result: MCMCResult, total: int) -> None:
    """A :class:`DivergenceWarning` pointing at the caller of :func:`mcmc`."""
    warnings.warn(
        f"{result.num_divergences} of {total} post-warm-up transitions diverged "
        f"(per chain: {result.divergences.tolist()}); the draws may miss parts of the posterior. "
        "Raise target_accept_prob (kernel_options={'target_accept_prob': 0.95}), use a longer warm-up, "
        "or a tighter prior",
        DivergenceWarning,
        stacklevel=3,
    )
