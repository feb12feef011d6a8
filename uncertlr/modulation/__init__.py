"""The LR modulator's rules: factors for the step an optimizer proposes, from uncertainty.

A *rule* is a frozen dataclass of numbers with two pure methods::

    state = rule.init(like)                 # like: an array of the backend, dtype and device to use
    scale, state = rule.update(signal, state)

The adapters (:class:`uncertlr.torch.Modulator`, ``uncertlr.jax.scale_by_uncertainty`` /
``scale_by_grad_uncertainty``) multiply the base optimizer's proposed step by ``scale``;
they never scale the gradient (Adam's step does not depend on the gradient's scale).
The same rule objects serve both backends: ``update`` is written once on the array API,
with no Python branching on values, so it runs under ``jax.jit`` and on a GPU without
reading anything back to the host.

Global rules (``per_parameter = False``) map a scalar signal ``u`` (batch predictive
entropy, mutual information, a loss...) to one factor:

* :class:`Ratio` (G1): ``s = clip((u / ū)^κ, s_min, s_max)``, ``ū`` the bias-corrected EMA of
  past signals;
* :class:`ZScore` (G2): ``s = s_max^tanh(κ z)``, ``z`` the running z-score of ``u``.

Per-parameter rules (``per_parameter = True``) map :class:`ParamSignal` ``(grad, sigma)``
of one tensor to an elementwise factor (``ref`` = the mean over the tensor):

* :class:`SigmaRatio` (P1): ``s_j = clip((σ_j / ref)^κ)``;
* :class:`GradSigmaRatio` (P2): ``s_j = clip((|ĝ_j| σ_j / ref)^κ)``, ``ĝ`` an EMA of the gradient;
* :class:`VarianceRatio` (P3): ``s_j = clip((σ_j² / ref)^κ)`` (κ > 0 is the BGD/IVON direction,
  larger steps where the posterior is wider).

Controllers with memory (:mod:`uncertlr.modulation.controllers`) keep a *persistent* factor,
which G1/G2 (returning to ~1 at steady state) cannot:

* :class:`UncertaintyPlateau`: decay when the smoothed signal stops falling (armed first);
* :class:`UncertaintyWarmup`: the factor follows the signal relative to its initial level;
* :class:`Product`: several global rules, factors multiplied.

Per-layer rules (``per_layer = True``, :mod:`uncertlr.modulation.layers`) act on a BNN's
variance parameters, one factor per layer, given the RMS of each layer's proposed ``log σ``
step (torch: ``Modulator(..., variance=rule, sigma=bnn)``; JAX: ``cap_scale_step``):

* :class:`LayerScaleCap`: ``s_l = min(1, max_step / rms_l)``, a trust region on the posterior width.

``κ < 0`` means "more uncertain, smaller step"; ``κ > 0`` the opposite. Every rule keeps
``s = 1`` for its first ``warmup`` updates, and a non-finite signal (any element) holds the
previous scale, leaves the running statistics untouched and is counted in ``state.nonfinite``
(for a global rule, so does a finite signal whose square overflows the state's dtype,
``|u| > ~1.8e19`` in float32: it could not enter the running second moment).

Example:
    >>> import numpy as np
    >>> from uncertlr.modulation import Ratio
    >>> rule = Ratio(kappa=-0.5, warmup=2)
    >>> state = rule.init()
    >>> scales = []
    >>> for u in [1.0, 1.0, 4.0, float("nan"), 0.25]:
    ...     s, state = rule.update(u, state)
    ...     scales.append(round(float(s), 3))
    >>> scales
    [1.0, 1.0, 0.5, 0.5, 2.0]
    >>> int(state.nonfinite)
    1

Writing your own rule: any object with ``init(like)`` and ``update(signal, state)`` (and
``per_parameter = True`` if it works elementwise) plugs into both adapters; use
:func:`namespace` to get the array module, and keep numbers in dataclass fields so the
rule can be checkpointed.
"""

from __future__ import annotations

from uncertlr._arrays import namespace
from uncertlr.modulation.controllers import (
    PlateauState,
    Product,
    ProductState,
    UncertaintyPlateau,
    UncertaintyWarmup,
    WarmupState,
)
from uncertlr.modulation.layers import LayerCapState, LayerScaleCap
from uncertlr.modulation.noise import GradientNoise, NoiseState
from uncertlr.modulation.rules import (
    G1,
    G2,
    P1,
    P2,
    P3,
    GlobalState,
    GradSigmaRatio,
    ParamSignal,
    ParamState,
    Ratio,
    Rule,
    SigmaRatio,
    VarianceRatio,
    ZScore,
)
from uncertlr.modulation.weighting import confidence_weights

__all__ = [
    "G1",
    "G2",
    "P1",
    "P2",
    "P3",
    "GlobalState",
    "GradSigmaRatio",
    "GradientNoise",
    "LayerCapState",
    "LayerScaleCap",
    "NoiseState",
    "ParamSignal",
    "ParamState",
    "PlateauState",
    "Product",
    "ProductState",
    "Ratio",
    "Rule",
    "SigmaRatio",
    "UncertaintyPlateau",
    "UncertaintyWarmup",
    "VarianceRatio",
    "WarmupState",
    "ZScore",
    "confidence_weights",
    "namespace",
]
