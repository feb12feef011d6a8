"""Checkpoints: one call saves everything a run needs to continue bit-identically.

A checkpoint holds the model's ``state_dict`` (a BNN's posterior, deterministic
weights, buffers), the optimizer's, the LR scheduler's and the modulator's state,
every RNG state (torch, CUDA, numpy, Python, and an optional data-order
``torch.Generator``), the step, the training history and user extras. It is
written atomically (temporary file, then rename: an interrupted save leaves the
previous checkpoint intact) and contains only tensors and plain Python data, so
it loads with ``torch.load(weights_only=True)``; a file carrying a pickled Python
object is refused instead of being executed.

Three promises, each tested:

* **What is saved can be loaded.** :func:`save_checkpoint` and :func:`load_checkpoint` run the
  same check (:func:`uncertlr.torch._ckptdoc.check_document`): a value a checkpoint cannot
  hold (a numpy scalar, a ``Path``, a dataclass...) is refused when saving, naming its key.
* **Damage is detected.** A SHA-256 over the whole content (keys, numbers, tensor bytes) is
  stored beside it and recomputed on load: a damaged file raises ``ValueError``, it never
  loads changed weights.
* **All or nothing.** The file is checked against the live objects (parameter names and
  shapes, optimizer groups, scheduler, RNG states) before any of them changes; if restoring
  still fails, everything already restored is put back as it was.

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

import copy
import hmac
import io
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from uncertlr._io import atomic_write, environment
from uncertlr.torch._ckptdoc import check_document, digest
from uncertlr.torch._rng import capture_rng, check_rng, rng_state, set_rng_state
from uncertlr.torch._state import rule_id

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "uncertlr.checkpoint/2"
#: Entries every checkpoint holds (optimizer, scheduler and modulator states are optional).
_REQUIRED = ("step", "model", "rng", "history", "extra", "versions")
_STATEFUL = ("optimizer", "scheduler", "modulator")


class Checkpoint(NamedTuple):
    """What :func:`load_checkpoint` returns besides restoring the objects it was given."""

    step: int
    history: list[dict[str, float]]
    extra: dict[str, Any]
    versions: dict[str, str]


# --------------------------------------------------------------------------- save


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
            from (``LoopState.resume_generator_state`` from :func:`~uncertlr.torch.fit`).
        step: the number of optimizer steps taken so far.
        history: the training history (a list of dicts of numbers).
        extra: any plain data (numbers, strings, lists, dicts, tensors) to keep with it.

    Raises:
        ValueError: something to be saved is not plain data (a numpy scalar, a ``Path``, a
            dataclass, a function...); the message names its key, and nothing is written.
    """
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step must be an integer >= 0; got {step!r}")
    if extra is not None and not isinstance(extra, Mapping):
        raise ValueError(f"extra must be a mapping of plain data; got {type(extra).__name__}")
    doc: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "step": int(step),
        "model": model.state_dict(),
        "rng": rng_state(generator),
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
    check_document(doc, _REQUIRED)  # the same check load_checkpoint runs
    doc["sha256"] = digest(doc)
    buf = io.BytesIO()
    torch.save(doc, buf)
    return atomic_write(path, lambda f: f.write(buf.getbuffer()))


# --------------------------------------------------------------------------- load


def _check_device(map_location: Any) -> None:
    if map_location is None or callable(map_location) or isinstance(map_location, Mapping):
        return
    try:
        dev = torch.device(map_location)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"map_location={map_location!r} is not a device: {exc}") from exc
    if dev.type == "cpu" or dev.type == "meta":
        return
    backend = getattr(torch, dev.type, None)
    available = (
        backend is not None and callable(getattr(backend, "is_available", None)) and backend.is_available()
    )
    if not available:
        raise ValueError(
            f"map_location={map_location!r}: this machine has no {dev.type} device; "
            "load with map_location='cpu' (the live objects keep their own devices)"
        )
    count = backend.device_count() if callable(getattr(backend, "device_count", None)) else 1
    if dev.index is not None and dev.index >= count:
        raise ValueError(f"map_location={map_location!r}: this machine has {count} {dev.type} device(s)")


