"""MC dropout (Gal & Ghahramani, 2016) for a trained Flax or Equinox network: its own dropout layers kept on at
prediction time, behind one ``predict``; the JAX twin of :func:`uncertlr.torch.mc_dropout` with ``p=None``.

Each of ``S`` draws runs the network once with every dropout layer on, under its own key; every other layer
runs in inference mode (nnx ``eval()``, ``eqx.nn.inference_mode``: batch norm on its running statistics). Your
network is not changed and needs no ``train`` flag: the dropout layers are switched on for the forward passes
of :meth:`MCDropout.predict` only — a flax.linen ``nn.Dropout``'s call is intercepted
(``flax.linen.intercept_methods``) and computed as ``nn.Dropout`` computes it, on, with the draw's key; a flax.nnx
``nnx.Dropout`` and an Equinox ``eqx.nn.Dropout`` are read through a copy whose dropout layers take the draw's
key. A JAX module's layers cannot be added to from outside, so unlike the torch function (``p=0.1``) this one
uses the dropout layers your network has; train the network with them on.

Example:
    >>> import jax, numpy as np
    >>> import equinox as eqx
    >>> from uncertlr.jax import mc_dropout
    >>> k1, k2 = jax.random.split(jax.random.key(0))
    >>> net = eqx.nn.Sequential([eqx.nn.Linear(4, 16, key=k1), eqx.nn.Lambda(jax.nn.relu),
    ...                          eqx.nn.Dropout(0.2), eqx.nn.Linear(16, 3, key=k2)])   # (trained, with dropout)
    >>> model = mc_dropout(net)
    >>> model.predict(np.zeros((5, 4), np.float32), num_samples=10).shape
    (10, 5, 3)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uncertlr import likelihoods as _lik
from uncertlr._spec import positive_int
from uncertlr.jax._posterior import KeyStream, as_prediction
from uncertlr.jax._validation import check_batch, check_inputs, check_module, draws_outputs
from uncertlr.jax.density import _get
from uncertlr.likelihoods import NormalPrediction

__all__ = ["MCDropout", "mc_dropout"]

Array = Any

_DRAW = (
    threading.local()
)  # the key of the forward pass running on this thread, and how many dropout calls it made


def _linen_runner(module: Any, variables: Any) -> Callable[[Array, Array], Array]:
    import flax.linen as nn

    def run(key: Array, x: Array) -> Array:
        calls = 0

        def intercept(next_fun: Any, args: Any, kwargs: Any, context: Any) -> Any:
            nonlocal calls
            mod = context.module
            if context.method_name != "__call__" or not isinstance(mod, nn.Dropout) or not args:
                return next_fun(*args, **kwargs)
            # nn.Dropout's own computation with deterministic=False (which its constructor may have fixed
            # to True) and the mask from the draw's key, one key per call
            _DRAW.calls += 1
            calls += 1
            inputs = jnp.asarray(args[0])
            if mod.rate == 0.0:
                return inputs
            if mod.rate == 1.0:
                return jnp.zeros_like(inputs)
            keep = 1.0 - mod.rate
            shape = list(inputs.shape)
            for dim in mod.broadcast_dims:
                shape[dim] = 1
            mask = jax.random.bernoulli(jax.random.fold_in(key, calls), p=keep, shape=shape)
            return jnp.where(jnp.broadcast_to(mask, inputs.shape), inputs / keep, 0.0).astype(inputs.dtype)

        with nn.intercept_methods(intercept):
            return module.apply(variables, x)

    return run


_NNX_TAPS: dict[type, type] = {}
_TAP_LOCK = threading.Lock()


def _nnx_keyed(cls: type) -> type:
    """A subclass of the nnx dropout class ``cls`` that is always on and draws its mask from the draw's key."""
    with _TAP_LOCK:
        if cls not in _NNX_TAPS:

            def __call__(self: Any, inputs: Array, *args: Any, **kwargs: Any) -> Array:
                _DRAW.calls += 1
                key = jax.random.fold_in(_DRAW.key, _DRAW.index[id(self)])
                return cls.__call__(self, inputs, deterministic=False, rngs=key)

            _NNX_TAPS[cls] = type(f"_Keyed{cls.__name__}", (cls,), {"__call__": __call__})
        return _NNX_TAPS[cls]


