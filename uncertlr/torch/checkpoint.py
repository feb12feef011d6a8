"""Checkpoints: one call saves everything a run needs to continue bit-identically.

A checkpoint holds the model's ``state_dict`` (a BNN's posterior, deterministic
weights, buffers), the optimizer's, the LR scheduler's and the modulator's state,
every RNG state (torch, CUDA, numpy, Python, and an optional data-order
``torch.Generator``), the step, the training history and user extras. It is
written atomically (temporary file, then rename: an interrupted save leaves the
previous checkpoint intact) and contains only tensors and plain Python data, so
it loads with ``torch.load(weights_only=True)``; a file carrying a pickled Python
object is refused instead of being executed.

Example:
    >>> import tempfile, torch
    >>> from uncertlr.torch import bayesian
    >>> from uncertlr.torch.checkpoint import load_checkpoint, save_checkpoint
    >>> bnn = bayesian(torch.nn.Linear(3, 2), num_data=10)
    >>> opt = torch.optim.Adam(bnn.parameters())
    >>> path = save_checkpoint(tempfile.mkdtemp() + "/ckpt.pt", model=bnn, optimizer=opt, step=7)
    >>> load_checkpoint(path, model=bnn, optimizer=opt).step
    7
"""

from __future__ import annotations

import io
import os
import pickle
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from uncertlr._io import atomic_write, environment

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "uncertlr.checkpoint/1"
#: Entries every checkpoint holds (optimizer, scheduler and modulator states are optional).
_REQUIRED = ("step", "model", "rng", "history", "extra", "versions")


class Checkpoint(NamedTuple):
    """What :func:`load_checkpoint` returns besides restoring the objects it was given."""

    step: int
    history: list[dict[str, float]]
    extra: dict[str, Any]
    versions: dict[str, str]


def _rng_state(generator: torch.Generator | torch.Tensor | None) -> dict[str, Any]:
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global RNG is what user code seeds
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = (
            generator.get_state() if isinstance(generator, torch.Generator) else generator.clone()
        )
    return state


def _set_rng_state(state: Mapping[str, Any], generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    legacy = (
        "MT19937",
        np_state["key"].numpy().astype(np.uint32),
        np_state["pos"],
        np_state["has_gauss"],
        np_state["cached_gaussian"],
    )
    np.random.set_state(legacy)  # noqa: NPY002
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None:
        if "generator" not in state:
            raise ValueError("the checkpoint holds no data-order generator state, but a generator was given")
        generator.set_state(state["generator"])


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    modulator: Any | None = None,
    generator: torch.Generator | torch.Tensor | None = None,
    step: int = 0,
    history: Sequence[Mapping[str, float]] = (),
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Atomically write a checkpoint of a training run to ``path``; returns the path.

    Args:
        model: the model (e.g. a :class:`~uncertlr.torch.BNN`); its ``state_dict()`` is saved.
        optimizer, scheduler, modulator: saved through their ``state_dict()`` when given.
        generator: the ``torch.Generator`` that orders the data, or a state of it to resume
            from (``LoopState.resume_generator_state`` from :func:`~uncertlr.torch.training.fit`).
        step: the number of optimizer steps taken so far.
        history: the training history (a list of dicts of floats).
        extra: any plain data (numbers, strings, lists, dicts, tensors) to keep with it.
    """
    doc: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "step": int(step),
        "model": model.state_dict(),
        "rng": _rng_state(generator),
        "history": [dict(h) for h in history],
        "extra": dict(extra or {}),
        "versions": environment()["versions"],
    }
    if optimizer is not None:
        doc["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        doc["scheduler"] = scheduler.state_dict()
    if modulator is not None:
        doc["modulator"] = modulator.state_dict()
    buf = io.BytesIO()
    torch.save(doc, buf)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    modulator: Any | None = None,
    generator: torch.Generator | None = None,
    restore_rng: bool = True,
    map_location: str | torch.device | None = "cpu",
) -> Checkpoint:
    """Restore the given objects from a checkpoint written by :func:`save_checkpoint`.

    The file is read with ``torch.load(weights_only=True)``: a checkpoint that carries a
    pickled Python object (which could run arbitrary code when loaded) is refused.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a safe uncertlr checkpoint, or lacks a state it is asked to restore.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        doc = torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError:
        raise
    except pickle.UnpicklingError as exc:
        if "global" in str(exc).lower():  # the weights-only unpickler met a class or function reference
            raise ValueError(
                f"{path} is not a safe uncertlr checkpoint: it carries pickled Python objects, which torch.load "
                f"would execute; refusing to load it ({str(exc).splitlines()[0]})"
            ) from exc
        raise ValueError(
            f"{path} is not a readable checkpoint (corrupted or not a torch file): {exc}"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a damaged file fails anywhere in torch's reader
        raise ValueError(
            f"{path} is not a readable checkpoint (truncated, corrupted or not a torch file): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not an uncertlr checkpoint (format {doc.get('format') if isinstance(doc, dict) else type(doc).__name__!r})"
        )
    missing = [k for k in _REQUIRED if k not in doc]
    if missing:
        raise ValueError(f"{path} is a damaged uncertlr checkpoint: it lacks {missing}")
    try:
        model.load_state_dict(doc["model"])
    except RuntimeError as exc:  # missing/unexpected keys or shape mismatches, listed by torch
        raise ValueError(f"{path}: the checkpoint's model state does not fit this model: {exc}") from exc
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("modulator", modulator)):
        if obj is None:
            continue
        if name not in doc:
            raise ValueError(f"{path} holds no {name} state, but a {name} was given to restore")
        obj.load_state_dict(doc[name])
    if restore_rng:
        if generator is not None and "generator" not in doc["rng"]:
            raise ValueError("the checkpoint holds no data-order generator state, but a generator was given")
        try:
            _set_rng_state(doc["rng"], generator)
        except Exception as exc:  # noqa: BLE001 - torch, numpy and random each fail their own way
            raise ValueError(
                f"{path} is a damaged uncertlr checkpoint: its RNG state cannot be restored "
                f"({type(exc).__name__}: {exc})"
            ) from exc
    return Checkpoint(doc["step"], doc["history"], doc["extra"], doc["versions"])