def _read(path: Path, map_location: Any) -> dict[str, Any]:
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
    except RuntimeError as exc:
        if "deserialize object on" in str(exc) and "is_available() is False" in str(exc):
            raise ValueError(
                f"{path} was saved on a device this machine does not have ({str(exc).splitlines()[0]}); "
                "load it with map_location='cpu'"
            ) from exc
        raise ValueError(
            f"{path} is not a readable checkpoint (truncated, corrupted or not a torch file): RuntimeError: {exc}"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a damaged file fails anywhere in torch's reader
        raise ValueError(
            f"{path} is not a readable checkpoint (truncated, corrupted or not a torch file): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        fmt = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(
            f"{path} is not an uncertlr checkpoint of format {CHECKPOINT_FORMAT!r} (format {fmt!r})"
        )
    stored = doc.pop("sha256", None)
    if not isinstance(stored, str):
        raise ValueError(f"{path} is a damaged uncertlr checkpoint: its SHA-256 is missing")
    try:
        check_document(doc, _REQUIRED)
        actual = digest(doc)
    except ValueError as exc:
        raise ValueError(f"{path} is a damaged uncertlr checkpoint: {exc}") from exc
    if not hmac.compare_digest(stored, actual):
        raise ValueError(
            f"{path} is a damaged uncertlr checkpoint: its content does not match its SHA-256 "
            "(the file was changed or corrupted after it was written)"
        )
    return doc


def _optional_keys(model: torch.nn.Module) -> set[str]:
    """State-dict keys that may be missing or extra (a module's ``_optional_state_keys``, e.g. a BNN's noise pairing)."""
    return {
        f"{prefix}.{k}" if prefix else k
        for prefix, m in model.named_modules()
        for k in getattr(type(m), "_optional_state_keys", ())
    }


def _check_model(saved: Mapping[str, Any], model: torch.nn.Module) -> None:
    live = model.state_dict()
    optional = _optional_keys(model)
    missing = [k for k in live if k not in saved and k not in optional]
    unexpected = [k for k in saved if k not in live and k not in optional]
    shapes = [
        f"{k}: saved {tuple(saved[k].shape)}, model {tuple(v.shape)}"
        for k, v in live.items()
        if k in saved and isinstance(v, Tensor) and isinstance(saved[k], Tensor) and saved[k].shape != v.shape
    ]
    kinds = [
        k for k, v in live.items() if k in saved and isinstance(v, Tensor) != isinstance(saved[k], Tensor)
    ]
    if missing or unexpected or shapes or kinds:
        parts = [
            f"{label} {items[:6]}{' ...' if len(items) > 6 else ''}"
            for label, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatch", shapes),
                ("not tensors", kinds),
            )
            if items
        ]
        raise ValueError("the checkpoint's model state does not fit this model: " + "; ".join(parts))


def _check_optimizer(saved: Any, optimizer: torch.optim.Optimizer) -> None:
    if not isinstance(saved, Mapping) or set(saved) < {"state", "param_groups"}:
        raise ValueError("optimizer: the saved state has no 'state' and 'param_groups'")
    groups, live = saved["param_groups"], optimizer.param_groups
    if not isinstance(groups, list) or len(groups) != len(live):
        n = len(groups) if isinstance(groups, list) else "?"
        raise ValueError(f"optimizer: the checkpoint has {n} parameter groups, the optimizer {len(live)}")
    params: dict[int, Tensor] = {}
    for i, (g, lg) in enumerate(zip(groups, live)):
        ids = g.get("params") if isinstance(g, Mapping) else None
        if not isinstance(ids, list) or len(ids) != len(lg["params"]):
            raise ValueError(
                f"optimizer: parameter group {i} holds {len(ids) if isinstance(ids, list) else '?'} parameters "
                f"in the checkpoint and {len(lg['params'])} in the optimizer"
            )
        params.update(zip(ids, lg["params"]))
    state = saved["state"]
    if not isinstance(state, Mapping):
        raise ValueError("optimizer: the saved 'state' is not a dict")
    builtin = type(optimizer).__module__.startswith("torch.optim")
    for k, entry in state.items():
        if k not in params:
            raise ValueError(f"optimizer: the saved state refers to parameter {k!r}, which no group holds")
        if not builtin or not isinstance(entry, Mapping):
            continue
        p = params[k]
        for name, v in entry.items():  # torch's own optimizers keep per-weight buffers shaped like the weight
            if isinstance(v, Tensor) and v.dim() == p.dim() and v.dim() > 0 and v.shape != p.shape:
                raise ValueError(
                    f"optimizer: state[{k}][{name!r}] has shape {tuple(v.shape)}, its parameter {tuple(p.shape)}"
                )


