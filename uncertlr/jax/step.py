"""One SVI step as a pure ``(init, update)`` pair, for users who write their own loop.

:func:`svi_step` builds an :class:`SVIStep` for a BNN and an optax optimizer; its ``update``
is jitted once per batch shape and reused::

    step = svi_step(bnn, optax.adam(1e-3), signal="entropy")
    state = step.init(rng_key=0)
    for xb, yb in batches:
        state, info = step.update(state, xb, yb)   # info.loss, info.nll, info.kl, info.signal
    params = step.params(state)                    # {site: constrained value}

:class:`SVIState` is a pytree of arrays — the unconstrained parameters (NumPyro's own
parametrisation of the same sites), the optimizer's state (a modulator's included), the
weight-noise and data-order keys and the step count — so checkpointing is "save the state"
(:func:`uncertlr.jax.save_checkpoint`, or orbax). Step ``t`` draws its weights with the key
``fold_in(rng_key, t)`` — with antithetic noise (the BNN's default, one particle) ``fold_in(rng_key, t // 2)``,
negated on odd steps — so a restored state continues exactly as if it had never stopped.
:func:`uncertlr.jax.svi` runs the same update inside ``lax.while_loop`` over device-resident batches.

Under data parallelism (``mesh=``) every device draws the *same* weight noise, computes the
gradient on its share of the batch, and the gradients, the loss terms and the signal are
averaged over :data:`DATA_AXIS`: N devices take the step one device takes on the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from numpyro.distributions import biject_to
from numpyro.infer import TraceMeanField_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.infer.initialization import init_to_value

from uncertlr import likelihoods as _lik
from uncertlr import metrics
from uncertlr.jax._host import default_device, derived_key, inverse, learning_rate, param_sites, typed_key
from uncertlr.jax._posterior import as_count, check_bnn, guide_pairs
from uncertlr.jax.bnn import BNN, ELBOTerms

__all__ = ["DATA_AXIS", "SVIState", "SVIStep", "StepInfo", "posterior_scale_args", "svi_step"]

Array = Any
#: ``loss(params, rng_key, x, y, sign) -> ELBOTerms``: the objective of one step (constrained params;
#: ``sign`` -1 negates the weight noise, the second step of an antithetic pair).
_Objective = Callable[[Mapping[str, Array], Array, Array, Array, Array], ELBOTerms]

#: Name of the device axis in data-parallel SVI (a mesh passed to ``svi``/``svi_step`` must have it).
DATA_AXIS = "data"

_SIGNALS = {
    "entropy": metrics.predictive_entropy,
    "mutual_information": metrics.mutual_information,
    "expected_entropy": metrics.expected_entropy,
}


class SVIState(NamedTuple):
    """Everything an SVI run needs to continue, as a pytree of arrays.

    Attributes:
        params: ``{site: array}``, unconstrained (stds as ``log σ``, NumPyro's parametrisation).
        opt_state: the optax optimizer's state (a modulator's rule state included).
        rng_key: ``uint32[2]`` key data; step ``t`` draws its weights with ``fold_in(rng_key, t)``
            (antithetic noise: ``fold_in(rng_key, t // 2)``, negated on odd steps).
        order_key: ``uint32[2]`` data of the data-order key (``svi`` draws epoch ``e``'s row order from it
            and ``e``).
        step: ``int32``, optimizer steps taken.
    """

    params: dict[str, Array]
    opt_state: Any
    rng_key: Array
    order_key: Array
    step: Array


class StepInfo(NamedTuple):
    """What one step measured (scalars; NaN where not defined).

    Attributes:
        loss: negative ELBO per data point; nll: its expected negative log-likelihood per row;
        kl: ``KL(q || p)`` of the whole posterior (NaN for ``AutoNormal``); signal: the uncertainty
        signal passed to the optimizer (NaN without one); learning_rate: the optimizer's learning
        rate when it exposes it (``optax.inject_hyperparams``), else NaN.
    """

    loss: Array
    nll: Array
    kl: Array
    signal: Array
    learning_rate: Array


def posterior_scale_args(params: Mapping[str, Array]) -> dict[str, dict[str, Array]]:
    """``{"posterior_scale": tree}`` for ``extra_args``: σ of each weight's guide, shaped like the updates.

    Each guide mean ``{name}_loc`` (``{name}_auto_loc`` for ``AutoNormal``) gets its guide's std;
    every other parameter (the stds themselves, deterministic parameters, a learned noise)
    gets ones, i.e. no relative preference within that tensor. ``params`` are constrained.

    Example:
        >>> import jax.numpy as jnp
        >>> tree = posterior_scale_args({"w_loc": jnp.zeros(2), "w_scale": jnp.full(2, 0.1), "b": jnp.zeros(1)})
        >>> {k: [round(x, 3) for x in v.tolist()] for k, v in tree["posterior_scale"].items()}
        {'w_loc': [0.1, 0.1], 'w_scale': [1.0, 1.0], 'b': [1.0]}
    """
    pairs = guide_pairs(params)
    return {
        "posterior_scale": {
            k: params[pairs[k]] if k in pairs else jnp.ones_like(v) for k, v in params.items()
        }
    }


class SVIStep:
    """A jitted SVI step for one BNN and one optax optimizer; create it with :func:`svi_step`.

    Attributes:
        bnn, optimizer, num_particles, guide_kind: as given to :func:`svi_step`.
        guide: the NumPyro guide (``bnn.guide`` or an ``AutoNormal``).
        mesh: the device mesh of a data-parallel step (else None); device: the single device (else None).
        pure_update: ``update`` before ``jax.jit`` (``shard_map``-ped under a mesh), to compose into
            a larger jitted function such as a ``lax.scan`` over batches.
    """

    def __init__(
        self,
        bnn: BNN,
        optimizer: optax.GradientTransformation,
        *,
        num_particles: int = 1,
        guide: str = "meanfield",
        signal: str | Callable[[Array], Array] | None = None,
        extra_args: Callable[[dict[str, Array]], Mapping[str, Any]] | None = None,
        mesh: Mesh | None = None,
        device: Any = None,
    ):
        check_bnn(bnn)
        if not isinstance(optimizer, optax.GradientTransformation):
            raise TypeError(
                f"optimizer must be an optax.GradientTransformation; got {type(optimizer).__name__}"
            )
        if mesh is not None and DATA_AXIS not in mesh.axis_names:
            raise ValueError(f"mesh must have an axis named {DATA_AXIS!r}; got {mesh.axis_names}")
        self.bnn = bnn
        self.optimizer = optimizer
        self.num_particles = as_count("num_particles", num_particles)
        self.signal_fn = signal_fn(signal, bnn, self.num_particles)
        self.extra_args = extra_args
        self.mesh = mesh
        self.device = device
        self.guide_kind = guide
        self.guide, self._objective = _objective(bnn, guide, self.num_particles, self.signal_fn)
        # antithetic pairs across steps: the mean-field guide with one particle (several: within the step)
        self._antithetic = bnn.antithetic and guide == "meanfield" and self.num_particles == 1
        self._tx = optax.with_extra_args_support(optimizer)
        self._transforms: dict[str, Any] | None = None
        self._auto_start: dict[str, Array] = {}
        if guide == "meanfield":
            self._transforms = {s: biject_to(c) for s, c in bnn.param_constraints().items()}
        self.pure_update = self._sharded(self._update)
        self._update_jit = jax.jit(self.pure_update)
        self._params_jit = jax.jit(self._constrain)
        #: compiled loops of :func:`uncertlr.jax.svi`, by (rows, batch size, chunk length)
        self.loops: dict[tuple[int, int, int], Any] = {}

    # ------------------------------------------------------------------ the public pair

    def init(self, rng_key: Any = 0, x: Array = None, y: Array = None, *, params: Any = None) -> SVIState:
        """The starting state: the guide at its initial values (or ``params``), a fresh optimizer state.

        Args:
            rng_key: a JAX PRNG key or an integer seed: the weight-noise key (the data-order key is derived from it).
            x, y: a batch; needed only by ``guide="auto_normal"``, which traces the model to find its sites.
            params: start from these constrained parameters (e.g. ``fit.params``) instead.
        """
        self.prepare(x, y)
        if params is not None:
            start = self._check_params(params)
        else:
            start = self.bnn.initial_params() if self.guide_kind == "meanfield" else self._auto_start
        noise_key = np.asarray(jax.random.key_data(typed_key(rng_key)), np.uint32)
        u, opt_state = self._init_unconstrained(start)
        state = SVIState(u, opt_state, noise_key, derived_key(noise_key, "order"), np.zeros((), np.int32))
        return self.place(jax.tree.map(jnp.asarray, state))

    def update(self, state: SVIState, x: Array, y: Array) -> tuple[SVIState, StepInfo]:
        """One optimizer step on the batch ``(x[B, ...], y[B, ...])`` (jitted once per batch shape).

        ``x`` and ``y`` are not checked here (see ``bnn.check_data``); under data parallelism
        ``B`` must be a multiple of the number of devices.
        """
        if self.mesh is not None:
            num = self.mesh.shape[DATA_AXIS]
            if x.shape[0] % num:
                raise ValueError(
                    f"data parallelism splits each batch across {num} devices: the batch has {x.shape[0]} rows"
                )
            x, y = jax.device_put((x, y), NamedSharding(self.mesh, PartitionSpec(DATA_AXIS)))
        return self._update_jit(state, x, y)

    def params(self, state: SVIState) -> dict[str, Array]:
        """The constrained parameters ``{site: array}`` of ``state`` (``numpyro.infer.Predictive`` takes them)."""
        self._require_transforms()
        return self._params_jit(state.params)

    def place(self, tree: Any) -> Any:
        """``tree`` on this step's device (committed there, so that every state the loop sees has the
        same placement and reuses one compiled program), or replicated over its mesh."""
        if self.mesh is not None:
            return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))
        return jax.device_put(tree, self.device if self.device is not None else default_device())

    def check_state(self, state: Any) -> SVIState:
        """``state`` as an :class:`SVIState` of this step, or a ValueError naming what differs."""
        if not isinstance(state, SVIState):
            raise TypeError(f"state must be an SVIState (e.g. fit.state); got {type(state).__name__}")
        self._check_params(state.params, unconstrained=True)
        want = jax.tree.structure(jax.eval_shape(self._tx.init, state.params))
        if jax.tree.structure(state.opt_state) != want:
            raise ValueError(
                "state.opt_state does not fit this optimizer (was the state made with another one?): "
                f"expected {want}, got {jax.tree.structure(state.opt_state)}"
            )
        return state

    # ------------------------------------------------------------------ internals

    def prepare(self, x: Array = None, y: Array = None) -> None:
        """Find the guide's sites: nothing to do for the mean-field guide; ``AutoNormal`` traces the model once on ``(x, y)``."""
        if self._transforms is not None:
            return
        if x is None or y is None:
            raise ValueError(
                "guide='auto_normal' traces the model to find its sites: pass a batch, init(key, x, y)"
            )
        key = jax.random.key(0)
        sites = {**param_sites(self.bnn.model, key, x, y), **param_sites(self.guide, key, x, y)}
        self._auto_start = {s: v for s, (v, _) in sites.items()}
        self._transforms = {s: biject_to(c) for s, (_, c) in sites.items()}

    def _require_transforms(self) -> dict[str, Any]:
        if self._transforms is None:
            raise RuntimeError(
                "call init(rng_key, x, y) first: the AutoNormal guide's sites are not known yet"
            )
        return self._transforms

    def _check_params(self, params: Mapping[str, Array], *, unconstrained: bool = False) -> dict[str, Array]:
        transforms = self._require_transforms()
        missing, extra = sorted(set(transforms) - set(params)), sorted(set(params) - set(transforms))
        if missing or extra:
            what = "state.params" if unconstrained else "params"
            raise ValueError(
                f"{what} do not match the BNN's sites: missing {missing[:5]}, unexpected {extra[:5]}"
            )
        if self.guide_kind == "meanfield":
            want = {
                **{f"{n}_loc": s for n, s in self.bnn.shapes.items()},
                **{f"{n}_scale": s for n, s in self.bnn.shapes.items()},
            }
            bad = {k: tuple(np.shape(params[k])) for k, s in want.items() if tuple(np.shape(params[k])) != s}
            if bad:
                raise ValueError(f"parameter shapes differ from the BNN's: {bad}")
        return dict(params)

    def _constrain(self, u: Mapping[str, Array]) -> dict[str, Array]:
        transforms = self._require_transforms()
        return {s: transforms[s](v) for s, v in u.items()}

    def _init_unconstrained(self, start: dict[str, Array]) -> tuple[dict[str, Array], Any]:
        # eager on purpose: a handful of one-op programs that JAX compiles once per process and
        # shape, where a jitted init would compile anew for every step (optimizer, BNN) built
        transforms = self._require_transforms()
        u = {s: jnp.asarray(inverse(transforms[s], v)) for s, v in start.items()}
        return u, self._tx.init(u)

    def _update(self, state: SVIState, xb: Array, yb: Array) -> tuple[SVIState, StepInfo]:
        base = jax.random.wrap_key_data(state.rng_key)
        if self._antithetic:  # steps 2k and 2k + 1 share the key of pair k; the second negates the noise
            key = jax.random.fold_in(base, state.step // 2)
            sign = 1.0 - 2.0 * (state.step % 2)
        else:
            key, sign = jax.random.fold_in(base, state.step), 1.0

        def objective(u: Any) -> tuple[Array, ELBOTerms]:
            terms = self._objective(self._constrain(u), key, xb, yb, sign)
            return terms.loss, terms

        (_, terms), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        nan = jnp.full((), jnp.nan, terms.loss.dtype)
        sig = self.signal_fn(terms.outputs).astype(terms.loss.dtype) if self.signal_fn is not None else nan
        stats = (terms.loss, terms.nll, terms.kl, sig)
        if self.mesh is not None:  # same weights everywhere: averaging = the gradient on the whole batch
            grads, stats = jax.lax.pmean((grads, stats), DATA_AXIS)
        extra = dict(self.extra_args(self._constrain(state.params))) if self.extra_args is not None else {}
        if self.signal_fn is not None:
            extra["uncertainty"] = stats[3]
        updates, opt_state = self._tx.update(grads, state.opt_state, state.params, **extra)
        params = optax.apply_updates(state.params, updates)
        info = StepInfo(*stats, learning_rate(opt_state, terms.loss.dtype))
        return SVIState(params, opt_state, state.rng_key, state.order_key, state.step + 1), info

    def _sharded(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        if self.mesh is None:
            return fn
        rep, split = PartitionSpec(), PartitionSpec(DATA_AXIS)
        mapped = jax.shard_map(fn, mesh=self.mesh, in_specs=(rep, split, split), out_specs=(rep, rep))
        rows = NamedSharding(self.mesh, split)

        axis_type = dict(zip(self.mesh.axis_names, self.mesh.axis_types))[DATA_AXIS]
        explicit = axis_type == jax.sharding.AxisType.Explicit  # jax.make_mesh's default

        def sharded(state: SVIState, xb: Array, yb: Array) -> tuple[SVIState, StepInfo]:
            # each device its share of the rows
            if explicit:
                xb, yb = jax.reshard(xb, rows), jax.reshard(yb, rows)
            else:
                xb, yb = jax.lax.with_sharding_constraint((xb, yb), rows)
            return mapped(state, xb, yb)

        return sharded

    def __repr__(self) -> str:
        where = (
            f"mesh {dict(self.mesh.shape)}" if self.mesh is not None else str(self.device or "default device")
        )
        return f"SVIStep({self.guide_kind}, {self.num_particles} particle(s), {where})"


def svi_step(
    bnn: BNN,
    optimizer: optax.GradientTransformation,
    *,
    num_particles: int = 1,
    guide: str = "meanfield",
    signal: str | Callable[[Array], Array] | None = None,
    extra_args: Callable[[dict[str, Array]], Mapping[str, Any]] | None = None,
    mesh: Mesh | None = None,
    device: Any = None,
) -> SVIStep:
    """The SVI step of :func:`uncertlr.jax.svi` as a pure ``init``/``update`` pair (see :class:`SVIStep`).

    Args:
        bnn: from :func:`uncertlr.jax.bayesian`.
        optimizer: any optax optimizer; with ``signal`` its ``update`` receives ``uncertainty=``,
            with ``extra_args`` the keyword arguments ``extra_args(params)`` returns.
        num_particles: weight draws per step (1 takes a direct path without a particle axis).
        guide: ``"meanfield"`` (``bnn.guide``, analytic KL) or ``"auto_normal"`` (NumPyro's ``AutoNormal``).
        signal: ``"entropy"``, ``"mutual_information"`` (``num_particles >= 2``), ``"expected_entropy"``
            or a callable ``outputs[K, B, ...] -> scalar``, computed from this step's own forward pass.
        extra_args: ``extra_args(params) -> {name: value}`` on the constrained parameters, e.g.
            :func:`posterior_scale_args` for the modulator's per-parameter rules.
        mesh: a ``jax.sharding.Mesh`` with an axis :data:`DATA_AXIS` for data parallelism.
        device: the one device to run on (default: JAX's default device).

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from uncertlr.jax import bayesian, svi_step
        >>> bnn = bayesian(lambda p, x: x @ p["w"], params={"w": jnp.zeros((4, 3))}, num_data=32)
        >>> step = svi_step(bnn, optax.adam(1e-2), signal="entropy")
        >>> state = step.init(0)
        >>> x, y = jnp.ones((8, 4)), jnp.zeros(8, jnp.int32)
        >>> for _ in range(3):
        ...     state, info = step.update(state, x, y)
        >>> int(state.step), sorted(step.params(state)), bool(info.signal > 0)
        (3, ['w_loc', 'w_scale'], True)
    """
    return SVIStep(
        bnn,
        optimizer,
        num_particles=num_particles,
        guide=guide,
        signal=signal,
        extra_args=extra_args,
        mesh=mesh,
        device=device,
    )


# --------------------------------------------------------------------------- helpers


def signal_fn(signal: Any, bnn: BNN, num_particles: int) -> Callable[[Array], Array] | None:
    """``outputs[K, B, ...] -> scalar`` for ``signal`` (a name or a callable), or None for no signal."""
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
    if signal == "mutual_information" and num_particles < 2:
        raise ValueError(
            "signal='mutual_information' needs num_particles >= 2 (it measures disagreement between draws)"
        )
    return _BatchMean(_SIGNALS[signal])


class _BatchMean:
    """The batch mean of a metric of the softmax of the particles' outputs."""

    def __init__(self, fn: Callable[[Array], Array]):
        self.fn = fn

    def __call__(self, outputs: Array) -> Array:
        return jnp.mean(self.fn(jax.nn.softmax(outputs, axis=-1)))


def _objective(
    bnn: BNN, guide: str, num_particles: int, sig_fn: Callable[[Array], Array] | None
) -> tuple[Any, _Objective]:
    """The guide and the per-step objective for ``guide="meanfield"`` or ``"auto_normal"``."""
    if guide == "meanfield":

        def elbo(params: Mapping[str, Array], k: Array, xb: Array, yb: Array, sign: Array) -> ELBOTerms:
            return bnn.elbo(params, k, xb, yb, num_particles=num_particles, sign=sign)

        return bnn.guide, elbo
    if guide == "auto_normal":
        return _auto_normal(bnn, num_particles, sig_fn)
    raise ValueError(f"guide must be 'meanfield' or 'auto_normal'; got {guide!r}")


def make_auto_normal(bnn: BNN) -> AutoNormal:
    """NumPyro's ``AutoNormal`` for ``bnn.model``, means started at the network's weights."""
    return AutoNormal(
        bnn.model, init_loc_fn=init_to_value(values=bnn.initial_values()), init_scale=bnn.init_scale
    )


def _auto_normal(
    bnn: BNN, num_particles: int, sig_fn: Callable[[Array], Array] | None
) -> tuple[AutoNormal, _Objective]:
    """``AutoNormal`` and its ``TraceMeanField_ELBO`` per data point (``nll``/``kl`` NaN; outputs only for a signal)."""
    guide = make_auto_normal(bnn)
    elbo = TraceMeanField_ELBO(num_particles=num_particles)

    def loss(params: Mapping[str, Array], k: Array, xb: Array, yb: Array, sign: Array) -> ELBOTerms:
        k1, k2 = jax.random.split(k)  # NumPyro's guide draws its own noise (no antithetic pairs)
        value = elbo.loss(k1, params, bnn.model, guide, xb, yb) / bnn.num_data
        outputs = None
        if sig_fn is not None:
            draws = guide.sample_posterior(k2, params, sample_shape=(num_particles,))
            fixed = {nm: params[nm] for nm in bnn.fixed_names}
            outputs = jax.vmap(lambda w: bnn.apply(w, xb, fixed))({nm: draws[nm] for nm in bnn.random_names})
        nan = jnp.full((), jnp.nan, value.dtype)
        return ELBOTerms(value, nan, nan, outputs)

    return guide, loss
