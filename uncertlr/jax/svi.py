"""Stochastic VI for :class:`~uncertlr.jax.BNN`: :func:`svi` and its result :class:`SVIResult`.

:func:`svi` is the convenience loop on top of :func:`uncertlr.jax.svi_step`: it builds the
step once per (BNN, optimizer, options) and keeps it, so a second call with the same shapes
compiles nothing; it runs the steps inside ``lax.while_loop`` over device-resident,
per-epoch permuted batches and reads the history back every ``log_every`` steps. It resumes
from a saved :class:`~uncertlr.jax.SVIState` (``state=``) exactly, calls a validation
function with early stopping, and places the work on the devices you choose.

:class:`SVIResult` has the uncertainty API every result shares (``predict``,
``sample_outputs``, ``posterior_loc``/``posterior_scale``/``posterior_spread``), exposes
``.model``, ``.guide``, ``.params``, ``.state`` and the training ``.history``, and pickles.
"""

from __future__ import annotations

import math
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh

from uncertlr._progress import progress_task
from uncertlr.jax._loop import compiled_loop, placement, records
from uncertlr.jax._posterior import _Posterior, as_count, as_key, check_bnn
from uncertlr.jax.bnn import BNN, NOISE_SITE
from uncertlr.jax.step import (
    DATA_AXIS,
    SVIState,
    SVIStep,
    derived_key,
    make_auto_normal,
    posterior_scale_args,
)
from uncertlr.likelihoods import NormalPrediction

__all__ = ["DATA_AXIS", "EarlyStopping", "SVIResult", "posterior_scale_args", "svi"]

Array = Any
#: SVI steps kept per BNN (one per optimizer and options), least recently used dropped first.
STEP_CACHE_SIZE = 4


@dataclass(frozen=True)
class EarlyStopping:
    """Stop :func:`svi` when the validation value has not improved for ``patience`` validations.

    Attributes:
        patience: validations without an improvement of more than ``min_delta`` before stopping.
        min_delta: the smallest decrease that counts as an improvement.
        restore_best: return the state (and parameters) of the best validation instead of the last.
    """

    patience: int = 5
    min_delta: float = 0.0
    restore_best: bool = False

    def __post_init__(self) -> None:
        as_count("patience", self.patience)
        if not (math.isfinite(self.min_delta) and self.min_delta >= 0):
            raise ValueError(f"min_delta must be a finite number >= 0; got {self.min_delta!r}")