def _nnx_runner(module: Any) -> Callable[[Array, Array], Array]:
    from flax import nnx

    def run(key: Array, x: Array) -> Array:
        clone = nnx.clone(module)  # the user's module keeps its own classes and flags
        clone.eval()  # batch norm on its running statistics; the dropout layers are switched on below
        index: dict[int, int] = {}
        for _, node in nnx.iter_graph(clone):
            if isinstance(node, nnx.Dropout):
                index[id(node)] = len(index)
                node.__class__ = _nnx_keyed(type(node))
        _DRAW.key, _DRAW.index = key, index
        try:
            return clone(x)
        finally:
            _DRAW.key, _DRAW.index = None, {}

    return run


def _equinox_runner(module: Any) -> Callable[[Array, Array], Array]:
    import equinox as eqx

    class _Keyed(eqx.Module):  # type: ignore[misc]
        layer: Any
        index: int = eqx.field(static=True)

        def __call__(self, x: Array, *args: Any, **kwargs: Any) -> Array:
            _DRAW.calls += 1
            return self.layer(x, key=jax.random.fold_in(_DRAW.key, self.index), inference=False)

    is_drop = lambda n: isinstance(n, eqx.nn.Dropout)  # noqa: E731
    paths = [
        p for p, leaf in jax.tree_util.tree_flatten_with_path(module, is_leaf=is_drop)[0] if is_drop(leaf)
    ]
    keyed = (
        eqx.tree_at(
            lambda m: [_get(m, p) for p in paths],
            module,
            replace=[_Keyed(_get(module, p), i) for i, p in enumerate(paths)],
        )
        if paths
        else module
    )
    keyed = eqx.nn.inference_mode(keyed)  # batch norm on its running statistics; dropout is keyed above

    def run(key: Array, x: Array) -> Array:
        def one(xi: Array, ki: Array) -> Array:  # Equinox modules act on one example: each its own mask
            _DRAW.key = ki
            return keyed(xi)

        return jax.vmap(one)(x, jax.random.split(key, x.shape[0]))

    return run


