"""The LR modulator as optax transformations, with the same rule objects as the torch adapter.

Place a modulator *after* the preconditioner and before the learning rate, so it scales the
step the base optimizer proposes (never the gradient)::

    tx = optax.chain(optax.scale_by_adam(), scale_by_uncertainty(Ratio()), optax.scale_by_learning_rate(1e-3))
    updates, state = tx.update(grads, state, params, uncertainty=u)

* :func:`scale_by_uncertainty` takes a global rule (:class:`~uncertlr.modulation.Ratio`,
  :class:`~uncertlr.modulation.ZScore`) and the scalar extra argument ``uncertainty=``
  (batch predictive entropy, mutual information, a loss...), and multiplies every update
  leaf by the rule's factor;
* :func:`scale_by_grad_uncertainty` takes a per-parameter rule
  (:class:`~uncertlr.modulation.SigmaRatio`, :class:`~uncertlr.modulation.GradSigmaRatio`,
  :class:`~uncertlr.modulation.VarianceRatio`) and ``posterior_scale=`` (a pytree of σ shaped
  like the updates), and multiplies each element by its own factor. Optionally ``grads=`` gives
  the raw gradient for the rule's gradient term (by default the incoming updates are used,
  which *are* the raw gradients when the transformation comes first in the chain).

* :func:`cap_scale_step` takes a per-layer variance rule (:class:`~uncertlr.modulation.LayerScaleCap`)
  and scales each posterior-std leaf's step (``{name}_scale``, the log σ the optimizer sees)
  by one factor per leaf; place it *last* in the chain, so it sees the step itself.

All three are ``optax.GradientTransformationExtraArgs``, keep their state in NamedTuples of arrays
and are jit-safe (the rules never branch on values). Under ``pmap``/``shard_map`` pass
``axis_name=``: the signal (and for per-parameter rules the gradient and σ) is averaged with
``jax.lax.pmean`` first, so every device applies the same factors.

NumPyro's ``SVI`` hands an optax optimizer only the loss (``value=``); :func:`for_numpyro`
wraps a transformation so that it receives keyword arguments computed from NumPyro's
parameters and loss (``extra_args=``) or set by your loop between steps (``feed=`` with
:func:`feed`)::

    tx = for_numpyro(modulated_adam, feed={"uncertainty": 0.0})
    svi = numpyro.infer.SVI(bnn.model, bnn.guide, tx, TraceMeanField_ELBO())
    state = feed(state, uncertainty=u)        # before each svi.update(state, x, y)

Example:
    >>> import jax.numpy as jnp, optax
    >>> from uncertlr.modulation import Ratio
    >>> tx = scale_by_uncertainty(Ratio(warmup=1))
    >>> params = {"w": jnp.ones(2)}
    >>> state = tx.init(params)
    >>> for u in [1.0, 4.0]:
    ...     updates, state = tx.update({"w": jnp.ones(2)}, state, params, uncertainty=u)
    >>> updates["w"].round(3).tolist()
    [0.5, 0.5]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from uncertlr.jax._posterior import guide_pairs
from uncertlr.modulation import GradientNoise, LayerScaleCap, ParamSignal, Rule

__all__ = [
    "CapScaleStepState",
    "ForwardState",
    "ScaleByGradUncertaintyState",
    "ScaleByUncertaintyState",
    "cap_scale_step",
    "feed",
    "for_numpyro",
    "scale_by_grad_uncertainty",
    "scale_by_uncertainty",
]


class ScaleByUncertaintyState(NamedTuple):
    """State of :func:`scale_by_uncertainty`: the global rule's state (``rule_state.scale`` is the last factor)."""

    rule_state: Any


class ScaleByGradUncertaintyState(NamedTuple):
    """State of :func:`scale_by_grad_uncertainty`.

    Attributes:
        rule_state: a pytree shaped like the parameters with one rule state per leaf.
        noise_state: gradient-noise moments per leaf (``None`` unless ``noise=`` was given).
    """

    rule_state: Any
    noise_state: Any


def _check_rule(rule: Any, per_parameter: bool, fn: str) -> None:
    if not (callable(getattr(rule, "init", None)) and callable(getattr(rule, "update", None))):
        raise TypeError(f"{fn}: rule must have init() and update(signal, state); got {type(rule).__name__}")
    if bool(getattr(rule, "per_parameter", False)) != per_parameter:
        other = "scale_by_grad_uncertainty" if not per_parameter else "scale_by_uncertainty"
        kind = "a per-parameter" if not per_parameter else "a global"
        raise ValueError(f"{fn}: {type(rule).__name__} is {kind} rule; use {other}")


