"""Stochastic VI for :class:`~uncertlr.jax.BNN`: :func:`svi`, its result :class:`SVIResult`,
and the optimizer's per-step extra arguments.

Each step draws weights from the guide, takes the gradient of the negative ELBO per data
point (:meth:`uncertlr.jax.BNN.elbo` for the mean-field guide, NumPyro's
``TraceMeanField_ELBO`` for ``AutoNormal``) and applies any optax optimizer. An uncertainty
signal computed from that step's network outputs (``signal=``) and anything
``extra_args(params)`` returns — e.g. :func:`posterior_scale_args`, the guide's σ — reach
the optimizer's ``update`` as keyword arguments, which is how the LR modulator's optax
transformations (:mod:`uncertlr.jax.modulation`) see them.

:class:`SVIResult` has the uncertainty API every result shares (``predict``,
``sample_outputs``, ``posterior_loc``/``posterior_scale``/``posterior_spread``) and exposes
``.model``, ``.guide``, ``.params`` and the training ``.history``.
``svi(..., data_parallel=True)`` splits each batch across all devices (axis :data:`DATA_AXIS`).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec
from numpyro import handlers
from numpyro.distributions import biject_to, constraints
from numpyro.infer import TraceMeanField_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.infer.initialization import init_to_value

from uncertlr import likelihoods as _lik
from uncertlr import metrics
from uncertlr._progress import Advance, progress_task
from uncertlr.jax._posterior import _Posterior, as_count, as_key, check_bnn
from uncertlr.jax.bnn import BNN, NOISE_SITE, ELBOTerms
from uncertlr.likelihoods import NormalPrediction

__all__ = ["DATA_AXIS", "SVIResult", "posterior_scale_args", "svi"]

Array = Any
#: ``loss(params, rng_key, x, y) -> ELBOTerms``: the objective of one step (constrained params).
_Objective = Callable[[Mapping[str, Array], Array, Array, Array], ELBOTerms]
#: ``step(u, opt_state, rng_key, x, y) -> (u, opt_state, [loss, nll, kl, signal])``, jitted.
_Step = Callable[[Any, Any, Array, Array, Array], tuple[Any, Any, Array]]

#: Name of the device axis in data-parallel SVI (give it to collectives such as the modulator's ``axis_name``).
DATA_AXIS = "data"

_SIGNALS = {
    "entropy": metrics.predictive_entropy,
    "mutual_information": metrics.mutual_information,
    "expected_entropy": metrics.expected_entropy,
}

# --------------------------------------------------------------------------- the result


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

    _fresh_draws = True

    @property
    def losses(self) -> np.ndarray:
        """The loss of every step, ``[num_steps]``."""
        return np.array([h["loss"] for h in self.history])

    def _next_key(self, rng_key: Any) -> Array:
        if rng_key is not None:
            return as_key(rng_key)
        self._rng_key, key = jax.random.split(self._rng_key)
        return key

    def _fixed(self) -> dict[str, Array]:
        return {n: self.params[n] for n in self.bnn.fixed_names}

    def _noise(self, draws: Mapping[str, Array]) -> Array | float | None:
        return self.params.get(NOISE_SITE)

    def sample_parameters(self, num_samples: int | None = 32, *, rng_key: Any = None) -> dict[str, Array]:
        """``{name: [num_samples, *shape]}`` draws from the guide (fresh ones each call unless ``rng_key`` is given)."""
        num_samples = as_count("num_samples", 32 if num_samples is None else num_samples)
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

    def sample_outputs(
        self, x: Array, *, num_samples: int | None = 32, rng_key: Any = None, max_batch: int | None = None
    ) -> Array:
        return super().sample_outputs(x, num_samples=num_samples, rng_key=rng_key, max_batch=max_batch)

    def predict(
        self, x: Array, *, num_samples: int | None = 32, rng_key: Any = None, max_batch: int | None = None
    ) -> Array | NormalPrediction:
        return super().predict(x, num_samples=num_samples, rng_key=rng_key, max_batch=max_batch)

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


# --------------------------------------------------------------------------- fitting


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
    check_bnn(bnn)
    num_steps = as_count("num_steps", num_steps, minimum=0)
    num_particles = as_count("num_particles", num_particles)
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax.GradientTransformation; got {type(optimizer).__name__}")
    x, y = bnn.check_data(x, y)
    batch_size = _batch_size(bnn, x.shape[0], batch_size, data_parallel)
    sig_fn = _signal_fn(signal, bnn, num_particles)
    key, k_init, k_order = jax.random.split(as_key(rng_key), 3)
    guide_fn, loss_fn = _objective(bnn, guide, num_particles, sig_fn)
    u, constrain = _init_params(bnn, guide_fn, k_init, x[:batch_size], y[:batch_size], init_params)
    tx = optax.with_extra_args_support(optimizer)
    state = (u, tx.init(u), key)
    step = _make_step(loss_fn, constrain, tx, sig_fn, extra_args, data_parallel)
    batches = _batches(x.shape[0], batch_size, num_steps, k_order)
    record = functools.partial(_record, terms=guide == "meanfield", signal=sig_fn is not None)
    t0 = time.perf_counter()
    with progress_task(progress, f"SVI ({guide})", total=num_steps) as advance:
        (u, opt_state, key), history = _train(step, state, x, y, batches, record, advance, data_parallel)
    seconds = time.perf_counter() - t0
    return SVIResult(bnn, guide_fn, guide, constrain(u), opt_state, history, seconds, key)


# --------------------------------------------------------------------------- setup


def _batch_size(bnn: BNN, n: int, batch_size: int | None, data_parallel: bool) -> int:
    """The checked batch size: at most ``n == bnn.num_data`` rows, a multiple of the devices when split."""
    if n != bnn.num_data:
        raise ValueError(
            f"x has {n} rows but the BNN was built with num_data={bnn.num_data}; the likelihood of each batch "
            "is scaled by num_data, so build the BNN with the training-set size"
        )
    batch_size = n if batch_size is None else as_count("batch_size", batch_size)
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the {n} rows of x")
    num_devices = len(jax.devices())
    if data_parallel and batch_size % num_devices:
        raise ValueError(
            f"data_parallel splits each batch across {num_devices} devices: "
            f"batch_size={batch_size} must be a multiple of {num_devices}"
        )
    return batch_size


def _signal_fn(signal: Any, bnn: BNN, num_particles: int) -> Callable[[Array], Array] | None:
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
    fn = _SIGNALS[signal]
    return lambda outputs: jnp.mean(fn(jax.nn.softmax(outputs, axis=-1)))


def _objective(
    bnn: BNN, guide: str, num_particles: int, sig_fn: Callable[[Array], Array] | None
) -> tuple[Any, _Objective]:
    """The guide and the per-step objective for ``guide="meanfield"`` or ``"auto_normal"``."""
    if guide == "meanfield":

        def elbo(params: Mapping[str, Array], k: Array, xb: Array, yb: Array) -> ELBOTerms:
            return bnn.elbo(params, k, xb, yb, num_particles=num_particles)

        return bnn.guide, elbo
    if guide == "auto_normal":
        return _auto_normal(bnn, num_particles, sig_fn)
    raise ValueError(f"guide must be 'meanfield' or 'auto_normal'; got {guide!r}")


def _auto_normal(
    bnn: BNN, num_particles: int, sig_fn: Callable[[Array], Array] | None
) -> tuple[AutoNormal, _Objective]:
    """NumPyro's ``AutoNormal`` (means at the network's weights) and its ``TraceMeanField_ELBO`` per data point.

    ``nll``/``kl`` are NaN (the ELBO does not split them); ``outputs`` are drawn only for a signal.
    """
    guide = AutoNormal(
        bnn.model, init_loc_fn=init_to_value(values=bnn.initial_values()), init_scale=bnn.init_scale
    )
    elbo = TraceMeanField_ELBO(num_particles=num_particles)

    def loss(params: Mapping[str, Array], k: Array, xb: Array, yb: Array) -> ELBOTerms:
        k1, k2 = jax.random.split(k)
        value = elbo.loss(k1, params, bnn.model, guide, xb, yb) / bnn.num_data
        outputs = None
        if sig_fn is not None:
            draws = guide.sample_posterior(k2, params, sample_shape=(num_particles,))
            fixed = {nm: params[nm] for nm in bnn.fixed_names}
            outputs = jax.vmap(lambda w: bnn.apply(w, xb, fixed))({nm: draws[nm] for nm in bnn.random_names})
        nan = jnp.full((), jnp.nan)
        return ELBOTerms(value, nan, nan, outputs)

    return guide, loss


def _init_params(
    bnn: BNN, guide: Any, key: Array, xb: Array, yb: Array, init_params: Mapping[str, Array] | None
) -> tuple[dict[str, Array], Callable[[Mapping[str, Array]], dict[str, Array]]]:
    """The unconstrained starting point of every param site of model and guide, and ``constrain``."""
    sites = {**_param_sites(bnn.model, key, xb, yb), **_param_sites(guide, key, xb, yb)}
    if init_params is not None:
        missing = sorted(set(sites) - set(init_params))
        if missing:
            raise ValueError(f"init_params lacks the parameters {missing[:5]}")
        sites = {s: (jnp.asarray(init_params[s]), c) for s, (_, c) in sites.items()}
    transforms = {s: biject_to(c) for s, (_, c) in sites.items()}

    def constrain(uu: Mapping[str, Array]) -> dict[str, Array]:
        return {s: transforms[s](v) for s, v in uu.items()}

    return {s: transforms[s].inv(v) for s, (v, _) in sites.items()}, constrain


# --------------------------------------------------------------------------- the loop


def _make_step(
    loss_fn: _Objective,
    constrain: Callable[[Mapping[str, Array]], dict[str, Array]],
    tx: optax.GradientTransformationExtraArgs,
    sig_fn: Callable[[Array], Array] | None,
    extra_args: Callable[[dict[str, Array]], Mapping[str, Any]] | None,
    data_parallel: bool,
) -> _Step:
    """One jitted optimizer step on unconstrained parameters (``shard_map``-ped over :data:`DATA_AXIS`)."""
    axis = DATA_AXIS if data_parallel else None

    def objective(uu: Any, k: Array, xb: Array, yb: Array) -> tuple[Array, ELBOTerms]:
        terms = loss_fn(constrain(uu), k, xb, yb)
        return terms.loss, terms

    def step(uu: Any, state: Any, k: Array, xb: Array, yb: Array) -> tuple[Any, Any, Array]:
        if axis is not None:
            k = jax.random.fold_in(k, jax.lax.axis_index(axis))
        (_, terms), grads = jax.value_and_grad(objective, has_aux=True)(uu, k, xb, yb)
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
        mesh = Mesh(np.array(jax.devices()), (DATA_AXIS,))
        rep, split = PartitionSpec(), PartitionSpec(DATA_AXIS)
        step = jax.shard_map(
            step, mesh=mesh, in_specs=(rep, rep, rep, split, split), out_specs=(rep, rep, rep)
        )
    return jax.jit(step)


def _batches(n: int, batch_size: int, num_steps: int, key: Array) -> Iterator[tuple[int, np.ndarray]]:
    """``(epoch, row indices)`` per step: shuffled epochs of ``n // batch_size`` equal batches (remainder skipped)."""
    order_rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    steps_per_epoch = n // batch_size
    order = np.arange(n)
    for i in range(num_steps):
        epoch, j = divmod(i, steps_per_epoch)
        if j == 0 and batch_size < n:
            order = order_rng.permutation(n)
        yield epoch, order[j * batch_size : (j + 1) * batch_size]


