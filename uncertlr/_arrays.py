"""Small helpers shared by the array-API modules (:mod:`uncertlr.metrics`, :mod:`uncertlr.modulation`)."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

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
