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


def state_to_dict(state: Any) -> dict[str, Tensor]:
    """A rule state (NamedTuple of numpy or torch arrays) as ``{field: cloned tensor}``."""
    return {
        k: torch.from_numpy(np.array(v)) if is_numpy(v) else v.detach().clone()
        for k, v in state._asdict().items()
    }


def state_from_dict(like: Any, saved: Mapping[str, Tensor], where: str) -> Any:
    """Rebuild a state shaped, typed and placed like ``like`` from :func:`state_to_dict` output (named errors)."""
    fields = like._fields
    if set(saved) != set(fields):
        raise ValueError(f"{where}: saved state has keys {sorted(saved)}, expected {sorted(fields)}")
    out = {}
    for k in fields:
        ref, v = getattr(like, k), saved[k]
        if tuple(v.shape) != tuple(ref.shape):
            raise ValueError(f"{where}.{k}: saved shape {tuple(v.shape)} does not match {tuple(ref.shape)}")
        if is_numpy(ref):
            out[k] = np.array(v.detach().cpu().numpy(), dtype=ref.dtype)
        else:
            out[k] = v.detach().to(device=ref.device, dtype=ref.dtype).clone()
    return type(like)(**out)
