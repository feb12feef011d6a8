"""Turn a Flax (linen or nnx) module, an Equinox module or ``apply(params, x)`` into one functional form.

:func:`as_network` returns a :class:`Network`: named parameter arrays (dotted names
like ``"Dense_0.kernel"``, ``"layers.0.weight"``), the module that owns each one (for
``select`` predicates), each parameter's fan-in, and ``apply(values, x)`` that runs the
network with a ``{name: array}`` mapping. Everything downstream (NumPyro models,
guides, MCMC, SVI) works on that mapping and never on a framework's own types.

Framework conventions handled here:

* Flax kernels are ``(..., in, out)``: fan-in is the product of all but the last axis.
* Equinox (like torch) stores weights ``(out, in, ...)``: fan-in is the product of all
  but the first axis; Equinox modules act on one example, so ``apply`` vmaps them over
  the batch axis unless ``per_example=False``.
* Biases and norm-layer scales take the fan-in of their layer's kernel/weight (1 where
  there is none); embedding tables have fan-in 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = Any
FanIn = Callable[[str, tuple[int, ...]], int]

_WEIGHT_LEAVES = ("kernel", "weight")


@dataclass(frozen=True)
class Network:
    """A network in functional form (see the module docstring).

    Attributes:
        kind: ``"flax.linen"``, ``"flax.nnx"``, ``"equinox"`` or ``"function"``.
        names: every floating-point parameter, in registration order (the order
            :func:`uncertlr.select.last_layer` relies on).
        values: ``{name: array}`` — the network's current parameters.
        owners: ``{name: module or None}`` — the layer object holding each parameter
            (None for flax.linen, whose submodules only exist during ``apply``, and for plain functions).
        fan_in: ``{name: int}``.
        apply: ``apply(values, x) -> outputs`` for a full ``{name: array}`` mapping.
    """

    kind: str
    names: tuple[str, ...]
    values: dict[str, Array]
    owners: dict[str, Any]
    fan_in: dict[str, int]
    apply: Callable[[Mapping[str, Array], Array], Array]


def _key_str(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _path_name(path: tuple[Any, ...]) -> str:
    return ".".join(_key_str(k) for k in path)


def _is_float_array(x: Any) -> bool:
    return hasattr(x, "dtype") and hasattr(x, "shape") and jnp.issubdtype(x.dtype, jnp.inexact)


def _dict_order(tree: Any, prefix: str = "") -> list[str]:
    """Leaf names of nested dicts/lists in insertion order (jax's own flattening sorts dict keys)."""
    if isinstance(tree, Mapping):
        out: list[str] = []
        for k, v in tree.items():
            out += _dict_order(v, f"{prefix}{k}.")
        return out
    if isinstance(tree, (list, tuple)):
        out = []
        for i, v in enumerate(tree):
            out += _dict_order(v, f"{prefix}{i}.")
        return out
    return [prefix[:-1]]


def _fan_ins(
    names: list[str], shapes: dict[str, tuple[int, ...]], *, out_axis: int, embeddings: set[str]
) -> dict[str, int]:
    """Fan-in per parameter: a kernel's own (all axes but ``out_axis``), its siblings share it."""

    def own(shape: tuple[int, ...]) -> int:
        rest = shape[:-1] if out_axis == -1 else shape[1:]
        return max(1, math.prod(rest))

    layer_fan: dict[str, int] = {}
    for n in names:
        layer, _, leaf = n.rpartition(".")
        if leaf in _WEIGHT_LEAVES and len(shapes[n]) >= 2 and n not in embeddings:
            layer_fan.setdefault(layer, own(shapes[n]))
    out = {}
    for n in names:
        if n in embeddings:
            out[n] = 1
            continue
        layer, _, leaf = n.rpartition(".")
        if leaf in _WEIGHT_LEAVES and len(shapes[n]) >= 2:
            out[n] = own(shapes[n])
        else:
            out[n] = layer_fan.get(layer, 1)
    return out


class _PytreeApply:
    """``apply(values, x)``: rebuild the parameter pytree from ``{name: array}`` and call the network.

    A top-level class rather than a closure, so that a BNN (and a fit holding one) pickles.
    """

    def __init__(self, treedef: Any, slots: list[tuple[str, bool]], constants: list[Any], call: Any):
        self.treedef, self.slots, self.constants, self.call = treedef, slots, constants, call

    def __call__(self, vals: Mapping[str, Array], x: Array) -> Array:
        it = iter(self.constants)
        return self.call(self.treedef.unflatten([vals[n] if ok else next(it) for n, ok in self.slots]), x)


class _PerExample:
    """``fn(params, x)`` vmapped over the batch axis of ``x``."""

    def __init__(self, fn: Callable[[Any, Array], Array]):
        self.fn = fn

    def __call__(self, p: Any, x: Array) -> Array:
        return jax.vmap(lambda xi: self.fn(p, xi))(x)


class _LinenCall:
    def __init__(self, module: Any, others: Mapping[str, Any]):
        self.module, self.others = module, dict(others)

    def __call__(self, p: Any, x: Array) -> Array:
        return self.module.apply({"params": p, **self.others}, x)


class _NnxCall:
    def __init__(self, graphdef: Any, rest: Any):
        self.graphdef, self.rest = graphdef, rest

    def __call__(self, s: Any, x: Array) -> Array:
        from flax import nnx

        return nnx.merge(self.graphdef, s, self.rest)(x)


class _Renamed:
    """``apply`` of a network whose parameters are passed under other names (``{ours: theirs}``)."""

    def __init__(self, apply: Callable[[Mapping[str, Array], Array], Array], back: Mapping[str, str]):
        self.apply, self.back = apply, dict(back)

    def __call__(self, vals: Mapping[str, Array], x: Array) -> Array:
        return self.apply({self.back[n]: v for n, v in vals.items()}, x)


class _EqxCall:
    def __init__(self, static: Any, per_example: bool):
        self.static, self.per_example = static, per_example

    def __call__(self, p: Any, x: Array) -> Array:
        import equinox as eqx

        model = eqx.combine(p, self.static)
        return jax.vmap(model)(x) if self.per_example else model(x)


def _from_pytree(
    params: Any,
    call: Callable[[Any, Array], Array],
    *,
    kind: str,
    out_axis: int,
    order: list[str] | None = None,
    owners: Mapping[str, Any] | None = None,
    embeddings: frozenset[str] | set[str] = frozenset(),
) -> Network:
    """Common path: float leaves of ``params`` become named parameters; other leaves stay constant."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    leaf_names = [_path_name(p) for p, _ in flat]
    if len(set(leaf_names)) != len(leaf_names):
        raise ValueError(f"parameter names are not unique: {leaf_names}")
    is_param = [_is_float_array(v) for _, v in flat]
    values = {n: jnp.asarray(v) for n, (_, v), ok in zip(leaf_names, flat, is_param) if ok}
    if not values:
        raise ValueError("the network has no floating-point parameters to make Bayesian")
    names = [n for n in (order or leaf_names) if n in values]
    names += [n for n in leaf_names if n in values and n not in names]
    constants = [v for (_, v), ok in zip(flat, is_param) if not ok]
    apply = _PytreeApply(treedef, list(zip(leaf_names, is_param)), constants, call)
    shapes = {n: tuple(v.shape) for n, v in values.items()}
    return Network(
        kind,
        tuple(names),
        values,
        {n: (owners or {}).get(n) for n in names},
        _fan_ins(names, shapes, out_axis=out_axis, embeddings=set(embeddings)),
        apply,
    )


def _linen(module: Any, variables: Any) -> Network:
    if variables is None:
        raise ValueError(
            "a flax.linen module holds no parameters: pass params=module.init(key, x) "
            "(the variables dict, or its 'params' collection)"
        )
    variables = dict(variables)
    if "params" in variables:
        params, others = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    else:
        params, others = variables, {}

    return _from_pytree(
        params,
        _LinenCall(module, others),
        kind="flax.linen",
        out_axis=-1,
        order=_dict_order(params),
        embeddings=_flax_embeddings(params),
    )


def _flax_embeddings(params: Any) -> set[str]:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {_path_name(p) for p, _ in flat if _path_name(p).rpartition(".")[2] == "embedding"}


def _nnx(module: Any) -> Network:
    from flax import nnx

    graphdef, state, rest = nnx.split(module, nnx.Param, ...)
    order: list[str] = []
    owners: dict[str, Any] = {}

    def walk(obj: Any, prefix: str, owner: Any) -> None:
        if isinstance(obj, nnx.Variable):
            if isinstance(obj, nnx.Param):
                order.append(prefix[:-1])
                owners[prefix[:-1]] = owner
            return
        if isinstance(obj, nnx.Module):
            for k, v in vars(obj).items():
                if not k.startswith("_"):
                    walk(v, f"{prefix}{k}.", obj)
        elif isinstance(obj, Mapping):
            for k, v in obj.items():
                walk(v, f"{prefix}{k}.", owner)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{prefix}{i}.", owner)

    walk(module, "", None)

    # State leaves sit under a trailing ``.value`` attribute: name parameters without it.
    net = _from_pytree(state, _NnxCall(graphdef, rest), kind="flax.nnx", out_axis=-1)
    rename = {n: n[: -len(".value")] if n.endswith(".value") else n for n in net.names}
    back = {v: k for k, v in rename.items()}
    names = [n for n in order if n in back] + [rename[n] for n in net.names if rename[n] not in order]
    values = {n: net.values[back[n]] for n in names}
    embeddings = {n for n in names if n.rpartition(".")[2] == "embedding"}
    shapes = {n: tuple(v.shape) for n, v in values.items()}
    return Network(
        "flax.nnx",
        tuple(names),
        values,
        {n: owners.get(n) for n in names},
        _fan_ins(names, shapes, out_axis=-1, embeddings=embeddings),
        _Renamed(net.apply, back),
    )


def _equinox(module: Any, per_example: bool) -> Network:
    import equinox as eqx

    params, static = eqx.partition(module, eqx.is_inexact_array)

    owners: dict[str, Any] = {}
    embeddings: set[str] = set()
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        obj, owner = module, module
        for k in path[:-1]:
            obj = (
                getattr(obj, k.name)
                if hasattr(k, "name")
                else obj[getattr(k, "idx", getattr(k, "key", None))]
            )
            if isinstance(obj, eqx.Module):
                owner = obj
        name = _path_name(path)
        owners[name] = owner
        if isinstance(owner, eqx.nn.Embedding):
            embeddings.add(name)
    return _from_pytree(
        params,
        _EqxCall(static, per_example),
        kind="equinox",
        out_axis=0,
        owners=owners,
        embeddings=embeddings,
    )


def _module_kind(obj: Any) -> str | None:
    for cls in type(obj).__mro__:
        mod = cls.__module__ or ""
        if mod.startswith("flax.linen"):
            return "flax.linen"
        if mod.startswith("flax.nnx"):
            return "flax.nnx"
        if mod.startswith("equinox"):
            return "equinox"
    return None


def as_network(
    net: Any, *, params: Any = None, per_example: bool | None = None, fan_in: FanIn | None = None
) -> Network:
    """Functional form of ``net`` (a Flax linen/nnx module, an Equinox module, or ``apply(params, x)``).

    Args:
        net: the network.
        params: a flax.linen module's variables (``module.init(key, x)``), or the parameter
            pytree of a plain ``apply(params, x)`` function; not used for nnx/Equinox modules,
            which hold their parameters.
        per_example: vmap the network over the batch axis (default: True for Equinox, whose
            layers act on one example, False otherwise).
        fan_in: override the fan-in rule: ``fan_in(name, shape) -> int``.
    """
    kind = _module_kind(net)
    if kind == "flax.linen":
        out = _linen(net, params)
    elif kind == "flax.nnx":
        if params is not None:
            raise ValueError("a flax.nnx module holds its own parameters: do not pass params=")
        out = _nnx(net)
    elif kind == "equinox":
        if params is not None:
            raise ValueError("an Equinox module holds its own parameters: do not pass params=")
        out = _equinox(net, True if per_example is None else per_example)
    elif callable(net):
        if params is None:
            raise ValueError(
                "a plain apply function needs its parameters: bayesian(apply, params=pytree, ...)"
            )
        call = _PerExample(net) if per_example else net
        order = _dict_order(params) if isinstance(params, (Mapping, list, tuple)) else None
        out = _from_pytree(params, call, kind="function", out_axis=-1, order=order)
    else:
        raise TypeError(
            "net must be a flax.linen or flax.nnx module, an Equinox module, or a function apply(params, x); "
            f"got {type(net).__name__}"
        )
    if kind in ("flax.linen", "flax.nnx") and per_example:
        out = Network(out.kind, out.names, out.values, out.owners, out.fan_in, _PerExample(out.apply))
    bad = [n for n, v in out.values.items() if not bool(np.isfinite(np.asarray(v)).all())]
    if bad:
        raise ValueError(f"the network's parameters contain NaN or inf: {bad}")
    if fan_in is not None:
        fi = {n: int(fan_in(n, tuple(out.values[n].shape))) for n in out.names}
        bad_fi = {n: v for n, v in fi.items() if v < 1}
        if bad_fi:
            raise ValueError(f"fan_in must return integers >= 1; got {bad_fi}")
        out = Network(out.kind, out.names, out.values, out.owners, fi, out.apply)
    return out