class MCDropout:
    """A trained network whose dropout layers stay on at prediction time: ``S`` masks, ``S`` draws.

    Build it with :func:`mc_dropout`. Picklable except for its compiled runner, which it rebuilds.

    Args:
        net: a flax.linen module (with ``params=``), a flax.nnx module or an Equinox module (vmapped over the
            batch) with at least one dropout layer (``nn.Dropout``, ``nnx.Dropout``, ``eqx.nn.Dropout``).
        params: the linen module's trained variables; nothing for nnx/Equinox.
        likelihood: ``"categorical"`` (outputs are logits) or ``"normal"`` (outputs are means).
        noise_scale: ``"normal"``: the std of the noise around the means.
        seed: seeds the masks of :meth:`predict` calls without ``rng_key`` (each call advances it).
    """

    def __init__(
        self,
        net: Any,
        *,
        params: Any = None,
        likelihood: _lik.Categorical | _lik.Normal | str = "categorical",
        noise_scale: float | None = None,
        seed: int = 0,
    ):
        kind = check_module(net, params, "MC dropout")
        self.kind, self._net, self._params = kind, net, params
        self.likelihood = _lik.as_likelihood(likelihood)
        if isinstance(self.likelihood, _lik.Normal):
            if noise_scale is None or not (np.isfinite(noise_scale) and noise_scale > 0):
                raise ValueError(
                    f"likelihood='normal' needs a positive, finite noise_scale=; got {noise_scale!r}"
                )
        elif noise_scale is not None:
            raise ValueError("noise_scale= is for likelihood='normal'")
        self.noise_scale = noise_scale
        self._runner: Callable[[Array, Array], Array] | None = None
        self._keys = KeyStream(seed)

    def _run(self) -> Callable[[Array, Array], Array]:
        if self._runner is None:
            if self.kind == "flax.linen":
                self._runner = _linen_runner(self._net, self._params)
            elif self.kind == "flax.nnx":
                self._runner = _nnx_runner(self._net)
            else:
                self._runner = _equinox_runner(self._net)
        return self._runner

    def sample_outputs(
        self, x: Array, *, num_samples: int = 32, rng_key: Any = None, batch_size: int = 1024
    ) -> Array:
        """Raw outputs ``[S, N, C]``, one dropout mask per draw (and per input)."""
        num_samples = positive_int("num_samples", num_samples)
        batch_size = positive_int("batch_size", batch_size)
        check_inputs(x)
        keys = jax.random.split(self._keys.next(rng_key), num_samples)
        run = self._run()
        parts = []
        for i, start in enumerate(range(0, x.shape[0], batch_size)):
            xb = check_batch(x[start : start + batch_size])
            _DRAW.calls = 0
            batch_keys = jax.vmap(lambda k, i=i: jax.random.fold_in(k, i))(keys)  # each batch its own masks
            parts.append(jax.vmap(run, in_axes=(0, None))(batch_keys, xb))
            if _DRAW.calls == 0:
                raise ValueError(
                    f"the forward pass of the {self.kind} network calls no dropout layer: MC dropout on JAX uses "
                    "the network's own dropout layers (nn.Dropout, nnx.Dropout, eqx.nn.Dropout); add them and "
                    "train with them on"
                )
        return draws_outputs(parts, "the network")

    def predict(
        self, x: Array, *, num_samples: int = 32, rng_key: Any = None, batch_size: int = 1024
    ) -> Array | NormalPrediction:
        """``[S, N, C]`` probabilities, or a ``NormalPrediction`` (means ``[S, N, C]``, the noise variance).

        Args:
            x: inputs ``[N, ...]``.
            num_samples: dropout masks.
            rng_key: a JAX key or an int seed (default: the next key of ``seed``).
            batch_size: rows per forward pass (all draws of a batch run at once).
        """
        out = self.sample_outputs(x, num_samples=num_samples, rng_key=rng_key, batch_size=batch_size)
        return as_prediction(out, self.likelihood, None if self.noise_scale is None else self.noise_scale**2)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_runner": None}  # a closure over the network: rebuilt on first use

    def __repr__(self) -> str:
        return f"MCDropout({self.kind})"


def mc_dropout(
    net: Any,
    *,
    params: Any = None,
    p: float | None = None,
    likelihood: _lik.Categorical | _lik.Normal | str = "categorical",
    noise_scale: float | None = None,
    seed: int = 0,
) -> MCDropout:
    """MC dropout with the network's own dropout layers (see :class:`MCDropout`).

    ``p`` exists for the torch function's signature: on JAX it must stay ``None`` — uncertlr cannot add
    dropout layers to a Flax or Equinox module; put them in the module and train with them on.

    Example:
        >>> import jax, numpy as np
        >>> import flax.linen as nn
        >>> from uncertlr.jax import mc_dropout
        >>> class Net(nn.Module):
        ...     @nn.compact
        ...     def __call__(self, x, train: bool = False):
        ...         x = nn.Dropout(0.2, deterministic=not train)(nn.relu(nn.Dense(16)(x)))
        ...         return nn.Dense(3)(x)
        >>> x = np.zeros((5, 4), np.float32)
        >>> model = mc_dropout(Net(), params=Net().init(jax.random.key(0), x))
        >>> model.predict(x, num_samples=6, rng_key=0).shape     # dropout on, whatever `train` says
        (6, 5, 3)
    """
    if p is not None:
        raise ValueError(
            "p= adds dropout layers on torch; a Flax or Equinox module cannot be changed from outside: put "
            "nn.Dropout / nnx.Dropout / eqx.nn.Dropout layers in your network, train with them on, and call "
            "mc_dropout(net) without p"
        )
    return MCDropout(net, params=params, likelihood=likelihood, noise_scale=noise_scale, seed=seed)
