"""The one array-namespace dispatcher, and the checks every array-API module shares.

:mod:`uncertlr.metrics`, :mod:`uncertlr.modulation`, :mod:`uncertlr.priors` and
:mod:`uncertlr.likelihoods` are written once on the array API and run on numpy arrays,
torch tensors and jax arrays (tracers included). Two ways to get the array module:

* :func:`namespace` — the library's own module (``numpy``, ``torch``, ``jax.numpy``): no
  wrapper layer, for code on the hot path of every optimizer step (the LR modulator's rules);
* :func:`compat_namespace` — array-api-compat's namespace (``isdtype``, ``finfo``... the same
  everywhere), with a ``TypeError`` naming the argument for anything that is not an array.

This module imports nothing of uncertlr and neither torch nor jax.

Example:
    >>> import numpy as np
    >>> namespace(np.zeros(3)) is np
    True
    >>> check_finite(np.array([1.0, np.nan]), "x", compat_namespace(np.zeros(1), "x"))
    Traceback (most recent call last):
    ...
    ValueError: x contains NaN or inf
"""

from __future__ import annotations

import contextlib
import math
import sys
from typing import Any

import numpy as np
from array_api_compat import array_namespace

Array = Any

__all__ = [
    "check_finite",
    "check_nonempty",
    "check_result",
    "clip",
    "clip_min",
    "compat_namespace",
    "convert",
    "float_dtype",
    "full",
    "host",
    "is_concrete",
    "is_floating",
    "namespace",
    "quiet",
]

_NO_CONTEXT = contextlib.nullcontext()
_NUMPY_NAMESPACES = frozenset({"numpy", "array_api_compat.numpy"})  # not "jax.numpy"


def quiet(xp: Any) -> contextlib.AbstractContextManager[Any]:
    """Silence numpy's floating-point warnings (overflow, NaN/inf arithmetic) for code that checks
    or handles such values itself; torch and jax do not warn, so for them this does nothing.

    ``xp`` is ``numpy`` or array-api-compat's numpy namespace. A plain function returning a
    context manager, because the LR modulator calls it every optimizer step and a
    ``@contextmanager`` generator costs several times as much as ``np.errstate`` itself.
    """
    name = getattr(xp, "__name__", "")
    return np.errstate(all="ignore") if name in _NUMPY_NAMESPACES else _NO_CONTEXT


def namespace(x: Array) -> Any:
    """The array module rules compute with for ``x``.

    For torch tensors, jax arrays (tracers included) and numpy arrays this is ``torch``,
    ``jax.numpy`` or ``numpy`` itself: the functions the rules use (``where``, ``clip``,
    ``pow``, ``abs``, ``isfinite``, ``sqrt``, ``tanh``, ``exp``, ``log``, ``mean``, ``sum``,
    ``asarray``, ``zeros_like``, ``finfo``) behave the same in the three, and calling them
    directly avoids a wrapper layer that would cost more than the rule itself on small
    tensors. Any other array library goes through ``array_api_compat.array_namespace``.

    Example:
        >>> import numpy as np
        >>> namespace(np.zeros(3)) is np
        True
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return torch
    if isinstance(x, (np.ndarray, np.generic)):
        return np
    mod = type(x).__module__
    if mod.startswith(("jax", "jaxlib")):
        return sys.modules["jax.numpy"]
    return array_namespace(x)


def host(x: Array, dtype: Any = None) -> np.ndarray:
    """``x`` of any array library as a numpy array (a torch tensor is detached and moved to the CPU first)."""
    return np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=dtype)


def clip_min(xp: Any, x: Array, lo: Any) -> Array:
    """``clip(x, lo, None)``; numpy's ``clip`` wrapper is slow on 0-d arrays, ``maximum`` is one ufunc."""
    return np.maximum(x, lo) if xp is np else xp.clip(x, lo, None)