class SVIResult(_Posterior):
    """A fitted variational posterior; create it with :func:`svi`.

    Attributes:
        bnn: the :class:`~uncertlr.jax.BNN`.
        model, guide: the NumPyro model (``bnn.model``) and guide that were fitted.
        guide_kind: ``"meanfield"`` or ``"auto_normal"``.
        params: the fitted parameters by NumPyro site name (constrained values), so
            ``numpyro.infer.Predictive(result.model, guide=result.guide, params=result.params)`` works.
        state: the :class:`~uncertlr.jax.SVIState` to continue from (``svi(..., state=result.state)``).
        history: one record per step: ``step``, ``epoch``, ``loss`` (negative ELBO per data
            point), ``lr`` (NaN unless the optimizer exposes it), ``nll``/``kl`` (mean-field
            guide), ``signal`` (when a signal was requested) and ``validation`` (on validation steps).
        seconds: wall time of the fit (compilation included).
        stopped_early: whether :class:`EarlyStopping` ended the fit.
        best_step, best_value: the best validation (None without ``validation``).
    """

    def __init__(
        self,
        step: SVIStep,
        state: SVIState,
        history: list[dict[str, float]],
        seconds: float,
        *,
        stopped_early: bool = False,
        best: tuple[int, float] | None = None,
        params: dict[str, Array] | None = None,
    ):
        self.bnn = step.bnn
        self.model = step.bnn.model
        self.guide = step.guide
        self.guide_kind = step.guide_kind
        self.state = state
        self.params = step.params(state) if params is None else params
        self.history = history
        self.seconds = float(seconds)
        self.stopped_early = bool(stopped_early)
        self.best_step, self.best_value = best if best is not None else (None, None)
        self._rng_key = derived_key(state.rng_key, "predict")

    @property
    def opt_state(self) -> Any:
        """The optimizer's final state (``state.opt_state``)."""
        return self.state.opt_state

    _fresh_draws = True

    @property
    def losses(self) -> np.ndarray:
        """The loss of every step, ``[num_steps]``."""
        return np.array([h["loss"] for h in self.history])

    def _next_key(self, rng_key: Any) -> Array:
        if rng_key is not None:
            return as_key(rng_key)
        key, new = jax.random.split(jax.random.wrap_key_data(self._rng_key))
        self._rng_key = np.asarray(jax.random.key_data(key))
        return new

    def _fixed(self) -> dict[str, Array]:
        return {n: self.params[n] for n in self.bnn.fixed_names}

    def _noise(self, draws: Mapping[str, Array]) -> Array | float | None:
        return self.params.get(NOISE_SITE)

    def sample_parameters(self, num_samples: int | None = 32, *, rng_key: Any = None) -> dict[str, Array]:
        """``{name: [num_samples, *shape]}`` draws from the guide (fresh ones each call unless ``rng_key`` is given)."""
        num_samples = as_count("num_samples", 32 if num_samples is None else num_samples)
        key = self._next_key(rng_key)
        loc, scale = self.posterior_loc(), self.posterior_scale()
        keys = jax.random.split(key, len(self.bnn.random_names))
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

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.guide_kind == "auto_normal":
            state["guide"] = None  # rebuilt on load (its prototype trace holds closures)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.guide is None:
            self.guide = make_auto_normal(self.bnn)

    def __repr__(self) -> str:
        last = self.history[-1]["loss"] if self.history else math.nan
        return f"SVIResult({self.guide_kind}, step {int(self.state.step)}, final loss {last:.4g}, {self.seconds:.1f} s)"


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
    state: SVIState | None = None,
    init_params: Mapping[str, Array] | None = None,
    validation: Callable[[SVIResult], float] | None = None,
    validate_every: int | None = None,
    early_stopping: EarlyStopping | None = None,
    data_parallel: bool = False,
    devices: Sequence[Any] | None = None,
    mesh: Mesh | None = None,
    log_every: int = 50,
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
            Pass the same optimizer object again to reuse the compiled loop.
        num_steps: optimizer steps in this call.
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
            ``update`` as keyword arguments — e.g. :func:`posterior_scale_args`.
        state: continue from this :class:`~uncertlr.jax.SVIState` (``fit.state``, or one
            loaded with :func:`~uncertlr.jax.load_checkpoint`): parameters, optimizer and
            modulator state, weight noise and data order go on exactly where they stopped.
        init_params: start from these constrained parameters with a fresh optimizer state.
        validation: ``validation(fit) -> float`` (lower is better), called with the fit so far
            every ``validate_every`` steps (default: once per epoch); recorded as ``validation``.
        early_stopping: an :class:`EarlyStopping` acting on ``validation``.
        data_parallel: split each batch across ``devices`` (default: all visible), with the
            same weight noise on every device, so N devices take exactly the step one device
            takes on the whole batch; gradients, loss terms and the signal are averaged over
            :data:`DATA_AXIS`.
        devices: where to run: one device (default: JAX's default device), or several with ``data_parallel``.
        mesh: a ``jax.sharding.Mesh`` with an axis :data:`DATA_AXIS`: data parallelism over it.
        log_every: steps per compiled chunk: the history, progress bar and ``validation`` are
            served between chunks.
        rng_key: a JAX PRNG key or an integer seed (ignored with ``state``, which holds its keys).
        progress: True for a progress bar, False for none, or a ``rich.progress.Progress``.

    Raises:
        FloatingPointError: the loss became NaN/inf; like any exception raised during
            training (Ctrl-C, an error in ``validation``), it carries the fit up to the last
            good step as ``exc.result`` (an :class:`SVIResult`: resume with ``state=exc.result.state``).

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from uncertlr import priors
        >>> from uncertlr.jax import bayesian, svi
        >>> x = jax.random.normal(jax.random.key(0), (64, 3)); y = (x[:, 0] > 0).astype(jnp.int32)
        >>> bnn = bayesian(lambda p, x: x @ p["w"] + p["b"], params={"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)},
        ...                num_data=64, prior=priors.Normal(1.0))
        >>> opt = optax.adam(0.05)
        >>> res = svi(bnn, x, y, optimizer=opt, num_steps=200, batch_size=16, progress=False)
        >>> res.predict(x, num_samples=8).shape, bool(res.losses[-20:].mean() < res.losses[:20].mean())
        ((8, 64, 2), True)
        >>> more = svi(bnn, x, y, optimizer=opt, num_steps=100, batch_size=16, state=res.state, progress=False)
        >>> int(more.state.step), more.history[0]["step"]
        (300, 200.0)
    """
    check_bnn(bnn)
    num_steps = as_count("num_steps", num_steps, minimum=0)
    log_every = as_count("log_every", log_every)
    if state is not None and init_params is not None:
        raise ValueError(
            "pass state= (to continue a run) or init_params= (to start from parameters), not both"
        )
    if early_stopping is not None and validation is None:
        raise ValueError("early_stopping needs validation= (a function fit -> float, lower is better)")
    x, y = _checked_data(bnn, x, y)
    where, device = placement(data_parallel, devices, mesh)
    batch_size = _batch_size(bnn, x.shape[0], batch_size, where)
    step = _cached_step(bnn, optimizer, num_particles, guide, signal, extra_args, where, device)
    step.prepare(x[:batch_size], y[:batch_size])
    if state is not None:
        state = step.place(step.check_state(state))
    else:
        state = step.init(rng_key, x[:batch_size], y[:batch_size], params=init_params)
    loop = compiled_loop(step, x.shape[0], batch_size, log_every)
    x, y = step.place((x, y))
    every = loop.steps_per_epoch if validate_every is None else as_count("validate_every", validate_every)
    run = _Run(step, loop, state, validation, every, early_stopping)
    t0 = time.perf_counter()
    try:
        with progress_task(progress, f"SVI ({guide})", total=num_steps) as advance:
            run.train(x, y, num_steps, advance)
    except BaseException as exc:
        if not isinstance(exc, (GeneratorExit, SystemExit)):
            _attach_result(exc, run, time.perf_counter() - t0)
        raise
    return run.result(time.perf_counter() - t0)


def _attach_result(exc: BaseException, run: _Run, seconds: float) -> None:
    """Give ``exc`` the fit up to the last good step as ``exc.result`` (nothing trained is lost)."""
    try:
        exc.result = run.result(seconds)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - never mask the original error
        return
    if hasattr(exc, "add_note"):
        exc.add_note(
            f"the fit up to step {int(run.state.step)} is in exc.result; continue it with "
            "svi(..., state=exc.result.state)"
        )


class _Run:
    """The host side of one :func:`svi` call: chunks, history, validation and early stopping."""

    def __init__(
        self,
        step: SVIStep,
        loop: Any,
        state: SVIState,
        validation: Callable[[SVIResult], float] | None,
        validate_every: int,
        early_stopping: EarlyStopping | None,
    ):
        self.step, self.loop, self.state = step, loop, state
        self.validation, self.validate_every, self.early_stopping = validation, validate_every, early_stopping
        self.history: list[dict[str, float]] = []
        self.first_step = int(state.step)
        self.starts: list[SVIState] = []  # the states the last two chunks started from
        self.best: tuple[int, float] | None = None
        self.best_state: SVIState | None = None
        self.params: dict[str, Array] | None = None  # constrained parameters of self.state, when known
        self.waited = 0
        self.stopped_early = False

    def train(self, x: Array, y: Array, num_steps: int, advance: Any) -> None:
        loop, done, order = self.loop, 0, None
        kw = {"terms": self.step.guide_kind == "meanfield", "signal": self.step.signal_fn is not None}
        while done < num_steps and not self.stopped_early:
            t = int(self.state.step)
            limit = min(loop.length, num_steps - done)
            if self.validation is not None:
                limit = min(limit, self.validate_every - t % self.validate_every)
            if order is None or loop.steps_left(order, self.state) < limit:
                order = loop.order(self.state)  # a fresh block: the rest of this epoch, or a whole chunk
            limit = min(limit, loop.steps_left(order, self.state))
            start = self.state
            new, infos, count, stop, params = loop.run(start, order.rows, order.first, x, y, np.int32(limit))
            count, infos = int(count), jax.device_get(infos)
            if bool(stop):
                self.history += records(infos, t, count - 1, self.loop.steps_per_epoch, **kw)
                self._keep_last_good(x, y, t + count - 1)
                loss = float(np.asarray(infos.loss)[count - 1])
                raise FloatingPointError(
                    f"loss became {loss} at step {t + count - 1}; lower the learning rate or check the data "
                    f"(exc.result holds the last state with finite parameters, after {int(self.state.step)} steps)"
                )
            self.starts = (self.starts + [start])[-2:]
            self.state, self.params = new, params
            self.history += records(infos, t, count, self.loop.steps_per_epoch, **kw)
            done += count
            advance(count, info=f"loss {self.history[-1]['loss']:.4f}")
            if self.validation is not None and int(self.state.step) % self.validate_every == 0:
                self._validate()

    def _keep_last_good(self, x: Array, y: Array, bad: int) -> None:
        """Step ``bad`` gave a non-finite loss: recompute (the steps are deterministic) and keep the
        latest state before it whose (constrained) parameters are all finite, and the history up to it."""
        starts = self.starts + [self.state]
        for target in range(bad, max(int(starts[0].step), bad - 8) - 1, -1):
            start = next(s for s in reversed(starts) if int(s.step) <= target)
            state = start
            if target > int(start.step):
                order = self.loop.order(start)
                limit = np.int32(target - int(start.step))
                state = self.loop.run(start, order.rows, order.first, x, y, limit)[0]
            if all(bool(jax.numpy.isfinite(v).all()) for v in jax.tree.leaves(self.step.params(state))):
                self.state = state
                break
        else:
            self.state = starts[0]
        self.params = None
        del self.history[int(self.state.step) - self.first_step :]

    def _validate(self) -> None:
        value = float(self.validation(self.result(math.nan)))  # type: ignore[misc]
        self.history[-1]["validation"] = value
        es = self.early_stopping
        min_delta = es.min_delta if es is not None else 0.0
        if self.best is None or value < self.best[1] - min_delta:
            self.best, self.waited = (int(self.state.step), value), 0
            if es is not None and es.restore_best:
                self.best_state = self.state
        else:
            self.waited += 1
            if es is not None and self.waited >= es.patience:
                self.stopped_early = True

    def result(self, seconds: float) -> SVIResult:
        best = self.stopped_early and self.best_state is not None
        state, params = (self.best_state, None) if best else (self.state, self.params)
        return SVIResult(
            self.step,
            state,  # type: ignore[arg-type]
            self.history,
            seconds,
            stopped_early=self.stopped_early,
            best=self.best,
            params=params,
        )


def _checked_data(bnn: BNN, x: Any, y: Any) -> tuple[Array, Array]:
    """``bnn.check_data(x, y)``, skipped when these very jax arrays (immutable) were checked by the last call."""
    last = bnn.__dict__.get("_svi_checked")
    if last is not None and last[0]() is x and last[1]() is y:
        return x, y
    xc, yc = bnn.check_data(x, y)
    if xc is x and yc is y:  # jax arrays, passed through unchanged
        bnn.__dict__["_svi_checked"] = (weakref.ref(x), weakref.ref(y))
    return xc, yc


def _cached_step(
    bnn: BNN,
    optimizer: Any,
    num_particles: int,
    guide: str,
    signal: Any,
    extra_args: Any,
    mesh: Mesh | None,
    device: Any,
) -> SVIStep:
    """The :class:`SVIStep` for these options, built once per BNN (least recently used of ``STEP_CACHE_SIZE`` dropped)."""
    key = (optimizer, num_particles, guide, signal, extra_args, mesh, device)
    cache: OrderedDict[Any, SVIStep] = bnn.__dict__.setdefault("_svi_steps", OrderedDict())
    try:
        step = cache.pop(key)
    except (KeyError, TypeError):  # TypeError: an unhashable option, never cached
        step = SVIStep(
            bnn,
            optimizer,
            num_particles=num_particles,
            guide=guide,
            signal=signal,
            extra_args=extra_args,
            mesh=mesh,
            device=device,
        )
    try:
        cache[key] = step
    except TypeError:
        return step
    while len(cache) > STEP_CACHE_SIZE:
        cache.popitem(last=False)
    return step


def _batch_size(bnn: BNN, n: int, batch_size: int | None, mesh: Mesh | None) -> int:
    """The checked batch size: at most ``n == bnn.num_data`` rows, a multiple of the devices when split."""
    if n != bnn.num_data:
        raise ValueError(
            f"x has {n} rows but the BNN was built with num_data={bnn.num_data}; the likelihood of each batch "
            "is scaled by num_data, so build the BNN with the training-set size"
        )
    batch_size = n if batch_size is None else as_count("batch_size", batch_size)
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the {n} rows of x")
    num_devices = 1 if mesh is None else mesh.shape[DATA_AXIS]
    if batch_size % num_devices:
        raise ValueError(
            f"data_parallel splits each batch across {num_devices} devices: "
            f"batch_size={batch_size} must be a multiple of {num_devices}"
        )
    return batch_size
