"""Checkpoints of an SVI run: :func:`save_checkpoint` and :func:`load_checkpoint`.

An :class:`~uncertlr.jax.SVIState` is a pytree of arrays, so a checkpoint is the state (and,
optionally, the training history) in one ``.npz`` file: written atomically (an interrupted
save leaves the previous file intact), read with ``allow_pickle=False`` (a file carrying a
pickled object is refused, not executed), and checked leaf by leaf against a template of
the same run, so a checkpoint of another model or optimizer is refused with the difference
named. ``svi(..., state=ckpt.state)`` then continues bit-identically.

The state works as it is with orbax too (``orbax.checkpoint.StandardCheckpointer().save(path,
state)`` and ``restore(path, target=like)``), for sharded arrays on many hosts.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from uncertlr._io import atomic_write
from uncertlr.jax.step import SVIState

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint"]

#: Format tag written into every checkpoint.
FORMAT = "uncertlr.jax.svi-state/1"


class Checkpoint(NamedTuple):
    """What :func:`load_checkpoint` returns: the state (on the template's devices) and the history."""

    state: SVIState
    history: list[dict[str, float]]


def save_checkpoint(
    path: str | os.PathLike[str], state: SVIState, *, history: list[dict[str, float]] | None = None
) -> Path:
    """Write ``state`` (and ``history``) to ``path`` (``.npz``) atomically; returns the path.

    Example:
        >>> import jax.numpy as jnp, optax, tempfile, os
        >>> from uncertlr.jax import bayesian, svi_step, save_checkpoint, load_checkpoint
        >>> bnn = bayesian(lambda p, x: x @ p["w"], params={"w": jnp.zeros((4, 3))}, num_data=32)
        >>> step = svi_step(bnn, optax.adam(1e-2))
        >>> state, _ = step.update(step.init(0), jnp.ones((8, 4)), jnp.zeros(8, jnp.int32))
        >>> path = save_checkpoint(os.path.join(tempfile.mkdtemp(), "run.npz"), state, history=[{"loss": 1.0}])
        >>> ckpt = load_checkpoint(path, like=step.init(0))
        >>> int(ckpt.state.step), ckpt.history
        (1, [{'loss': 1.0}])
    """
    if not isinstance(state, SVIState):
        raise TypeError(f"state must be an SVIState (e.g. fit.state); got {type(state).__name__}")
    leaves, manifest = [], []
    for path_keys, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        arr = np.asarray(jax.device_get(leaf))
        manifest.append(
            {"key": jax.tree_util.keystr(path_keys), "dtype": str(arr.dtype), "shape": list(arr.shape)}
        )
        if arr.dtype.kind not in "biufc":  # bfloat16 and other ml_dtypes: store the raw bits
            arr = arr.view(f"u{arr.dtype.itemsize}")
        leaves.append(arr)
    header = {"format": FORMAT, "leaves": manifest, "history": history or []}
    arrays = {f"leaf_{i}": a for i, a in enumerate(leaves)}
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path: str | os.PathLike[str], *, like: Any) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the ``.npz`` file.
        like: a state of the same run to take the structure and placement from — ``fit.state``,
            or ``svi_step(bnn, optimizer).init()`` in a new process (or an ``SVIResult``).

    Raises:
        ValueError: the file is damaged, not a checkpoint, or holds a state of another
            model or optimizer (the first differing leaf is named).
    """
    like = getattr(like, "state", like)
    if not isinstance(like, SVIState):
        raise TypeError(
            f"like must be an SVIState of the same run (e.g. step.init()); got {type(like).__name__}"
        )
    try:
        with np.load(Path(path), allow_pickle=False) as f:
            header = json.loads(bytes(f["header"]).decode())
            raw = [f[f"leaf_{i}"] for i in range(len(header["leaves"]))]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, io.UnsupportedOperation) as exc:
        raise ValueError(
            f"{path} is not a readable uncertlr checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if header.get("format") != FORMAT:
        raise ValueError(f"{path} is not an uncertlr JAX SVI checkpoint (format {header.get('format')!r})")
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    if len(flat) != len(raw):
        raise ValueError(
            f"{path} holds {len(raw)} arrays but this run's state has {len(flat)}: "
            "a checkpoint of another model or optimizer"
        )
    leaves = []
    for (keys, want), meta, arr in zip(flat, header["leaves"], raw):
        key = jax.tree_util.keystr(keys)
        dtype = np.dtype(jax.numpy.dtype(meta["dtype"]))
        if arr.dtype != dtype:
            arr = arr.view(dtype)
        if meta["key"] != key or arr.shape != tuple(np.shape(want)) or dtype != np.dtype(want.dtype):
            raise ValueError(
                f"{path} does not fit this run's state at {key}: the checkpoint has {meta['key']} "
                f"{meta['dtype']}{meta['shape']}, the run {np.dtype(want.dtype)}{list(np.shape(want))}"
            )
        sharding = getattr(want, "sharding", None)
        leaves.append(jax.device_put(arr, sharding) if sharding is not None else jax.numpy.asarray(arr))
    return Checkpoint(jax.tree_util.tree_unflatten(treedef, leaves), list(header["history"]))