def _train(
    step: _Step,
    state: tuple[Any, Any, Array],
    x: Array,
    y: Array,
    batches: Iterator[tuple[int, np.ndarray]],
    record: Callable[[int, int, Array, Any], dict[str, float]],
    advance: Advance,
    data_parallel: bool,
) -> tuple[tuple[Any, Any, Array], list[dict[str, float]]]:
    """Run ``step`` over ``batches`` from ``state = (u, opt_state, key)``: the final state and one record per step."""
    u, opt_state, key = state
    history: list[dict[str, float]] = []
    for i, (epoch, idx) in enumerate(batches):
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
        history.append(record(i, epoch, stats, opt_state))
        advance(info=f"loss {history[-1]['loss']:.4f}")
    return (u, opt_state, key), history


def _record(
    i: int, epoch: int, stats: Array, opt_state: Any, *, terms: bool, signal: bool
) -> dict[str, float]:
    """The history record of step ``i`` from its ``[loss, nll, kl, signal]``; a non-finite loss stops the fit."""
    loss, nll, kl, sig = (float(v) for v in np.asarray(stats))
    if not math.isfinite(loss):
        raise FloatingPointError(f"loss became {loss} at step {i}; lower the learning rate or check the data")
    rec = {"step": float(i), "epoch": float(epoch), "loss": loss, "lr": _learning_rate(opt_state)}
    if terms:
        rec.update(nll=nll, kl=kl)
    if signal:
        rec["signal"] = sig
    return rec


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
