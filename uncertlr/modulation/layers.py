"""Per-layer rules for a BNN's variance parameters: a trust region on the posterior's log-std.

A mean-field BNN trained with Adam moves every ``log σ`` by up to the learning rate per step,
whatever the layer: at a base LR of ``1e-1`` a layer's posterior width can change by a factor
``e^0.1`` every step, and in our LR grid (``benchmarks/lr_robustness.py``) the BNNs collapse at
high learning rates before the deterministic networks do. A *per-layer* rule sees one number per
layer (one named random parameter: a weight matrix or a bias vector) and returns one factor per
layer, which the adapter applies to that layer's proposed ``log σ`` step only (the posterior
means keep their step):

* :class:`LayerScaleCap`: ``s_l = min(1, max_step / rms_l)``, ``rms_l`` the root-mean-square of
  the step the optimizer proposes for layer ``l``'s ``log σ``; so no layer's posterior width
  changes by more than a factor ``e^max_step`` (in RMS) per step, and at a small learning rate
  the rule does nothing.

The signal is the array ``[L]`` of those RMS steps; the adapter computes it (torch:
:class:`uncertlr.torch.Modulator` with ``variance=``; JAX: :func:`uncertlr.jax.cap_scale_step`).

Example:
    >>> import numpy as np
    >>> rule = LayerScaleCap(max_step=0.01)
    >>> s, state = rule.update(np.array([0.001, 0.02, 0.1]), rule.init(np.zeros(3)))
    >>> s.round(3).tolist(), state.capped.tolist()
    ([1.0, 0.5, 0.1], [0.0, 1.0, 1.0])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from uncertlr._arrays import float_dtype, full, namespace
from uncertlr._arrays import quiet as _quiet
from uncertlr.modulation.controllers import _num

Array = Any

__all__ = ["LayerCapState", "LayerScaleCap"]


class LayerCapState(NamedTuple):
    """State of :class:`LayerScaleCap`.

    Attributes:
        step: updates so far (0-d float).
        scale: the last factors, one per layer (``[L]``).
        capped: per layer, the updates on which its step was cut (``[L]`` float counts).
        nonfinite: updates whose signal had a non-finite element (0-d float); each held the previous factors.
    """

    step: Array
    scale: Array
    capped: Array
    nonfinite: Array


@dataclass(frozen=True)
class LayerScaleCap:
    """A per-layer trust region on the posterior log-std: ``s_l = min(1, max_step / rms_l)``.

    ``rms_l`` is the root-mean-square of the ``log σ`` step the base optimizer proposes for
    layer ``l``; the factor shrinks that step to ``max_step`` in RMS and leaves smaller ones
    alone (a per-layer, not per-weight, cut: the direction within the layer is Adam's). As for
    every rule, a non-finite signal holds the previous factors and is counted (a diverging run is
    the business of :class:`~uncertlr.torch.StepGuard`, not of this rule).

    Attributes:
        max_step: the largest RMS change of a layer's ``log σ`` per step (``e^max_step`` as a
            factor on the posterior std); ``> 0``.

    Example:
        >>> import numpy as np
        >>> rule = LayerScaleCap(max_step=1e-3)
        >>> s, _ = rule.update(np.array([1e-4, 4e-3]), rule.init(np.zeros(2)))
        >>> s.tolist()
        [1.0, 0.25]
    """

    max_step: float = 1e-3

    per_parameter: ClassVar[bool] = False
    per_layer: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _num("LayerScaleCap", "max_step", self.max_step, 0.0, math.inf, lo_open=True, hi_open=True)

    def init(self, like: Array) -> LayerCapState:
        """Initial state for ``L`` layers; ``like`` is an ``[L]`` array (its backend, dtype, device)."""
        xp = namespace(like)
        if like.ndim != 1:
            raise ValueError(
                f"LayerScaleCap: init(like) takes one value per layer, shape [L]; got {tuple(like.shape)}"
            )
        dt = float_dtype(xp, like)
        zero = full(xp, like, 0.0, dt)
        return LayerCapState(zero, xp.ones_like(like, dtype=dt), xp.zeros_like(like, dtype=dt), zero)

    def update(self, signal: Array, state: LayerCapState) -> tuple[Array, LayerCapState]:
        """Factors ``[L]`` for the layers' proposed ``log σ`` steps, given their RMS ``signal[L]``."""
        xp = namespace(state.scale)
        rms = xp.asarray(signal, dtype=state.scale.dtype)
        if tuple(rms.shape) != tuple(state.scale.shape):
            raise ValueError(
                f"LayerScaleCap: the signal holds one RMS step per layer, shape {tuple(state.scale.shape)}; "
                f"got {tuple(rms.shape)}"
            )
        with _quiet(xp):
            ok = xp.all(xp.isfinite(rms))
            cut = rms > self.max_step
            # the quotient only where the step is cut (the inner where keeps 0 and NaN out of it)
            s = xp.where(cut, self.max_step / xp.where(cut, rms, 1.0), 1.0)
            s = xp.asarray(xp.where(ok, s, state.scale), dtype=state.scale.dtype)
            hit = xp.asarray(xp.where(ok & cut, 1.0, 0.0), dtype=state.scale.dtype)
        new = LayerCapState(
            step=state.step + 1.0,
            scale=s,
            capped=state.capped + hit,
            nonfinite=state.nonfinite + xp.asarray(xp.where(ok, 0.0, 1.0), dtype=state.scale.dtype),
        )
        return s, new
