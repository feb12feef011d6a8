"""The compiled training loop behind :func:`uncertlr.jax.svi`, and where it runs.

:func:`compiled_loop` gives, once per (:class:`~uncertlr.jax.SVIStep`, rows, batch size, chunk
length), a jitted ``run(state, order, x, y, limit)`` that takes up to ``limit`` steps inside
one ``lax.while_loop`` over the device-resident data: each step slices its batch from its
epoch's permutation (drawn on the host from ``(order_key, epoch)`` and sent over once per block
of epochs: one epoch when an epoch has at least a chunk of steps, else as many epochs as a chunk
spans, so a small data set still runs a whole chunk per call), and the host only reads the
per-step :class:`~uncertlr.jax.StepInfo` back once per chunk. The loop stops
after the first step whose loss is not finite; every step of every chunk runs the same
compiled body, which is what makes a resumed run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh

from uncertlr.jax.step import DATA_AXIS, StepInfo, SVIState, SVIStep

__all__: list[str] = []

Array = Any


def placement(
    data_parallel: bool, devices: Sequence[Any] | None, mesh: Mesh | None
) -> tuple[Mesh | None, Any]:
    """``(mesh, device)`` for ``svi``'s ``data_parallel``/``devices``/``mesh`` arguments (at most one is not None).

    A mesh means data parallelism over its :data:`DATA_AXIS`; ``data_parallel=True`` builds one over
    ``devices`` (default: every visible device); otherwise the step runs on the one device given
    (default: JAX's default device).
    """
    if mesh is not None:
        if devices is not None:
            raise ValueError("pass devices= or mesh=, not both (a mesh names its devices)")
        if not isinstance(mesh, Mesh) or DATA_AXIS not in mesh.axis_names:
            raise ValueError(
                f"mesh must be a jax.sharding.Mesh with an axis named {DATA_AXIS!r}; got {mesh!r}"
            )
        return mesh, None
    if devices is not None:
        devices = list(devices)
        if not devices or not all(isinstance(d, jax.Device) for d in devices):
            raise ValueError(
                f"devices must be a non-empty list of jax devices (jax.devices()); got {devices!r}"
            )
    if data_parallel:
        return Mesh(np.array(devices or jax.devices()), (DATA_AXIS,)), None
    if devices is not None and len(devices) != 1:
        raise ValueError(
            f"devices= lists {len(devices)} devices: pass data_parallel=True to split each batch across them, "
            "or a single device"
        )
    return None, (devices[0] if devices else None)


@dataclass(frozen=True)
class Order:
    """The row orders of epochs ``first_epoch .. first_epoch + epochs - 1``: ``rows`` is ``int32[epochs, N]``."""

    first_epoch: int
    epochs: int
    rows: Array
    first: Array  # first_epoch as a 0-d int32 array on the step's devices (an argument of the compiled loop)


class CompiledLoop:
    """``run`` and ``order`` for one step, data size, batch size and chunk length (see the module docstring)."""

    def __init__(self, step: SVIStep, n: int, batch_size: int, length: int):
        self.step = step
        self.n, self.batch_size, self.length = n, batch_size, length
        self.steps_per_epoch = n // batch_size
        # epochs per order block: a fresh block covers at least `length` steps from any step of its first epoch
        self.epochs = 1 if self.steps_per_epoch >= length else -(-length // self.steps_per_epoch) + 1
        self._perms: dict[tuple[int, ...], np.ndarray] = {}
        self.run = jax.jit(self._run)

    def _perm(self, key: list[int], epoch: int) -> np.ndarray:
        seed = (*key, epoch)
        if seed not in self._perms:
            if len(self._perms) >= 2 * self.epochs:  # keep the blocks' overlap, drop older epochs
                self._perms.pop(next(iter(self._perms)))
            self._perms[seed] = np.random.default_rng(list(seed)).permutation(self.n).astype(np.int32)
        return self._perms[seed]

    def order(self, state: SVIState) -> Order:
        """The row orders of the block of epochs that starts with the epoch ``state.step`` falls in.

        Drawn on the host from ``(order_key, epoch)`` (a permutation of ``N`` rows is a sort on an
        accelerator, and compiling it costs more than drawing it here once per epoch), so an epoch's
        order does not depend on which block it came in: a resumed run sees the same batches.
        """
        epoch = int(state.step) // self.steps_per_epoch
        if self.batch_size == self.n:
            rows = np.zeros((1, 1), np.int32)
        else:
            key = np.asarray(state.order_key, np.uint32).tolist()
            rows = np.stack([self._perm(key, epoch + e) for e in range(self.epochs)])
        return Order(epoch, self.epochs, self.step.place(rows), self.step.place(np.int32(epoch)))

    def steps_left(self, order: Order, state: SVIState) -> int:
        """Steps from ``state`` to the end of ``order``'s block of epochs."""
        return (order.first_epoch + order.epochs) * self.steps_per_epoch - int(state.step)

    def _batch(self, state: SVIState, rows: Array, first: Array, x: Array, y: Array) -> tuple[Array, Array]:
        if self.batch_size == self.n:
            return x, y
        e = state.step // self.steps_per_epoch - first
        i = state.step % self.steps_per_epoch
        order = lax.dynamic_index_in_dim(rows, e, keepdims=False)
        idx = lax.dynamic_slice_in_dim(order, i * self.batch_size, self.batch_size)
        take = lambda a: a.at[idx].get(mode="promise_in_bounds", unique_indices=True)  # noqa: E731
        return take(x), take(y)

    def _run(
        self, state: SVIState, rows: Array, first: Array, x: Array, y: Array, limit: Array
    ) -> tuple[Any, ...]:
        """Up to ``limit`` (<= length, within the block of ``rows``) steps: the state, ``StepInfo`` rows
        ``[length]``, the steps run, whether the last one's loss was not finite, and the constrained parameters."""
        shapes = jax.eval_shape(self.step.pure_update, state, x[: self.batch_size], y[: self.batch_size])[1]
        infos = jax.tree.map(lambda s: jnp.full((self.length, *s.shape), jnp.nan, s.dtype), shapes)

        def cond(carry: tuple[Any, ...]) -> Array:
            j, _, _, stop = carry
            return (j < limit) & ~stop

        def body(carry: tuple[Any, ...]) -> tuple[Any, ...]:
            j, st, buf, _ = carry
            xb, yb = self._batch(st, rows, first, x, y)
            st, info = self.step.pure_update(st, xb, yb)
            buf = jax.tree.map(lambda b, v: b.at[j].set(v), buf, info)
            return j + 1, st, buf, ~jnp.isfinite(info.loss)

        init = (jnp.zeros((), jnp.int32), state, infos, jnp.zeros((), bool))
        count, state, infos, stop = lax.while_loop(cond, body, init)
        return state, infos, count, stop, self.step._constrain(state.params)


def compiled_loop(step: SVIStep, n: int, batch_size: int, length: int) -> CompiledLoop:
    """The :class:`CompiledLoop` of ``step`` for these sizes, built once and kept on the step."""
    key = (n, batch_size, length)
    if key not in step.loops:
        step.loops[key] = CompiledLoop(step, n, batch_size, length)
    return step.loops[key]


def records(
    infos: StepInfo, first_step: int, count: int, steps_per_epoch: int, *, terms: bool, signal: bool
) -> list[dict[str, float]]:
    """History records ``{step, epoch, loss, lr, nll?, kl?, signal?}`` of ``count`` steps from ``first_step``."""
    cols = {k: np.asarray(v)[:count].astype(np.float64).tolist() for k, v in infos._asdict().items()}
    out = []
    for i in range(count):
        t = first_step + i
        rec = {"step": float(t), "epoch": float(t // steps_per_epoch), "loss": cols["loss"][i]}
        rec["lr"] = cols["learning_rate"][i]
        if terms:
            rec.update(nll=cols["nll"][i], kl=cols["kl"][i])
        if signal:
            rec["signal"] = cols["signal"][i]
        out.append(rec)
    return out
