"""Deep ensembles (Lakshminarayanan et al., 2017) of trained Flax or Equinox networks, or of JAX BNNs, behind one
``predict``: the JAX twin of :class:`uncertlr.torch.Ensemble`.

In JAX you train the members yourself — in a Python loop, or all at once with ``jax.vmap`` over stacked
parameters (``eqx.filter_vmap`` for Equinox), the idiomatic way — and :class:`Ensemble` puts them behind the
library's one interface: ``predict(x, num_samples)`` gives ``[S', N, C]`` probabilities (or a
:class:`~uncertlr.likelihoods.NormalPrediction`) that :mod:`uncertlr.metrics`, the signals,
:func:`uncertlr.calibration.fit_temperature` and the report take. Deterministic members give one draw each;
BNN members (:func:`uncertlr.jax.svi` or :func:`uncertlr.jax.mcmc` results) ``ceil(num_samples / size)`` each.
:func:`ensemble_spread` is the members' spread per parameter, the σ that
:func:`uncertlr.jax.scale_by_grad_uncertainty` takes while a vmapped ensemble trains.

Networks are run in inference mode: nnx through a copy in ``eval()`` mode (your modules are not touched),
Equinox through ``eqx.nn.inference_mode``; a linen module as ``apply`` runs it (build it deterministic).

Example:
    >>> import jax, numpy as np
    >>> import flax.linen as nn
    >>> from uncertlr.jax import Ensemble
    >>> net = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(3)])
    >>> x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    >>> members = [net.init(k, x[:1]) for k in jax.random.split(jax.random.key(0), 5)]   # (train each)
    >>> Ensemble(net, params=members).predict(x).shape      # one draw per member
    (5, 8, 3)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uncertlr import likelihoods as _lik
from uncertlr._spec import positive_int
from uncertlr.jax._networks import _module_kind
from uncertlr.jax._posterior import KeyStream, _Posterior, as_prediction
from uncertlr.jax._validation import check_batch, check_inputs, draws_outputs
from uncertlr.likelihoods import NormalPrediction

__all__ = ["Ensemble", "ensemble_spread"]

Array = Any


def _forward(
    net: Any, kind: str, stacked: bool
) -> tuple[Callable[[Any], Any], Callable[[Any, Array], Array]]:
    """``(prepare, run)``: ``run(prepare(member), x) -> outputs`` (``[K, N, ...]`` when ``stacked``), jitted, in
    inference mode; ``prepare`` runs once per member and ``predict`` call, ``run`` once per batch."""
    if kind == "flax.linen":
        apply = net.apply
        return (lambda v: v), jax.jit(jax.vmap(apply, in_axes=(0, None)) if stacked else apply)
    if kind == "flax.nnx":
        from flax import nnx

        def split(module: Any) -> tuple[Any, Any]:
            clone = nnx.clone(module)
            clone.eval()  # dropout off, batch norm on its running statistics (the clone's flags only)
            return nnx.split(clone)

        graphdef, _ = split(net)
        return (lambda module: split(module)[1]), jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    import equinox as eqx

    def one(module: Any, x: Array) -> Array:
        return jax.vmap(eqx.nn.inference_mode(module))(x)

    run = eqx.filter_jit(eqx.filter_vmap(one, in_axes=(eqx.if_array(0), None)) if stacked else one)
    return (lambda m: m), run  # type: ignore[return-value]


def _variables(v: Any) -> Any:
    """A linen module's variables: ``{"params": ...}`` (a bare parameter tree is wrapped)."""
    return v if isinstance(v, dict) and "params" in v else {"params": v}


