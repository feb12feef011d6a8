"""Rule states as tensors, so a :class:`~uncertlr.torch.Modulator` checkpoints with ``torch.save``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["is_numpy", "rule_id", "state_from_dict", "state_to_dict"]


def rule_id(rule: Any) -> dict[str, Any]:
    """The rule's class and numeric fields: what a saved modulator state must match."""
    fields = dataclasses.asdict(rule) if dataclasses.is_dataclass(rule) else {"repr": repr(rule)}
    return {"class": f"{type(rule).__module__}.{type(rule).__qualname__}", "fields": fields}


def is_numpy(x: Any) -> bool:
    """Whether ``x`` is a numpy array or scalar (the CPU home of a global rule's state)."""
    return isinstance(x, (np.ndarray, np.generic))


def state_to_dict(state: Any) -> dict[str, Any]:
    """A rule state (NamedTuple of numpy or torch arrays, possibly nesting tuples of such states,
    as :class:`~uncertlr.modulation.Product` does) as ``{field: cloned tensor | nested}``."""
    return {k: _to(v) for k, v in state._asdict().items()}


def _to(v: Any) -> Any:
    if hasattr(v, "_asdict"):
        return state_to_dict(v)
    if isinstance(v, tuple):
        return [_to(x) for x in v]
    return torch.from_numpy(np.array(v)) if is_numpy(v) else v.detach().clone()


def state_from_dict(like: Any, saved: Mapping[str, Any], where: str) -> Any:
    """Rebuild a state shaped, typed and placed like ``like`` from :func:`state_to_dict` output (named errors)."""
    fields = like._fields
    if not isinstance(saved, Mapping) or set(saved) != set(fields):
        keys = sorted(saved) if isinstance(saved, Mapping) else type(saved).__name__
        raise ValueError(f"{where}: saved state has keys {keys}, expected {sorted(fields)}")
    return type(like)(**{k: _from(getattr(like, k), saved[k], f"{where}.{k}") for k in fields})


def _from(ref: Any, v: Any, where: str) -> Any:
    if hasattr(ref, "_asdict"):
        return state_from_dict(ref, v, where)
    if isinstance(ref, tuple):
        if not isinstance(v, (list, tuple)) or len(v) != len(ref):
            raise ValueError(f"{where}: saved state does not hold {len(ref)} nested states")
        return tuple(_from(r, x, f"{where}[{i}]") for i, (r, x) in enumerate(zip(ref, v)))
    if not isinstance(v, Tensor):
        raise ValueError(f"{where}: saved value must be a tensor; got {type(v).__name__}")
    if tuple(v.shape) != tuple(ref.shape):
        raise ValueError(f"{where}: saved shape {tuple(v.shape)} does not match {tuple(ref.shape)}")
    if is_numpy(ref):
        return np.array(v.detach().cpu().numpy(), dtype=ref.dtype)
    return v.detach().to(device=ref.device, dtype=ref.dtype).clone()
