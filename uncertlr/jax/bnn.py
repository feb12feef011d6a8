"""Bayesian neural networks from Flax, Equinox or plain JAX networks, as NumPyro models.

``bayesian(net, ...)`` reads the network's parameters (it never changes ``net``), makes
the selected ones random with a prior from :mod:`uncertlr.priors`, and returns a
:class:`BNN` holding

* ``bnn.model(x, y=None)`` — a NumPyro model: one ``numpyro.sample`` site per random
  parameter, named like it (``"Dense_0.kernel"``, ``"layers.0.weight"``), a
  ``numpyro.param`` site for every other parameter (trained by SVI, fixed under MCMC),
  and the observation site ``obs`` in a subsampled ``data`` plate of size ``num_data``;
* ``bnn.guide(x, y=None)`` — the mean-field Normal guide (means start at the network's
  weights, std ``init_scale``), the same family as the torch backend's;
* ``bnn.elbo(params, rng_key, x, y)`` — the negative ELBO of that guide per data point
  (analytic KL where it exists) as :class:`ELBOTerms`, jittable, like the torch backend's
  ``bnn.elbo``.

Run inference with :func:`uncertlr.jax.mcmc` (NUTS/HMC) or :func:`uncertlr.jax.svi`;
both return results with ``predict(x, num_samples=S)`` giving ``[S, N, C]`` probabilities
(or :class:`~uncertlr.likelihoods.NormalPrediction` for regression), exactly as the torch
backend, for :mod:`uncertlr.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions import constraints

from uncertlr import _spec
from uncertlr import likelihoods as _lik
from uncertlr import priors as _priors
from uncertlr._spec import ELBOTerms, bnn_spec, device_chunk_plan, positive_int
from uncertlr.jax import _validation
from uncertlr.jax._networks import FanIn, Network, as_network
from uncertlr.jax._predict import activation_bytes_per_row, free_device_memory
from uncertlr.likelihoods import NormalPrediction
from uncertlr.select import Predicate, Selector

__all__ = ["BNN", "NOISE_SITE", "ELBOTerms", "bayesian"]

Array = Any

#: Name of the learned observation-noise std (a ``numpyro.param`` under SVI, a sample site under MCMC).
NOISE_SITE = "noise_scale"
#: Upper bound on ``num_samples * P`` weight elements evaluated at once by ``sample_outputs``.
PREDICT_CHUNK_ELEMENTS = 2**25


class BNN:
    """A Bayesian version of a JAX network; create it with :func:`bayesian`.

    Attributes:
        network: the network in functional form (:class:`uncertlr.jax._networks.Network`).
        prior, likelihood, num_data, kl_weight, init_scale, antithetic: as given to :func:`bayesian`.
        random_names: the random parameters, in registration order.
        fixed_names: the deterministic parameters.
    """

    def __init__(
        self,
        network: Network,
        *,
        prior: _priors.Prior,
        likelihood: _lik.Categorical | _lik.Normal,
        select: Selector,
        num_data: int,
        init_scale: float,
        kl_weight: float,
        validate: bool,
        antithetic: bool = True,
    ):
        self.network = network
        self.prior = prior
        self.likelihood = likelihood
        self.num_data = int(num_data)
        self.init_scale = float(init_scale)
        self.kl_weight = float(kl_weight)
        self.validate = bool(validate)
        self.antithetic = bool(antithetic)
        bound = select.bind(list(network.names))
        self.random_names: list[str] = [n for n in network.names if bound(n, network.owners[n])]
        if not self.random_names:
            hint = (
                " (flax.linen modules pass module=None to select: select by name)"
                if network.kind == "flax.linen"
                else ""
            )
            raise ValueError(
                f"select={select!r} chose none of the network's parameters {list(network.names)[:6]}...{hint}"
            )
        self.fixed_names: list[str] = [n for n in network.names if n not in self.random_names]
        reserved = (
            {NOISE_SITE, "obs", "data"}
            | {f"{n}_loc" for n in self.random_names}
            | {f"{n}_scale" for n in self.random_names}
        )
        clash = sorted(reserved & set(network.names))
        if clash:
            raise ValueError(f"parameter names clash with the BNN's own site names: {clash}")
        self.prior_scale = {n: float(prior.scale_for(network.fan_in[n])) for n in self.random_names}
        self._outputs_jit: dict[int, Callable[..., Array]] = {}

    # ------------------------------------------------------------------ introspection

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every random parameter."""
        return {n: tuple(self.network.values[n].shape) for n in self.random_names}

    @property
    def num_params(self) -> int:
        """Number of random weights ``P``."""
        return sum(math.prod(s) for s in self.shapes.values())

    @property
    def learned_noise(self) -> bool:
        return isinstance(self.likelihood, _lik.Normal) and self.likelihood.learned

    def initial_values(self) -> dict[str, Array]:
        """The network's current value of every random parameter (the guide's initial means)."""
        return {n: self.network.values[n] for n in self.random_names}

    def fixed_values(self) -> dict[str, Array]:
        """The network's current value of every deterministic parameter."""
        return {n: self.network.values[n] for n in self.fixed_names}

    def prior_distribution(self, name: str) -> dist.Distribution:
        """The prior of one random parameter (all its axes are event axes)."""
        shape = self.shapes[name]
        pr = self.prior
        if isinstance(pr, _priors.ScaleMixtureNormal):
            mix = dist.MixtureSameFamily(
                dist.Categorical(probs=jnp.array([pr.pi, 1.0 - pr.pi])),
                dist.Normal(jnp.zeros(2), jnp.array([pr.scale1, pr.scale2])),
            )
            return mix.expand(shape).to_event(len(shape))
        loc = self.network.values[name] if pr.centered else jnp.full(shape, float(pr.loc))
        return dist.Normal(loc, self.prior_scale[name]).to_event(len(shape))

    def initial_params(self) -> dict[str, Array]:
        """Where SVI with the mean-field guide starts: every ``numpyro.param`` site of ``model`` and ``guide``.

        ``{name}_loc`` at the network's weights, ``{name}_scale`` at ``init_scale``, every
        deterministic parameter at the network's value and ``noise_scale`` (when the noise
        std is learned) at the likelihood's ``init_scale`` — constrained values, the same
        sites NumPyro's ``SVI`` finds by tracing ``model`` and ``guide``, without tracing them.
        """
        out: dict[str, Array] = {}
        for n in self.random_names:
            v = self.network.values[n]
            out[f"{n}_loc"] = v
            out[f"{n}_scale"] = np.full(v.shape, self.init_scale, v.dtype)  # numpy: no eager XLA op
        out.update(self.fixed_values())
        if self.learned_noise:
            out[NOISE_SITE] = np.asarray(self.likelihood.init_scale, np.float32)  # type: ignore[union-attr]
        return out

    def param_constraints(self) -> dict[str, Any]:
        """The NumPyro constraint of every site in :meth:`initial_params` (positive for stds, real otherwise)."""
        out = {f"{n}_loc": constraints.real for n in self.random_names}
        out.update({f"{n}_scale": constraints.positive for n in self.random_names})
        out.update({n: constraints.real for n in self.fixed_names})
        if self.learned_noise:
            out[NOISE_SITE] = constraints.positive
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_outputs_jit"] = {}  # compiled functions are rebuilt on first use
        for key in [k for k in state if k.startswith("_svi_")]:  # uncertlr.jax.svi's caches, likewise
            del state[key]
        return state

    # ------------------------------------------------------------------ forward passes

    def apply(
        self, weights: Mapping[str, Array], x: Array, fixed: Mapping[str, Array] | None = None
    ) -> Array:
        """Network outputs ``[N, ...]`` for one draw of the random parameters ``{name: array}``.

        ``fixed`` overrides the deterministic parameters (default: the network's values).
        """
        vals = dict(self.network.values)
        if fixed:
            vals.update({n: fixed[n] for n in self.fixed_names if n in fixed})
        vals.update(weights)
        return self.network.apply(vals, x)

    def sample_outputs(
        self,
        samples: Mapping[str, Array],
        x: Array,
        fixed: Mapping[str, Array] | None = None,
        *,
        max_batch: int | None = None,
    ) -> Array:
        """Outputs ``[S, N, ...]`` for parameter draws ``{name: [S, *shape]}``, vectorised, in bounded memory.

        Draws go through ``jax.lax.map`` a chunk at a time (at most ``PREDICT_CHUNK_ELEMENTS``
        weights at once) and the inputs ``max_batch`` rows at a time (default: as many as keep
        the activations under :data:`uncertlr._spec.MEMORY_BUDGET`, measured on the network's jaxpr).
        On a GPU or TPU both budgets grow to a share of its free memory where they would split the work
        (:func:`uncertlr._spec.device_chunk_plan`).
        """
        num, n = int(next(iter(samples.values())).shape[0]), int(x.shape[0])
        row_bytes = (
            1
            if max_batch is not None
            else activation_bytes_per_row(self.network.apply, self.network.values, x)
        )
        plan = device_chunk_plan(
            free_device_memory(x),  # on an accelerator, larger passes where the CPU budgets would split
            num_samples=num,
            num_rows=n,
            num_params=self.num_params,
            row_bytes=row_bytes,
            weight_elements=PREDICT_CHUNK_ELEMENTS,
            memory_budget=_spec.MEMORY_BUDGET,
            max_batch=None if max_batch is None else positive_int("max_batch", max_batch),
            element_size=int(np.dtype(next(iter(samples.values())).dtype).itemsize),
        )
        if plan.draws not in self._outputs_jit:
            chunk = plan.draws

            def run(samples: dict[str, Array], x: Array, fixed: dict[str, Array]) -> Array:
                return jax.lax.map(lambda w: self.apply(w, x, fixed), samples, batch_size=chunk)

            self._outputs_jit[plan.draws] = jax.jit(run)
        run_jit, samples, fixed = self._outputs_jit[plan.draws], dict(samples), dict(fixed or {})
        if plan.rows >= n:
            return run_jit(samples, x, fixed)
        pad = -n % plan.rows  # every chunk the same shape: one compilation (the pad repeats real rows)
        xp = jnp.concatenate([x, x[:pad]]) if pad else x
        parts = [run_jit(samples, xp[r : r + plan.rows], fixed) for r in range(0, n + pad, plan.rows)]
        return jnp.concatenate(parts, axis=1)[:, :n]

    def to_prediction(
        self, outputs: Array, noise_scale: Array | float | None = None
    ) -> Array | NormalPrediction:
        """Turn outputs ``[S, N, ...]`` into probabilities ``[S, N, C]`` or a :class:`NormalPrediction`.

        ``noise_scale`` is a scalar or one value per sample ``[S]`` (regression only).
        """
        if isinstance(self.likelihood, _lik.Categorical):
            return jax.nn.softmax(outputs, axis=-1)
        if noise_scale is None:
            noise_scale = (
                self.likelihood.scale if self.likelihood.scale is not None else self.likelihood.init_scale
            )
        s = jnp.asarray(noise_scale, dtype=outputs.dtype)
        s = s.reshape(s.shape + (1,) * (outputs.ndim - s.ndim))
        return NormalPrediction(outputs, jnp.broadcast_to(s * s, outputs.shape))

    def log_likelihood(self, outputs: Array, y: Array, noise_scale: Array | float | None = None) -> Array:
        """Pointwise ``log p(y_n | outputs)`` for outputs ``[S, N, ...]`` -> ``[S, N]``."""
        if isinstance(self.likelihood, _lik.Categorical):
            return dist.Categorical(logits=outputs).log_prob(y)
        if noise_scale is None:
            noise_scale = (
                self.likelihood.scale if self.likelihood.scale is not None else self.likelihood.init_scale
            )
        s = jnp.asarray(noise_scale, dtype=outputs.dtype)
        s = s.reshape(s.shape + (1,) * (outputs.ndim - s.ndim))
        lp = _lik.normal_log_prob(y, outputs, s)
        return lp.reshape(lp.shape[:2] + (-1,)).sum(-1)

    # ------------------------------------------------------------------ the loss

    def elbo(
        self,
        params: Mapping[str, Array],
        rng_key: Any,
        x: Array,
        y: Array,
        *,
        num_particles: int = 1,
        sign: Array | float = 1.0,
    ) -> ELBOTerms:
        """Negative ELBO terms of the mean-field guide on a minibatch ``(x[B, ...], y[B, ...])``, per data point.

        ``loss = E_q[-log p(y | x, w)] / B + kl_weight * KL(q || p) / num_data``, the
        expectation estimated with ``num_particles`` reparameterised draws ``w = loc + scale * ε``,
        ``ε = standard_normal(rng_key, (num_particles,))`` (one particle: no particle axis, a
        single forward pass); with ``antithetic`` (the default) the ``K`` particles are
        ``ceil(K/2)`` draws and their negations. ``sign=-1`` negates the noise (the second step of
        an antithetic pair, see :func:`~uncertlr.jax.svi_step`). The KL is exact for Normal priors,
        Monte Carlo with an exact entropy for ``ScaleMixtureNormal``.
        It equals ``TraceMeanField_ELBO().loss(key, params, bnn.model, bnn.guide, x, y) / num_data``
        in expectation, without tracing the model. Pure and jittable (``num_particles`` static);
        ``x`` and ``y`` are not checked here (see :meth:`check_data`).

        Args:
            params: the guide's ``{name}_loc`` and ``{name}_scale`` (positive) per random
                parameter, every deterministic parameter by name, and ``noise_scale`` when the
                noise std is learned — the NumPyro sites of ``bnn.model`` and ``bnn.guide``.
            rng_key: a JAX PRNG key or an integer seed.

        Example:
            >>> import jax.numpy as jnp
            >>> from uncertlr.jax import bayesian
            >>> bnn = bayesian(lambda p, x: x @ p["w"], params={"w": jnp.zeros((4, 3))}, num_data=100)
            >>> params = {"w_loc": jnp.zeros((4, 3)), "w_scale": jnp.full((4, 3), 0.1)}
            >>> terms = bnn.elbo(params, 0, jnp.ones((8, 4)), jnp.zeros(8, jnp.int32), num_particles=2)
            >>> terms.outputs.shape
            (2, 8, 3)
        """
        num_particles = positive_int("num_particles", num_particles)
        key = jax.random.key(int(rng_key)) if isinstance(rng_key, (int, np.integer)) else rng_key
        names = self.random_names
        loc = {n: params[f"{n}_loc"] for n in names}
        scale = {n: params[f"{n}_scale"] for n in names}
        fixed = {n: params[n] for n in self.fixed_names}
        dtype = jnp.result_type(*loc.values())
        if num_particles == 1:  # one particle: no particle axis, no vmap
            eps = self.standard_normal(key, (), dtype)
        elif self.antithetic:  # half the particles are the other half negated
            half = self.standard_normal(key, ((num_particles + 1) // 2,), dtype)
            eps = {n: jnp.concatenate([v, -v[: num_particles // 2]]) for n, v in half.items()}
        else:
            eps = self.standard_normal(key, (num_particles,), dtype)
        w = {n: loc[n] + scale[n] * (sign * eps[n]).astype(loc[n].dtype) for n in names}
        if num_particles == 1:
            outputs = self.apply(w, x, fixed)[None]
            w = {n: v[None] for n, v in w.items()}
        else:
            outputs = jax.vmap(lambda wk: self.apply(wk, x, fixed))(w)
        nll = -self.log_likelihood(outputs, y, params.get(NOISE_SITE)).mean()
        kl = sum((self._kl(n, loc[n], scale[n], w[n]) for n in names), jnp.zeros((), outputs.dtype))
        return ELBOTerms(nll + self.kl_weight * kl / self.num_data, nll, kl, outputs)

    def standard_normal(
        self, rng_key: Any, lead: tuple[int, ...] = (), dtype: Any = jnp.float32
    ) -> dict[str, Array]:
        """``{name: [*lead, *shape]}`` N(0, 1) noise for every random parameter: one draw of all ``P``
        weights, ``jax.random.normal(rng_key, (*lead, P))``, cut in :attr:`random_names` order.

        One draw compiles to one random-number kernel rather than one per tensor (a quarter
        of the compile time of a small MLP's step) and gives the same numbers however the
        weights are grouped into tensors.
        """
        sizes = [math.prod(self.shapes[n]) for n in self.random_names]
        flat = jax.random.normal(rng_key, (*lead, sum(sizes)), dtype)
        out, start = {}, 0
        for n, size in zip(self.random_names, sizes):
            out[n] = flat[..., start : start + size].reshape(*lead, *self.shapes[n])
            start += size
        return out

    def _kl(self, name: str, loc: Array, scale: Array, w: Array) -> Array:
        """``KL(q || p)`` of one random parameter: exact for Normal priors; for the scale mixture the
        exact entropy of ``q`` and a Monte Carlo cross-entropy over the particles ``w[K, *shape]``."""
        if isinstance(self.prior, _priors.ScaleMixtureNormal):
            log_p = self.prior.log_prob(w).reshape(w.shape[0], -1).sum(-1).mean()
            return -_priors.normal_entropy(scale).sum() - log_p
        p_loc = self.network.values[name] if self.prior.centered else self.prior.loc
        return _priors.normal_kl(loc, scale, p_loc, self.prior_scale[name]).sum()

    # ------------------------------------------------------------------ validation

    def output_shape(self, x: Array) -> tuple[int, ...]:
        """Shape of the network's outputs for inputs ``x`` (traced abstractly, no compute)."""
        return _validation.output_shape(self, x)

    def check_data(self, x: Any, y: Any = None) -> tuple[Array, Array | None]:
        """Validate and convert ``x[N, ...]`` and targets ``y`` (labels ``[N]`` or regression targets).

        Raises:
            TypeError / ValueError naming the problem: not an array, empty, NaN/inf, batch-size
            mismatch, float or out-of-range labels, target shape different from the output's.
        """
        return _validation.check_data(self, x, y)

    # ------------------------------------------------------------------ NumPyro programs

    def _weights(self) -> dict[str, Array]:
        with handlers.scale(scale=self.kl_weight):
            return {n: numpyro.sample(n, self.prior_distribution(n)) for n in self.random_names}

    def _observe(self, out: Array, y: Array | None, noise: Array | float | None) -> None:
        with numpyro.plate("data", self.num_data, subsample_size=out.shape[0]):
            if isinstance(self.likelihood, _lik.Categorical):
                numpyro.sample("obs", dist.Categorical(logits=out), obs=y)
            else:
                d = dist.Normal(out, noise)
                numpyro.sample("obs", d.to_event(out.ndim - 1) if out.ndim > 1 else d, obs=y)

    def _noise(self, *, sample: bool) -> Array | float | None:
        if not isinstance(self.likelihood, _lik.Normal):
            return None
        if not self.likelihood.learned:
            return float(self.likelihood.scale)  # type: ignore[arg-type]
        init = self.likelihood.init_scale
        if sample:
            return numpyro.sample(NOISE_SITE, dist.LogNormal(math.log(init), 1.0))
        return numpyro.param(NOISE_SITE, jnp.asarray(init), constraint=constraints.positive)

    def model(self, x: Array, y: Array | None = None) -> Array:
        """The NumPyro model for SVI (see the module docstring); returns the network's outputs.

        The deterministic parameters and a learned noise std are ``numpyro.param`` sites.
        """
        weights = self._weights()
        fixed = {n: numpyro.param(n, self.network.values[n]) for n in self.fixed_names}
        out = self.apply(weights, x, fixed)
        self._observe(out, y, self._noise(sample=False))
        return out

    def mcmc_model(self, x: Array, y: Array | None = None) -> Array:
        """The NumPyro model for MCMC: deterministic parameters are constants at the network's values.

        A learned noise std has no optimizer to fit it here, so it is a random site
        ``noise_scale ~ LogNormal(log init_scale, 1)``; pass ``likelihoods.Normal(scale=...)`` to fix it.
        """
        out = self.apply(self._weights(), x)
        self._observe(out, y, self._noise(sample=True))
        return out

    def guide(self, x: Array, y: Array | None = None) -> dict[str, Array]:
        """The mean-field Normal guide: params ``{name}_loc`` and ``{name}_scale`` (positive) per random parameter."""
        out = {}
        with handlers.scale(scale=self.kl_weight):
            for n in self.random_names:
                loc = numpyro.param(f"{n}_loc", self.network.values[n])
                scale = numpyro.param(
                    f"{n}_scale", jnp.full(self.shapes[n], self.init_scale), constraint=constraints.positive
                )
                out[n] = numpyro.sample(n, dist.Normal(loc, scale).to_event(len(self.shapes[n])))
        return out

    def __repr__(self) -> str:
        return (
            f"BNN({self.network.kind}, random={len(self.random_names)} tensors / {self.num_params} weights, "
            f"fixed={len(self.fixed_names)}, prior={self.prior!r}, likelihood={self.likelihood!r})"
        )


def bayesian(
    net: Any,
    *,
    num_data: int,
    params: Any = None,
    prior: _priors.Prior | None = None,
    likelihood: _lik.Categorical | _lik.Normal | str = "categorical",
    select: Predicate | Selector | None = None,
    init_scale: float = 1e-3,
    kl_weight: float = 1.0,
    per_example: bool | None = None,
    fan_in: FanIn | None = None,
    validate: bool = True,
    antithetic: bool = True,
) -> BNN:
    """Make a Bayesian neural network from a Flax (linen or nnx) module, an Equinox module or ``apply(params, x)``.

    Mirrors :func:`uncertlr.torch.bayesian`: the same priors, likelihoods and ``select``
    predicates; ``net`` is never modified.

    Args:
        net: a ``flax.linen.Module`` (pass ``params``), a ``flax.nnx.Module``, an
            ``equinox.Module``, or a function ``apply(params, x) -> outputs`` (pass ``params``).
        num_data: size of the training set ``N``; minibatch likelihoods are scaled by it.
        params: a linen module's variables (``module.init(key, x)``) or an apply
            function's parameter pytree. Its values are the guide's initial means, the
            centre of a ``centered`` prior, and the deterministic parameters' values.
        prior: :mod:`uncertlr.priors` spec; default ``Normal(1.0)`` (``N(0, 1)``, as the torch
            backend). ``FanInNormal()`` follows each framework's layout: Flax kernels are
            ``(in, out)``, Equinox weights ``(out, in)``; plain functions are read as Flax-like.
        likelihood: ``likelihoods.Categorical()`` (outputs are logits) or
            ``likelihoods.Normal()`` (outputs are means), or their names.
        select: predicate ``(name, module) -> bool`` choosing the random parameters
            (:mod:`uncertlr.select`); ``module`` is the owning layer for nnx and Equinox,
            None for linen and plain functions. Default: all.
        init_scale: initial std of the mean-field guide.
        kl_weight: multiplies the prior/KL term (1 = the posterior; < 1 a tempered one). Must be > 0.
        per_example: vmap the network over the batch axis (default True for Equinox).
        fan_in: ``fan_in(name, shape) -> int`` to override the fan-in rule.
        validate: check inputs and targets at every entry point.
        antithetic: antithetic weight noise, as :func:`uncertlr.torch.bayesian`'s: ``svi`` steps come
            in pairs (step ``2k + 1`` uses step ``2k``'s noise negated) and ``K`` particles are
            ``ceil(K/2)`` draws and their negations; every step is still an exact draw from ``q``.
            ``False``: independent noise every step (``guide="auto_normal"`` always draws its own).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import flax.linen as nn
        >>> from uncertlr import select
        >>> from uncertlr.jax import bayesian
        >>> net = nn.Sequential([nn.Dense(16), nn.tanh, nn.Dense(3)])
        >>> variables = net.init(jax.random.key(0), jnp.ones((1, 4)))
        >>> bnn = bayesian(net, params=variables, num_data=100, select=select.last_layer())
        >>> bnn.random_names, bnn.fixed_names
        (['layers_2.kernel', 'layers_2.bias'], ['layers_0.kernel', 'layers_0.bias'])
    """
    spec = bnn_spec(
        num_data=num_data,
        prior=prior,
        likelihood=likelihood,
        select=select,
        init_scale=init_scale,
        kl_weight=kl_weight,
        validate=validate,
    )
    network = as_network(net, params=params, per_example=per_example, fan_in=fan_in)
    return BNN(network, **spec._asdict(), antithetic=antithetic)
