"""Every RNG state a checkpoint carries: torch, CUDA, numpy's and Python's global RNGs, a data-order generator.

:func:`rng_state` captures them as plain data (tensors, ints, lists) for
:func:`~uncertlr.torch.save_checkpoint`; :func:`check_rng` checks a saved state against the
live RNGs before anything is set; :func:`set_rng_state` sets them; :func:`capture_rng`
returns a function that puts them back (used when a load has to be undone).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["capture_rng", "check_rng", "rng_state", "set_rng_state"]


def rng_state(generator: torch.Generator | torch.Tensor | None) -> dict[str, Any]:
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


def check_rng(state: Mapping[str, Any], generator: torch.Generator | None) -> None:
    """Every RNG state the load will set must have the type and size of the live one (ValueError)."""

    def byte_state(where: str, t: Any, like: Tensor) -> None:
        if not isinstance(t, Tensor) or t.dtype != torch.uint8 or t.shape != like.shape:
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"rng[{where!r}] must be a uint8 tensor of shape {tuple(like.shape)}; got {got}")

    for key in ("torch", "numpy", "python"):
        if key not in state:
            raise ValueError(f"rng lacks the {key!r} state")
    byte_state("torch", state["torch"], torch.get_rng_state())
    npst = state["numpy"]
    if not (
        isinstance(npst, Mapping)
        and isinstance(npst.get("key"), Tensor)
        and tuple(npst["key"].shape) == (624,)
        and not npst["key"].dtype.is_floating_point
        and type(npst.get("pos")) is int
        and 0 <= npst["pos"] <= 624
        and type(npst.get("has_gauss")) is int
        and type(npst.get("cached_gaussian")) is float
    ):
        raise ValueError(
            "rng['numpy'] is not a numpy MT19937 state (key[624], pos, has_gauss, cached_gaussian)"
        )
    py = state["python"]
    internal = py.get("internal") if isinstance(py, Mapping) else None
    if not (
        isinstance(py, Mapping)
        and type(py.get("version")) is int
        and isinstance(internal, list)
        and len(internal) == len(random.getstate()[1])
        and all(type(v) is int and 0 <= v < 2**32 for v in internal[:-1])
        and (py.get("gauss") is None or type(py.get("gauss")) is float)
    ):
        raise ValueError("rng['python'] is not a state of Python's random module")
    if generator is not None:
        if "generator" not in state:
            raise ValueError("the checkpoint holds no data-order generator state, but a generator was given")
        byte_state("generator", state["generator"], generator.get_state())
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if not isinstance(cuda, list) or len(cuda) != torch.cuda.device_count():
            raise ValueError(
                f"rng['cuda'] holds {len(cuda) if isinstance(cuda, list) else '?'} device states; "
                f"this machine has {torch.cuda.device_count()} CUDA devices (load with restore_rng=False)"
            )


def capture_rng(generator: torch.Generator | None) -> Callable[[], None]:
    """A function that puts every RNG (and ``generator``) back to its state now."""
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()  # noqa: NPY002
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    gen = generator.get_state() if generator is not None else None

    def restore() -> None:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        if generator is not None:
            generator.set_state(gen)

    return restore


def set_rng_state(state: Mapping[str, Any], generator: torch.Generator | None) -> None:
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
        generator.set_state(state["generator"])