class Ensemble:
    """Independently trained members behind one ``predict``. Picklable (its compiled forward pass is rebuilt).

    Args:
        members: the trained members — flax.nnx or Equinox modules, a flax.linen module (with ``params=``),
            or BNN results (:class:`~uncertlr.jax.SVIResult`, :class:`~uncertlr.jax.MCMCResult`) for an
            ensemble of BNNs. A list of at least 2; with ``stacked=True`` one module (Equinox) whose arrays
            carry the members on a leading axis, as ``eqx.filter_vmap`` makes them.
        params: a flax.linen module's members' variables: a list, or one pytree stacked on a leading member
            axis with ``stacked=True`` (what ``jax.vmap(module.init)`` returns).
        stacked: the members are stacked on a leading axis (linen ``params``, or an Equinox module).
        likelihood: deterministic members: ``"categorical"`` (their outputs are logits) or ``"normal"`` (their
            outputs are means). BNN members bring their own.
        noise_scale: ``"normal"``: the noise std of the members' predictions (one number, or one per member).
        seed: seeds the draws of BNN members for :meth:`predict` calls without ``rng_key``.

    Example:
        >>> import jax, equinox as eqx, numpy as np
        >>> from uncertlr.jax import Ensemble
        >>> make = lambda k: eqx.nn.MLP(4, 3, 16, 1, key=k)
        >>> stacked = eqx.filter_vmap(make)(jax.random.split(jax.random.key(0), 4))   # (train with filter_vmap)
        >>> x = np.zeros((8, 4), np.float32)
        >>> Ensemble(stacked, stacked=True).predict(x).shape
        (4, 8, 3)
    """

    def __init__(
        self,
        members: Any,
        *,
        params: Any = None,
        stacked: bool = False,
        likelihood: _lik.Categorical | _lik.Normal | str = "categorical",
        noise_scale: float | Sequence[float] | None = None,
        seed: int = 0,
    ):
        self._stacked = bool(stacked)
        self._bnn = False
        if isinstance(members, (list, tuple)):
            if stacked:
                raise ValueError("stacked=True takes one module whose arrays hold the members, not a list")
            items = list(members)
            if len(items) < 2:
                raise ValueError(f"an ensemble needs at least 2 members; got {len(items)}")
            if all(isinstance(m, _Posterior) for m in items):
                kinds = {type(m.bnn.likelihood).__name__ for m in items}
                if len(kinds) != 1:
                    raise ValueError(f"every member must have the same likelihood; got {sorted(kinds)}")
                if params is not None or noise_scale is not None:
                    raise ValueError(
                        "BNN members bring their own parameters and likelihood: pass neither params= nor noise_scale="
                    )
                self._bnn, self.kind = True, "bnn"
                self.likelihood = items[0].bnn.likelihood
                self._members = items
            else:
                found = {_module_kind(m) for m in items}
                if None in found or len(found) != 1 or found == {"flax.linen"}:
                    raise TypeError(
                        "members must be flax.nnx modules, Equinox modules or uncertlr.jax BNN results (svi, mcmc), "
                        "all of one kind; for flax.linen pass the module with params=[variables, ...]; got "
                        f"{sorted({type(m).__name__ for m in items})}"
                    )
                if params is not None:
                    raise ValueError(f"{found.pop()} members hold their own parameters: do not pass params=")
                self.kind = _module_kind(items[0])  # type: ignore[assignment]
                self._members = items
        else:
            self.kind = _module_kind(members)  # type: ignore[assignment]
            if self.kind == "flax.linen":
                if params is None:
                    raise ValueError("a flax.linen module holds no parameters: pass params=[variables, ...]")
                if not stacked:
                    if not isinstance(params, (list, tuple)) or len(params) < 2:
                        raise ValueError(
                            "params= must be a list of at least 2 members' variables (or one stacked pytree "
                            "with stacked=True)"
                        )
                    self._members = [_variables(v) for v in params]
                else:
                    self._members = _variables(params)
                self._module = members
            elif self.kind == "equinox" and stacked:
                if params is not None:
                    raise ValueError("an Equinox module holds its own parameters: do not pass params=")
                self._members = members
                self._module = members
            else:
                raise TypeError(
                    "members must be a list of members, a flax.linen module with params=, or a stacked Equinox "
                    f"module with stacked=True; got {type(members).__name__}"
                )
        if self._stacked:
            arrays = [
                a
                for a in jax.tree_util.tree_leaves(self._members)
                if hasattr(a, "shape") and hasattr(a, "dtype")
            ]
            sizes = {int(a.shape[0]) if a.ndim else 0 for a in arrays}
            if len(sizes) != 1 or min(sizes) < 2:
                raise ValueError(
                    f"stacked members need one leading member axis of size >= 2 on every array; got sizes {sorted(sizes)}"
                )
            self.size = sizes.pop()
        else:
            self.size = len(self._members)
        # (prepare, run) of _forward, built on first use (and after unpickling)
        self._run: tuple[Callable[[Any], Any], Callable[[Any, Array], Array]] | None = None
        if not self._bnn:
            self.likelihood = _lik.as_likelihood(likelihood)
        self._noise_var: np.ndarray | None = None
        if isinstance(self.likelihood, _lik.Normal) and not self._bnn:
            if noise_scale is None:
                raise ValueError("likelihood='normal' needs noise_scale= (the std of the members' noise)")
            scale = np.broadcast_to(np.asarray(noise_scale, dtype=np.float64), (self.size,))
            if not (np.isfinite(scale).all() and (scale > 0).all()):
                raise ValueError(f"noise_scale must be positive and finite; got {noise_scale!r}")
            self._noise_var = scale**2
        elif noise_scale is not None and not self._bnn:
            raise ValueError("noise_scale= is for likelihood='normal'")
        self._keys = KeyStream(seed)

    def _runner(self) -> tuple[Callable[[Any], Any], Callable[[Any, Array], Array]]:
        if self._run is None:
            module = self._module if self.kind == "flax.linen" or self._stacked else self._members[0]
            self._run = _forward(module, self.kind, self._stacked)
        return self._run

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_run": None}

    def _outputs(self, x: Array, batch_size: int) -> Array:
        """Every deterministic member's outputs ``[K, N, C]``."""
        prepare, run = self._runner()
        members = prepare(self._members) if self._stacked else [prepare(m) for m in self._members]
        parts = []
        for start in range(0, x.shape[0], batch_size):
            xb = check_batch(x[start : start + batch_size])
            if self._stacked:
                parts.append(run(members, xb))
            else:
                parts.append(jnp.stack([run(m, xb) for m in members]))
        return draws_outputs(parts, "each member")

    def predict(
        self, x: Array, *, num_samples: int = 32, rng_key: Any = None, batch_size: int = 1024
    ) -> Array | NormalPrediction:
        """``[S', N, C]`` probabilities, or a ``NormalPrediction`` ``[S', N, C]``, over all members.

        Args:
            x: inputs ``[N, ...]``.
            num_samples: BNN members give ``ceil(num_samples / size)`` draws each; deterministic ones one.
            rng_key: BNN members: a JAX key or an int seed (default: the next key of ``seed``).
            batch_size: rows per forward pass of deterministic members.
        """
        num_samples = positive_int("num_samples", num_samples)
        batch_size = positive_int("batch_size", batch_size)
        check_inputs(x)
        if self._bnn:
            per = math.ceil(num_samples / self.size)
            keys = jax.random.split(self._keys.next(rng_key), self.size)
            preds = [m.predict(x, num_samples=per, rng_key=k) for m, k in zip(self._members, keys)]
            if isinstance(preds[0], NormalPrediction):
                return NormalPrediction(
                    jnp.concatenate([p.mean for p in preds]), jnp.concatenate([p.variance for p in preds])
                )
            return jnp.concatenate(preds)
        out = self._outputs(x, batch_size)  # (checks each batch for NaN and inf)
        var = None if self._noise_var is None else self._noise_var[:, None, None]
        return as_prediction(out, self.likelihood, var)

    def __repr__(self) -> str:
        return f"Ensemble({self.kind}, size={self.size}{', stacked' if self._stacked else ''})"


