"""Choose which parameters of a network become random.

A selector is a predicate ``select(name, module) -> bool`` called with each
parameter's full name (``"encoder.fc1.weight"``) and the module that owns it.
Any callable of that form works; the helpers below compose with ``&``, ``|``
and ``~``. Parameters that are not selected stay deterministic and are trained
by the same optimizer.

Example:
    >>> from uncertlr import select
    >>> s = select.by_name("fc*") & ~select.by_name("*.bias")
    >>> s("fc1.weight", None), s("fc1.bias", None), s("conv.weight", None)
    (True, False, False)
"""

from __future__ import annotations

import builtins
import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Selector", "all", "as_selector", "by_name", "by_type", "last_layer"]

Predicate = Callable[[str, Any], bool]


class Selector:
    """A named, composable parameter predicate.

    ``bind(names)`` resolves selectors that depend on the whole network (such as
    :func:`last_layer`) once the backend knows every parameter name, in order.
    """

    def __init__(
        self, fn: Predicate, description: str, binder: Callable[[Sequence[str]], Predicate] | None = None
    ):
        self._fn = fn
        self._description = description
        self._binder = binder

    def __call__(self, name: str, module: Any) -> bool:
        if self._binder is not None:
            raise RuntimeError(f"{self._description} must be bound to a network first: call .bind(names)")
        return bool(self._fn(name, module))

    def bind(self, names: Sequence[str]) -> Selector:
        """Return a selector resolved for a network whose parameters are ``names`` (in order)."""
        if self._binder is None:
            return self
        return Selector(self._binder(list(names)), self._description)

    def __and__(self, other: Predicate) -> Selector:
        a, b = self, as_selector(other)
        return _combine(a, b, lambda x, y: x and y, f"({a} & {b})")

    def __or__(self, other: Predicate) -> Selector:
        a, b = self, as_selector(other)
        return _combine(a, b, lambda x, y: x or y, f"({a} | {b})")

    def __invert__(self) -> Selector:
        a = self
        if a._binder is None:
            return Selector(lambda n, m: not a(n, m), f"~{a}")

        def binder(names: Sequence[str]) -> Predicate:
            bound = a.bind(names)
            return lambda n, m: not bound(n, m)

        return Selector(lambda n, m: True, f"~{a}", binder)

    def __repr__(self) -> str:
        return self._description


def _combine(a: Selector, b: Selector, op: Callable[[bool, bool], bool], desc: str) -> Selector:
    if a._binder is None and b._binder is None:
        return Selector(lambda n, m: op(a(n, m), b(n, m)), desc)

    def binder(names: Sequence[str]) -> Predicate:
        ba, bb = a.bind(names), b.bind(names)
        return lambda n, m: op(ba(n, m), bb(n, m))

    return Selector(lambda n, m: True, desc, binder)


def as_selector(obj: Predicate | Selector | None) -> Selector:
    """Wrap a plain ``(name, module) -> bool`` callable (``None`` means :func:`all`)."""
    if obj is None:
        return all()
    if isinstance(obj, Selector):
        return obj
    if not callable(obj):
        raise TypeError(f"select must be a callable (name, module) -> bool; got {type(obj).__name__}")
    return Selector(obj, getattr(obj, "__name__", "custom"))


def all() -> Selector:  # noqa: A001 - the public name is select.all()
    """Every parameter becomes random (the default)."""
    return Selector(lambda n, m: True, "select.all()")


def by_name(*patterns: str) -> Selector:
    """Parameters whose full name, or whose layer name, matches any glob pattern.

    ``by_name("fc3")`` selects ``fc3.weight`` and ``fc3.bias``; ``by_name("*.weight")``
    every weight.
    """
    if not patterns or not builtins.all(isinstance(p, str) for p in patterns):
        raise TypeError("by_name needs one or more glob patterns (strings)")

    def fn(name: str, module: Any) -> bool:
        layer = name.rsplit(".", 1)[0] if "." in name else ""
        return builtins.any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(layer, p) for p in patterns)

    return Selector(fn, f"select.by_name{patterns!r}")


def by_type(*types: type) -> Selector:
    """Parameters owned by a module of one of ``types`` (e.g. ``torch.nn.Linear``)."""
    if not types or not builtins.all(isinstance(t, type) for t in types):
        raise TypeError("by_type needs one or more module classes")
    return Selector(
        lambda n, m: isinstance(m, types), f"select.by_type({', '.join(t.__name__ for t in types)})"
    )


def last_layer() -> Selector:
    """The parameters of the last layer, in parameter-registration order.

    For ``nn.Sequential`` and most hand-written nets registration order is forward
    order; where it is not, use :func:`by_name` with the output layer's name.
    """

    def binder(names: Sequence[str]) -> Predicate:
        if not names:
            raise ValueError("last_layer: the network has no parameters")
        last = names[-1].rsplit(".", 1)[0] if "." in names[-1] else ""
        return lambda n, m: (n.rsplit(".", 1)[0] if "." in n else "") == last

    return Selector(lambda n, m: True, "select.last_layer()", binder)
