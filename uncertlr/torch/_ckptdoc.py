"""What a checkpoint may hold, and its SHA-256: one check for save and load, one digest for both.

:func:`check_plain` walks a checkpoint document and refuses (``ValueError`` naming the key)
anything that ``torch.load(weights_only=True)`` would refuse or that uncertlr does not
promise to restore: numpy arrays and scalars, paths, dataclasses, datetimes, enums, sets,
tensor subclasses, functions... :func:`check_document` adds the structure of a checkpoint
(``step``, ``history``, ``extra``, ``versions``, ``model``, ``rng``). :func:`save_checkpoint`
runs both before writing and :func:`load_checkpoint` after reading, so a file that was
written can always be read back.

:func:`digest` is a SHA-256 over a canonical encoding of the document (every key, every
plain value, every tensor's dtype, shape and bytes): a checkpoint stores it under
``"sha256"`` and a load recomputes it over what was read, so any change to the loaded
values — a flipped bit in a tensor, a key, a number — is detected.

Example:
    >>> import torch
    >>> from uncertlr.torch._ckptdoc import check_plain, digest
    >>> check_plain({"lr": 0.1, "w": torch.zeros(2)}, "extra")
    >>> len(digest({"lr": 0.1}))
    64
    >>> import numpy as np
    >>> check_plain({"lr": np.float32(0.1)}, "extra")
    Traceback (most recent call last):
    ...
    ValueError: extra['lr'] is a numpy.float32, which a checkpoint cannot hold; store plain data (convert with float(), int(), .tolist() or torch.from_numpy()): None, bool, int, float, complex, str, list, tuple, dict, torch.Tensor, torch.Size, torch.dtype, torch.device
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ALLOWED", "MAX_DEPTH", "check_document", "check_plain", "digest"]

#: What a checkpoint may hold (the checkpoint's plain-data contract).
ALLOWED = (
    "None, bool, int, float, complex, str, list, tuple, dict, torch.Tensor, torch.Size, "
    "torch.dtype, torch.device"
)
#: Deepest nesting of lists and dicts a checkpoint may hold.
MAX_DEPTH = 64

_SCALARS = (type(None), bool, int, float, complex, str)
_TORCH_PLAIN = (torch.Size, torch.dtype, torch.device)


def _key(where: str, k: Any) -> str:
    return f"{where}[{k!r}]"


def _type_name(obj: Any) -> str:
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def check_plain(obj: Any, where: str, depth: int = 0) -> None:
    """Raise ``ValueError`` naming the first key under ``where`` whose value a checkpoint cannot hold."""
    if depth > MAX_DEPTH:
        raise ValueError(f"{where} is nested more than {MAX_DEPTH} levels deep; a checkpoint cannot hold it")
    t = type(obj)
    if t in _SCALARS or t in _TORCH_PLAIN:
        return
    if t in (dict, OrderedDict):
        for k, v in obj.items():
            if type(k) not in (str, int):
                raise ValueError(
                    f"{where} has a key {k!r} of type {_type_name(k)}; checkpoint keys must be str or int"
                )
            check_plain(v, _key(where, k), depth + 1)
        return
    if t in (list, tuple):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]", depth + 1)
        return
    if t in (Tensor, nn.Parameter):
        if obj.layout != torch.strided or obj.is_quantized:
            raise ValueError(
                f"{where} is a {obj.layout} tensor; a checkpoint holds dense (strided) tensors only"
            )
        return
    hint = ""
    if t.__module__ == "numpy":
        hint = " (convert with float(), int(), .tolist() or torch.from_numpy())"
    elif isinstance(obj, Tensor):
        hint = " (a tensor subclass; store torch.Tensor(x) or x.as_subclass(torch.Tensor))"
    raise ValueError(
        f"{where} is a {_type_name(obj)}, which a checkpoint cannot hold; store plain data{hint}: {ALLOWED}"
    )


def _require(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise ValueError(f"{where} {what}")


def check_document(doc: Mapping[str, Any], required: tuple[str, ...]) -> None:
    """The structure every checkpoint shares; raises ``ValueError`` naming the key that breaks it."""
    missing = [k for k in required if k not in doc]
    _require(not missing, "the checkpoint", f"lacks {missing}")
    for key, value in doc.items():
        check_plain(value, key)
    step = doc["step"]
    _require(type(step) is int and step >= 0, "step", f"must be an int >= 0; got {step!r}")
    hist = doc["history"]
    _require(type(hist) is list, "history", f"must be a list of dicts; got {_type_name(hist)}")
    for i, rec in enumerate(hist):
        _require(type(rec) in (dict, OrderedDict), f"history[{i}]", f"must be a dict; got {_type_name(rec)}")
        for k in rec:
            _require(type(k) is str, f"history[{i}]", f"has a non-string key {k!r}")
    for name in ("extra", "versions", "model", "rng"):
        value = doc[name]
        _require(type(value) in (dict, OrderedDict), name, f"must be a dict; got {_type_name(value)}")
        for k in value:
            _require(type(k) is str, name, f"has a non-string key {k!r}")
    for k, v in doc["versions"].items():
        _require(type(v) is str, _key("versions", k), f"must be a version string; got {v!r}")


# --------------------------------------------------------------------------- digest


def _int(h: Any, n: int) -> None:
    h.update(struct.pack("<Q", n))


def _feed(h: Any, obj: Any) -> None:
    t = type(obj)
    if obj is None:
        h.update(b"N")
    elif t is bool:
        h.update(b"B1" if obj else b"B0")
    elif t is int:
        s = str(obj).encode()
        h.update(b"I")
        _int(h, len(s))
        h.update(s)
    elif t is float:
        h.update(b"F" + struct.pack("<d", obj))
    elif t is complex:
        h.update(b"C" + struct.pack("<dd", obj.real, obj.imag))
    elif t is str:
        b = obj.encode("utf-8", "surrogatepass")
        h.update(b"S")
        _int(h, len(b))
        h.update(b)
    elif t in (dict, OrderedDict):
        h.update(b"D" if t is dict else b"O")
        _int(h, len(obj))
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif t in (list, tuple, torch.Size):
        h.update({list: b"L", tuple: b"T", torch.Size: b"Z"}[t])
        _int(h, len(obj))
        for v in obj:
            _feed(h, v)
    elif t in (torch.dtype, torch.device):
        _feed(h, f"{t.__name__}:{obj}")
    elif isinstance(obj, Tensor):
        h.update(b"X")
        _feed(h, str(obj.dtype))
        _feed(h, tuple(obj.shape))
        data = obj.detach().resolve_conj().resolve_neg().cpu().contiguous().reshape(-1)
        h.update(data.view(torch.uint8).numpy().data if data.numel() else b"")
    else:  # check_plain runs first; this is a bug, not a user error
        raise TypeError(f"cannot digest a {_type_name(obj)}")


def digest(obj: Any) -> str:
    """Hex SHA-256 of a canonical encoding of plain checkpoint data (keys, values, tensor bytes)."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()