def scale_by_uncertainty(
    rule: Rule, *, axis_name: str | None = None
) -> optax.GradientTransformationExtraArgs:
    """Multiply the updates by a global rule's factor for the step's scalar ``uncertainty``.

    Args:
        rule: a global rule from :mod:`uncertlr.modulation` (or your own).
        axis_name: a mapped axis to ``pmean`` the signal over (``pmap``/``shard_map``).

    Returns:
        A transformation whose ``update(updates, state, params=None, *, uncertainty)`` needs
        the scalar signal as the keyword ``uncertainty`` (a NaN/inf holds the previous factor).

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from uncertlr.modulation import Ratio
        >>> tx = optax.chain(optax.scale_by_adam(), scale_by_uncertainty(Ratio()), optax.scale_by_learning_rate(1e-3))
        >>> params = jnp.zeros(3)
        >>> state = tx.init(params)
        >>> step = jax.jit(tx.update)
        >>> updates, state = step(jnp.ones(3), state, params, uncertainty=jnp.float32(0.7))
        >>> updates.shape
        (3,)
    """
    _check_rule(rule, False, "scale_by_uncertainty")

    def init_fn(params: Any) -> ScaleByUncertaintyState:
        del params
        return ScaleByUncertaintyState(rule.init(jnp.zeros((), jnp.float32)))

    def update_fn(
        updates: Any,
        state: ScaleByUncertaintyState,
        params: Any = None,
        *,
        uncertainty: Any = None,
        **extra: Any,
    ) -> tuple[Any, ScaleByUncertaintyState]:
        del params, extra
        if uncertainty is None:
            raise ValueError("scale_by_uncertainty: pass the step's signal as update(..., uncertainty=u)")
        u = jnp.asarray(uncertainty, jnp.float32)
        if u.ndim != 0:
            raise ValueError(f"scale_by_uncertainty: uncertainty must be a scalar; got shape {u.shape}")
        if axis_name is not None:
            u = jax.lax.pmean(u, axis_name)
        s, rule_state = rule.update(u, state.rule_state)
        updates = jax.tree.map(lambda g: g * s.astype(g.dtype), updates)
        return updates, ScaleByUncertaintyState(rule_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_grad_uncertainty(
    rule: Rule, *, noise: GradientNoise | None = None, axis_name: str | None = None
) -> optax.GradientTransformationExtraArgs:
    """Multiply each element of the updates by a per-parameter rule's factor.

    Args:
        rule: a per-parameter rule from :mod:`uncertlr.modulation` (or your own with
            ``per_parameter = True``); the reference mean is taken per leaf (per tensor).
        noise: a :class:`~uncertlr.modulation.GradientNoise` estimator; with it, a step without
            ``posterior_scale=`` uses the gradient-noise std as σ (for deterministic nets).
        axis_name: a mapped axis to ``pmean`` the gradient and σ over.

    Returns:
        A transformation whose ``update(updates, state, params=None, *, posterior_scale, grads=None)``
        takes σ as a pytree shaped like ``updates`` and optionally the raw gradient.

    Example:
        >>> import jax.numpy as jnp
        >>> from uncertlr.modulation import GradSigmaRatio
        >>> tx = scale_by_grad_uncertainty(GradSigmaRatio(warmup=0, decay=0.0, renormalize=False))
        >>> g = {"w": jnp.array([1.0, -1.0, 4.0])}
        >>> state = tx.init(g)
        >>> updates, state = tx.update(g, state, posterior_scale={"w": jnp.array([1.0, 4.0, 1.0])})
        >>> [round(float(r), 3) for r in updates["w"] / g["w"]]
        [1.732, 0.866, 0.866]
    """
    _check_rule(rule, True, "scale_by_grad_uncertainty")

    def init_fn(params: Any) -> ScaleByGradUncertaintyState:
        rule_state = jax.tree.map(lambda p: rule.init(jnp.zeros(jnp.shape(p), _dtype(p))), params)
        noise_state = None
        if noise is not None:
            noise_state = jax.tree.map(lambda p: noise.init(jnp.zeros(jnp.shape(p), _dtype(p))), params)
        return ScaleByGradUncertaintyState(rule_state, noise_state)

    def update_fn(
        updates: Any,
        state: ScaleByGradUncertaintyState,
        params: Any = None,
        *,
        posterior_scale: Any = None,
        grads: Any = None,
        **extra: Any,
    ) -> tuple[Any, ScaleByGradUncertaintyState]:
        del params, extra
        leaves, treedef = jax.tree.flatten(updates)
        g_leaves = leaves if grads is None else _flatten_like(treedef, grads, "grads")
        if axis_name is not None:
            g_leaves = [jax.lax.pmean(g, axis_name) for g in g_leaves]
        states = treedef.flatten_up_to(state.rule_state)
        noise_states = None if state.noise_state is None else treedef.flatten_up_to(state.noise_state)
        if posterior_scale is not None:
            sig_leaves = _flatten_like(treedef, posterior_scale, "posterior_scale")
            if axis_name is not None:
                sig_leaves = [jax.lax.pmean(s, axis_name) for s in sig_leaves]
        elif noise_states is not None:
            sig_leaves = []
            for i, g in enumerate(g_leaves):
                sg, noise_states[i] = noise.update(g.astype(states[i].scale.dtype), noise_states[i])
                sig_leaves.append(sg)
        else:
            raise ValueError(
                "scale_by_grad_uncertainty: pass posterior_scale= (σ shaped like the updates), "
                "or build it with noise=GradientNoise() to estimate σ from the gradients"
            )
        out, new_states = [], []
        for u, g, sg, st in zip(leaves, g_leaves, sig_leaves, states):
            dt = st.scale.dtype
            s, st = rule.update(ParamSignal(g.astype(dt), jnp.asarray(sg, dt)), st)
            out.append(u * s.astype(u.dtype))
            new_states.append(st)
        new_noise = None if noise_states is None else treedef.unflatten(noise_states)
        return treedef.unflatten(out), ScaleByGradUncertaintyState(treedef.unflatten(new_states), new_noise)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class CapScaleStepState(NamedTuple):
    """State of :func:`cap_scale_step`: the per-layer rule's state over the posterior-std leaves."""

    rule_state: Any


def _scale_leaves(tree: Any) -> list[str]:
    """The posterior-std keys of a flat parameter dict: ``{n}_scale`` beside ``{n}_loc`` (or ``_auto_``)."""
    if not isinstance(tree, Mapping):
        raise TypeError(
            f"cap_scale_step: the updates must be a dict of named leaves; got {type(tree).__name__}"
        )
    return sorted(guide_pairs(tree).values())


def cap_scale_step(rule: Any = None) -> optax.GradientTransformationExtraArgs:
    """Scale each posterior-std leaf's step by a per-layer rule's factor (the JAX side of ``variance=``).

    Every ``{name}_scale`` leaf with a ``{name}_loc`` beside it is one layer. The optimizer of
    :func:`~uncertlr.jax.svi_step`, :func:`~uncertlr.jax.svi` and NumPyro's ``SVI`` steps the
    *unconstrained* parameters, so the step of such a leaf is the step of ``log σ``; its RMS is the
    rule's signal, and the rule's factor multiplies that leaf's step. Every other leaf (the means,
    deterministic parameters, a learned noise) passes through unchanged. Put it last in the chain.

    Args:
        rule: a per-layer rule (default :class:`~uncertlr.modulation.LayerScaleCap` ``(1e-3)``).

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from uncertlr.modulation import LayerScaleCap
        >>> tx = optax.chain(optax.sgd(1.0), cap_scale_step(LayerScaleCap(max_step=0.01)))
        >>> params = {"w_loc": jnp.zeros(2), "w_scale": jnp.zeros(2)}
        >>> updates, state = tx.update({"w_loc": jnp.ones(2), "w_scale": jnp.ones(2)}, tx.init(params))
        >>> [round(float(v), 4) for v in updates["w_loc"]], [round(float(v), 4) for v in updates["w_scale"]]
        ([-1.0, -1.0], [-0.01, -0.01])
    """
    rule = LayerScaleCap() if rule is None else rule
    if not getattr(rule, "per_layer", False):
        raise TypeError(
            f"cap_scale_step takes a per-layer rule (e.g. LayerScaleCap); got {type(rule).__name__}"
        )

    def init_fn(params: Any) -> CapScaleStepState:
        names = _scale_leaves(params)
        dt = _dtype(params[names[0]]) if names else jnp.float32
        return CapScaleStepState(rule.init(jnp.zeros(len(names), dt)))

    def update_fn(
        updates: Any, state: CapScaleStepState, params: Any = None, **extra: Any
    ) -> tuple[Any, CapScaleStepState]:
        del params, extra
        names = _scale_leaves(updates)
        if len(names) != state.rule_state.scale.shape[0]:
            raise ValueError(
                f"cap_scale_step: the state holds {state.rule_state.scale.shape[0]} layers, the updates "
                f"{len(names)} posterior-std leaves ({names})"
            )
        if not names:
            return updates, state
        dt = state.rule_state.scale.dtype
        rms = jnp.stack([jnp.sqrt(jnp.mean(jnp.square(updates[k].astype(dt)))) for k in names])
        s, rule_state = rule.update(rms, state.rule_state)
        out = dict(updates)
        for i, k in enumerate(names):
            out[k] = updates[k] * s[i].astype(updates[k].dtype)
        return type(updates)(out) if not isinstance(updates, dict) else out, CapScaleStepState(rule_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _dtype(p: Any) -> Any:
    return jnp.float64 if jnp.asarray(p).dtype == jnp.float64 else jnp.float32


def _flatten_like(treedef: Any, tree: Any, name: str) -> list[Any]:
    try:
        leaves = treedef.flatten_up_to(tree)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"scale_by_grad_uncertainty: {name} must have the same structure as the updates"
        ) from exc
    return leaves


class ForwardState(NamedTuple):
    """State of :func:`for_numpyro`: the wrapped transformation's state and the values :func:`feed` set."""

    inner: Any
    fed: dict[str, Any]


def for_numpyro(
    transformation: optax.GradientTransformation,
    *,
    extra_args: Callable[[Any, Any], Mapping[str, Any]] | None = None,
    feed: Mapping[str, Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """``transformation`` for ``numpyro.infer.SVI``, with the keyword arguments NumPyro does not pass.

    NumPyro's optax wrapper calls ``update(grads, state, params, value=loss)`` and nothing
    else, so a modulator waiting for ``uncertainty=`` fails there. The wrapper forwards

    * ``extra_args(params, loss) -> {name: value}``, computed inside the jitted SVI step from
      NumPyro's parameters (unconstrained: a guide std is its log) and this step's loss, e.g.
      ``lambda params, loss: {"uncertainty": loss}``;
    * ``feed={name: initial value}``: values your loop sets before each ``svi.update`` with
      :func:`feed` (e.g. the batch's predictive entropy); their shapes and dtypes are fixed.

    Outside NumPyro (a plain optax loop) pass the keywords to ``update`` yourself instead.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, optax
        >>> from numpyro.infer import SVI, Trace_ELBO
        >>> from uncertlr.modulation import Ratio
        >>> def model(y):
        ...     numpyro.sample("y", dist.Normal(numpyro.param("m", 0.0), 1.0), obs=y)
        >>> tx = optax.chain(optax.scale_by_adam(), scale_by_uncertainty(Ratio()), optax.scale_by_learning_rate(0.1))
        >>> svi = SVI(model, lambda y: None, for_numpyro(tx, feed={"uncertainty": 1.0}), Trace_ELBO())
        >>> state = svi.init(jax.random.key(0), jnp.ones(5))
        >>> for u in [1.0, 2.0, 0.5]:
        ...     state = feed(state, uncertainty=u)
        ...     state, loss = svi.update(state, jnp.ones(5))
        >>> round(float(svi.get_params(state)["m"]), 3) > 0
        True
    """
    if not isinstance(transformation, optax.GradientTransformation):
        raise TypeError(
            f"for_numpyro: transformation must be an optax.GradientTransformation; got {type(transformation).__name__}"
        )
    if extra_args is None and not feed:
        raise ValueError(
            "for_numpyro: give extra_args=(params, loss) -> dict, feed={name: initial value}, or both"
        )
    inner = optax.with_extra_args_support(transformation)
    fed0 = {str(k): _strong(v) for k, v in (feed or {}).items()}

    def init_fn(params: Any) -> ForwardState:
        return ForwardState(inner.init(params), dict(fed0))

    def update_fn(
        updates: Any, state: ForwardState, params: Any = None, *, value: Any = None, **extra: Any
    ) -> tuple[Any, ForwardState]:
        kw = dict(state.fed)
        if extra_args is not None:
            kw.update(extra_args(params, value))
        kw.update(extra)
        updates, inner_state = inner.update(updates, state.inner, params, **kw)
        return updates, ForwardState(inner_state, state.fed)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def feed(state: Any, **values: Any) -> Any:
    """``state`` with the values :func:`for_numpyro` forwards at the next step replaced.

    ``state`` is anything holding the wrapper's :class:`ForwardState`: a NumPyro ``SVIState``
    or the optax state itself. A name the wrapper was not given, or a value of another
    shape, is refused (it would recompile the step).
    """
    found: list[ForwardState] = []

    def replace(s: Any) -> Any:
        if not isinstance(s, ForwardState):
            return s
        found.append(s)
        unknown = sorted(set(values) - set(s.fed))
        if unknown:
            raise ValueError(
                f"feed: {unknown} not among the names given to for_numpyro(feed=...): {sorted(s.fed)}"
            )
        new = dict(s.fed)
        for k, v in values.items():
            v = _strong(v, s.fed[k].dtype)
            if v.shape != s.fed[k].shape:
                raise ValueError(f"feed: {k} must keep its shape {s.fed[k].shape}; got {v.shape}")
            new[k] = v
        return ForwardState(s.inner, new)

    out = jax.tree.map(replace, state, is_leaf=lambda s: isinstance(s, ForwardState))
    if not found:
        raise ValueError("feed: the state holds no for_numpyro(...) optimizer state")
    return out


def _strong(value: Any, dtype: Any = None) -> Any:
    """``value`` as an array of a fixed (not weak) dtype, so that feeding a Python float does not retrace."""
    arr = jnp.asarray(value, dtype)
    return jnp.array(arr, dtype=arr.dtype)