def clip(xp: Any, x: Array, lo: Any, hi: Any) -> Array:
    """``clip(x, lo, hi)`` (NaN propagates in both branches)."""
    return np.minimum(np.maximum(x, lo), hi) if xp is np else xp.clip(x, lo, hi)


def float_dtype(xp: Any, like: Array) -> Any:
    """float64 when ``like`` is float64, else float32 (statistics never run in half precision)."""
    return xp.float64 if like.dtype == xp.float64 else xp.float32


def is_floating(xp: Any, x: Array) -> bool:
    """Whether ``x`` holds real floating-point numbers."""
    if hasattr(x, "is_floating_point"):  # torch
        return bool(x.is_floating_point())
    return bool(xp.isdtype(x.dtype, "real floating"))


def full(xp: Any, like: Array, value: float, dtype: Any) -> Array:
    """A 0-d array of ``value`` on ``like``'s device."""
    if xp is sys.modules.get("torch"):
        return xp.full((), value, dtype=dtype, device=like.device)
    return xp.full((), value, dtype=dtype)


def is_concrete(x: Array) -> bool:
    """False for JAX tracers (values unknown at trace time): value checks are skipped."""
    return not type(x).__name__.endswith("Tracer")


def _compat(x: Array) -> Any:
    """``array_namespace(x)``, with torch tensors answered directly: under ``torch.compile`` the lookup's
    ``lru_cache``-wrapped helpers made Dynamo warn five times per compiled loss (the answer is the same)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        import array_api_compat.torch as compat_torch

        return compat_torch
    return array_namespace(x)


def compat_namespace(x: Array, name: str) -> Any:
    """The array namespace of ``x``; a TypeError naming ``name`` for anything that is not an array."""
    try:
        return _compat(x)
    except TypeError as exc:
        raise TypeError(f"{name} must be a numpy, torch or jax array; got {type(x).__name__}") from exc


def convert(x: Array, xp: Any, like: Array, name: str) -> Array:
    """``x`` (labels, targets, variances: any array library or a Python number) as an array of ``xp``.

    The first argument of a metric fixes the library of the result; the others follow it
    (on its device for torch), so numpy labels work with torch or jax probabilities.
    """
    try:
        if _compat(x) is xp:
            return x
    except TypeError:
        pass
    if x is None or isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be an array or a number; got {type(x).__name__}")
    kw = {"device": like.device} if type(like).__module__.startswith("torch") else {}
    try:
        return xp.asarray(x, **kw)
    except Exception as exc:  # noqa: BLE001 - any conversion failure means the same thing
        raise TypeError(
            f"{name} ({type(x).__name__}) cannot be converted to an array like {type(like).__name__}: {exc}"
        ) from exc


def check_result(x: Array, what: str, xp: Any) -> Array:
    """Raise a ValueError naming the overflow when finite inputs gave a non-finite ``x``."""
    if is_concrete(x) and not bool(xp.all(xp.isfinite(x))):
        raise ValueError(
            f"{what} overflowed in {x.dtype}: the inputs are finite but too large for this dtype; "
            "standardise them or compute in float64"
        )
    return x


def check_nonempty(x: Array, name: str, layout: str) -> None:
    """A ValueError naming ``name`` and its ``layout`` (e.g. ``"[S, N, C]"``) when ``x`` has no elements."""
    if math.prod(x.shape) == 0:
        raise ValueError(f"{name} is empty: got shape {tuple(x.shape)} ({layout}); need at least one of each")


def check_finite(x: Array, name: str, xp: Any, *, allow_int: bool = False) -> None:
    """``x`` must be floating point (or integral with ``allow_int``) and, when concrete, free of NaN/inf."""
    if allow_int and xp.isdtype(x.dtype, "integral"):
        return
    if not xp.isdtype(x.dtype, "real floating"):
        kind = "a real-valued" if allow_int else "a floating-point"
        raise TypeError(f"{name} must be {kind} array; got dtype {x.dtype}")
    if is_concrete(x) and not bool(xp.all(xp.isfinite(x))):
        raise ValueError(f"{name} contains NaN or inf")
