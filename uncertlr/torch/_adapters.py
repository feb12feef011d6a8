"""Declared adapters between a batch and the user's ``forward``, and between its result and the logits.

``bayesian(net, inputs=..., output=...)`` takes models as users have them — several inputs,
dict batches, Hugging Face-style output objects — without guessing:

``inputs`` (how a batch ``x`` is passed to ``net.forward``):

* ``None`` — ``x`` is one tensor: ``net(x)`` (the default);
* ``"positional"`` — ``x`` is a tuple or list of tensors: ``net(*x)``;
* ``"keywords"`` — ``x`` is a dict: ``net(**x)``;
* a tuple of names, e.g. ``("input_ids", "attention_mask")`` — ``x`` is a dict and only those
  keys are passed, as keyword arguments (the batch may hold more, such as ``"labels"``);
* a callable ``x -> (args, kwargs)`` for anything else.

``output`` (where the logits or regression means are in what ``forward`` returns):

* ``None`` — ``forward`` returns a tensor;
* a string — a key of a returned dict or ``ModelOutput``, or an attribute of a returned
  dataclass or object (``output="logits"``);
* an integer — an index into a returned tuple (``output=0``);
* a callable ``result -> tensor``.

The first tensor of a structured batch (in the order of ``inputs`` for names) stands for the
batch in error messages and gives its size; every tensor must have the same batch size.

Example:
    >>> import torch
    >>> from uncertlr.torch._adapters import Adapter
    >>> class Net(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__(); self.lin = torch.nn.Linear(3, 2)
    ...     def forward(self, a, mask=None):
    ...         return {"logits": self.lin(a * mask[:, None])}
    >>> adapter = Adapter(("a", "mask"), "logits")
    >>> net, x = Net(), {"a": torch.randn(4, 3), "mask": torch.ones(4), "labels": torch.zeros(4)}
    >>> tuple(adapter.call(net, dict(net.named_parameters()), x).shape)
    (4, 2)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["Adapter", "Inputs", "Output", "take_rows"]

Inputs = str | Sequence[str] | Callable[[Any], tuple[Sequence[Any], Mapping[str, Any]]] | None
Output = str | int | Callable[[Any], Tensor] | None

_MODES = ("positional", "keywords")


@dataclasses.dataclass(frozen=True)
class Adapter:
    """How a batch reaches ``net.forward`` (``inputs``) and where its logits are (``output``)."""

    inputs: Inputs = None
    output: Output = None

    def __post_init__(self) -> None:
        i = self.inputs
        if isinstance(i, str):
            if i not in _MODES:
                raise ValueError(
                    f"inputs must be None, 'positional', 'keywords', a tuple of argument names or a "
                    f"callable; got {i!r} (for one named argument write inputs=({i!r},))"
                )
        elif isinstance(i, Sequence):
            if not i or not all(isinstance(k, str) for k in i):
                raise ValueError(f"inputs as names must be a non-empty tuple of strings; got {i!r}")
            object.__setattr__(self, "inputs", tuple(i))
        elif i is not None and not callable(i):
            raise TypeError(
                f"inputs must be None, a string, a tuple of names or a callable; got {type(i).__name__}"
            )
        o = self.output
        if isinstance(o, bool) or not (o is None or isinstance(o, (str, int)) or callable(o)):
            raise TypeError(
                f"output must be None, a key/attribute name, a tuple index or a callable; got {type(o).__name__}"
            )

    @property
    def plain(self) -> bool:
        """True for the default: one tensor in, one tensor out."""
        return self.inputs is None and self.output is None

    # ------------------------------------------------------------------ the batch

    def arguments(self, x: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(args, kwargs)`` for ``net.forward`` from the batch ``x``."""
        i = self.inputs
        if i is None:
            if not isinstance(x, Tensor):
                hint = (
                    " (a dict batch needs inputs='keywords' or inputs=(names...))"
                    if isinstance(x, Mapping)
                    else " (several inputs need inputs='positional')"
                    if isinstance(x, (tuple, list))
                    else ""
                )
                raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}{hint}")
            return (x,), {}
        if i == "positional":
            if not isinstance(x, (tuple, list)):
                raise TypeError(
                    f"inputs='positional' needs x as a tuple or list of tensors; got {type(x).__name__}"
                )
            return tuple(x), {}
        if i == "keywords" or isinstance(i, tuple):
            if not isinstance(x, Mapping):
                raise TypeError(f"inputs={i!r} needs x as a dict of tensors; got {type(x).__name__}")
            if i == "keywords":
                return (), dict(x)
            missing = [k for k in i if k not in x]
            if missing:
                raise KeyError(
                    f"the batch has no {missing} (inputs={i!r}); its keys are {sorted(map(str, x))}"
                )
            return (), {k: x[k] for k in i}
        args, kwargs = i(x)  # type: ignore[misc, operator]
        return tuple(args), dict(kwargs)

    def tensors(self, x: Any) -> Iterator[tuple[str, Tensor]]:
        """``(name, tensor)`` for every tensor argument of the batch, in argument order."""
        if self.inputs is None and isinstance(x, Tensor):  # the common case, kept cheap
            yield "x", x
            return
        args, kwargs = self.arguments(x)
        for k, a in enumerate(args):
            if isinstance(a, Tensor):
                yield ("x" if self.inputs is None else f"x[{k}]"), a
        for k, a in kwargs.items():
            if isinstance(a, Tensor):
                yield f"x[{k!r}]", a

    def lead(self, x: Any) -> Tensor:
        """The tensor that stands for the batch (its size, error messages): the first tensor argument.

        Raises a ValueError when the tensor arguments disagree on the batch size.
        """
        if self.inputs is None and isinstance(x, Tensor):
            return x
        found = list(self.tensors(x))
        if not found:
            raise TypeError(f"the batch passes no tensor to the network (inputs={self.inputs!r})")
        name, first = found[0]
        for other, t in found[1:]:
            if t.dim() == 0 or first.dim() == 0 or t.shape[0] != first.shape[0]:
                raise ValueError(
                    f"the inputs must share the batch axis first: {name} has shape {tuple(first.shape)} "
                    f"but {other} has shape {tuple(t.shape)}"
                )
        return first

    # ------------------------------------------------------------------ the result

    def logits(self, result: Any) -> Tensor:
        """The tensor ``output`` names in what ``forward`` returned."""
        o = self.output
        if o is None:
            if isinstance(result, Tensor):
                return result
            raise TypeError(
                f"the network returned a {type(result).__name__}, not a tensor{_fields(result)}; "
                "say where the logits are with bayesian(..., output='logits') (a key or attribute), "
                "output=0 (a tuple index) or output=callable"
            )
        if callable(o):
            out = o(result)
        elif isinstance(o, int):
            if not isinstance(result, (tuple, list)):
                raise TypeError(
                    f"output={o} indexes a tuple, but the network returned a {type(result).__name__}"
                )
            if not -len(result) <= o < len(result):
                raise IndexError(f"output={o}: the network returned a tuple of {len(result)} items")
            out = result[o]
        elif isinstance(result, Mapping) and o in result:
            out = result[o]
        elif hasattr(result, o) and not isinstance(result, Tensor):
            out = getattr(result, o)
        else:
            raise KeyError(f"output={o!r}: the network returned a {type(result).__name__}{_fields(result)}")
        if not isinstance(out, Tensor):
            raise TypeError(f"output={o!r} gives a {type(out).__name__}, not a tensor of logits")
        return out

    def call(
        self, net: nn.Module, weights: Mapping[str, Tensor], x: Any, *, tie_weights: bool = True
    ) -> Tensor:
        """``net``'s logits on the batch ``x`` with the parameters and buffers ``weights`` swapped in.

        ``tie_weights=False`` skips ``functional_call``'s search for other names of the same tensors
        (a third of its cost on a ResNet-18): for callers whose ``weights`` are never tied.
        """
        args, kwargs = self.arguments(x)
        return self.logits(
            functional_call(net, dict(weights), args, kwargs, strict=False, tie_weights=tie_weights)
        )


def take_rows(x: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of a batch: of ``x`` itself, or of every tensor in its tuples, lists and dicts.

    Non-tensor leaves and 0-d tensors are passed through unchanged (they hold no batch axis).
    """
    if isinstance(x, Tensor):
        return x[start:stop] if x.dim() else x
    if isinstance(x, Mapping):
        return {k: take_rows(v, start, stop) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(take_rows(v, start, stop) for v in x)
    return x


def _fields(result: Any) -> str:
    """`` (fields: a, b)`` for a dict, ``ModelOutput``, dataclass or named tuple; else empty."""
    if isinstance(result, Mapping):
        names = [str(k) for k in result]
    elif dataclasses.is_dataclass(result):
        names = [f.name for f in dataclasses.fields(result)]
    elif isinstance(result, tuple):
        names = list(getattr(result, "_fields", [])) or [
            f"{k} ({type(v).__name__})" for k, v in enumerate(result)
        ]
    else:
        return ""
    return f" (fields: {', '.join(names)})"