def _check_stateful(name: str, saved: Any, obj: Any) -> None:
    if not isinstance(saved, Mapping):
        raise ValueError(f"{name}: the saved state is not a dict")
    if name == "scheduler":
        live = obj.state_dict()
        if set(saved) != set(live):
            raise ValueError(
                f"scheduler: the checkpoint's state has keys {sorted(saved)}, this {type(obj).__name__} "
                f"{sorted(live)} (a different scheduler?)"
            )
    if name == "modulator" and hasattr(obj, "rule"):
        if saved.get("rule") != rule_id(obj.rule):
            raise ValueError(f"modulator: saved for rule {saved.get('rule')}, not {rule_id(obj.rule)}")


def _snapshot(obj: Any) -> Callable[[], None]:
    """A function that puts ``obj`` (anything with ``state_dict``/``load_state_dict``) back as it is now."""
    if getattr(obj, "_optimizer", True) is None and hasattr(obj, "_pending_load"):  # a detached Modulator
        pending = obj._pending_load

        def restore_pending() -> None:
            obj._pending_load = pending

        return restore_pending
    state = obj.state_dict()
    if isinstance(obj, torch.nn.Module):
        state = type(state)(
            (k, v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v)) for k, v in state.items()
        )
    else:
        state = copy.deepcopy(state)
    return lambda: obj.load_state_dict(state)


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
    pickled Python object (which could run arbitrary code when loaded) is refused. Its
    SHA-256 is checked, then everything is checked against the live objects before any of
    them changes: a refused checkpoint leaves the model, optimizer, scheduler, modulator,
    generator and the RNGs exactly as they were.

    Args:
        path: the checkpoint file.
        model, optimizer, scheduler, modulator: restored through ``load_state_dict`` when given.
        generator: the data-order ``torch.Generator``, set to the saved state when given.
        restore_rng: also restore the global RNGs (torch, CUDA, numpy, Python's ``random``).
        map_location: where the checkpoint's tensors are loaded (default the CPU; the live
            objects keep their own devices).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is damaged or not a safe uncertlr checkpoint, does not fit the
            given objects, lacks a state it is asked to restore, or ``map_location`` names a
            device this machine does not have.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    _check_device(map_location)
    doc = _read(path, map_location)
    given = {"optimizer": optimizer, "scheduler": scheduler, "modulator": modulator}
    try:
        _check_model(doc["model"], model)
        for name, obj in given.items():
            if obj is None:
                continue
            if name not in doc:
                raise ValueError(f"the checkpoint holds no {name} state, but a {name} was given to restore")
            if name == "optimizer":
                _check_optimizer(doc[name], obj)
            else:
                _check_stateful(name, doc[name], obj)
        if restore_rng:
            check_rng(doc["rng"], generator)
        elif generator is not None and "generator" not in doc["rng"]:
            raise ValueError("the checkpoint holds no data-order generator state, but a generator was given")
    except ValueError as exc:
        raise ValueError(f"{path}: {exc} (nothing was restored)") from exc

    undo: list[Callable[[], None]] = []
    try:
        undo.append(_snapshot(model))
        model.load_state_dict(doc["model"])
        for name, obj in given.items():
            if obj is not None:
                undo.append(_snapshot(obj))
                obj.load_state_dict(doc[name])
        if restore_rng:
            undo.append(capture_rng(generator))
            set_rng_state(doc["rng"], generator)
        elif generator is not None:
            undo.append(capture_rng(generator))
            generator.set_state(doc["rng"]["generator"])
    except Exception as exc:  # noqa: BLE001 - whatever failed, put back what was already restored
        failed = []
        for restore in reversed(undo):
            try:
                restore()
            except Exception as again:  # noqa: BLE001 - keep putting the others back
                failed.append(f"{type(again).__name__}: {again}")
        outcome = f"putting the objects back failed too: {failed}" if failed else "nothing was changed"
        raise ValueError(
            f"{path}: the checkpoint could not be restored ({type(exc).__name__}: {exc}); {outcome}"
        ) from exc
    return Checkpoint(doc["step"], doc["history"], doc["extra"], doc["versions"])