def ensemble_spread(stacked: Any) -> Any:
    """Each parameter's spread over the members of a stacked ensemble: the standard deviation over the leading
    member axis (``ddof=1``, as :meth:`uncertlr.torch.Ensemble.parameter_scale`), broadcast back to the stacked
    shape, so it is the ``posterior_scale=`` tree of :func:`uncertlr.jax.scale_by_grad_uncertainty` while the
    ensemble trains under ``jax.vmap``. Leaves that are not arrays (an Equinox module's functions) are kept.

    Example:
        >>> import jax.numpy as jnp
        >>> spread = ensemble_spread({"w": jnp.array([[0.0, 1.0], [2.0, 1.0]])})
        >>> spread["w"].tolist()
        [[1.4142135381698608, 0.0], [1.4142135381698608, 0.0]]
    """

    def one(a: Any) -> Any:
        if not (hasattr(a, "shape") and hasattr(a, "dtype")) or not jnp.issubdtype(a.dtype, jnp.inexact):
            return a
        if jnp.ndim(a) == 0 or jnp.shape(a)[0] < 2:
            raise ValueError(
                f"stacked parameters need a leading member axis of size >= 2; got shape {jnp.shape(a)}"
            )
        return jnp.broadcast_to(jnp.std(a, axis=0, ddof=1), jnp.shape(a))

    return jax.tree.map(one, stacked)
