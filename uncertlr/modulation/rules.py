"""The LR modulator's rules (G1, G2, P1-P3) as pure ``init``/``update`` pairs; see :mod:`uncertlr.modulation`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import numpy as np

from uncertlr._arrays import clip, clip_min, float_dtype, full, namespace
from uncertlr._arrays import quiet as _quiet

Array = Any

__all__ = [
    "G1",
    "G2",
    "P1",
    "P2",
    "P3",
    "GlobalState",
    "GradSigmaRatio",
    "ParamSignal",
    "ParamState",
    "Ratio",
    "Rule",
    "SigmaRatio",
    "VarianceRatio",
    "ZScore",
]


def _check_number(owner: str, field: str, value: Any) -> None:
    """A numeric field must be a Python int or float (a bool, a string, None or an array is refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: {field} must be a number (int or float); got {value!r}")


def _check_rule_fields(rule: Any, *, require_unit: bool = True) -> None:
    name = type(rule).__name__
    for field in ("kappa", "decay", "s_min", "s_max", "eps"):
        if hasattr(rule, field):
            _check_number(name, field, getattr(rule, field))
    if not (isinstance(rule.kappa, (int, float)) and math.isfinite(rule.kappa)):
        raise ValueError(f"{name}: kappa must be a finite number; got {rule.kappa!r}")
    if not 0.0 <= rule.decay < 1.0:
        raise ValueError(f"{name}: decay must be in [0, 1); got {rule.decay!r}")
    if isinstance(rule.warmup, bool) or not isinstance(rule.warmup, int) or rule.warmup < 0:
        raise ValueError(f"{name}: warmup must be an integer >= 0; got {rule.warmup!r}")
    if hasattr(rule, "s_min"):
        lo, hi = rule.s_min, rule.s_max
        if not (0.0 < lo <= 1.0 <= hi < math.inf):
            raise ValueError(
                f"{name}: bounds must satisfy 0 < s_min <= 1 <= s_max < inf; got [{lo!r}, {hi!r}]"
            )
    elif not (1.0 <= rule.s_max < math.inf):
        raise ValueError(f"{name}: s_max must be finite and >= 1; got {rule.s_max!r}")


@runtime_checkable
class Rule(Protocol):
    """What the adapters need from a rule (see the module docstring)."""

    def init(self, like: Array = ...) -> Any: ...

    def update(self, signal: Any, state: Any) -> tuple[Array, Any]: ...


# --------------------------------------------------------------------------- global rules


class GlobalState(NamedTuple):
    """State of a global rule; every field is a 0-d float array (counts too, so one dtype suffices).

    Attributes:
        step: updates so far (warm-up counts these).
        count: finite signals folded into the running moments.
        mean: EMA of the signal (not bias-corrected).
        sq: EMA of the squared signal (not bias-corrected).
        scale: the last factor returned.
        nonfinite: non-finite signals seen (each held the previous factor).
    """

    step: Array
    count: Array
    mean: Array
    sq: Array
    scale: Array
    nonfinite: Array


def _global_init(like: Array | None) -> GlobalState:
    if like is None:
        like = np.zeros((), np.float32)
    xp = namespace(like)
    dt = float_dtype(xp, like)
    zero = full(xp, like, 0.0, dt)
    return GlobalState(zero, zero, zero, zero, full(xp, like, 1.0, dt), zero)


def _global_step(
    rule: Any, signal: Any, state: GlobalState
) -> tuple[Any, Array, Array, Array, Array, Array, Array]:
    """Shared bookkeeping: ``(xp, u, finite, mean_before, var_before, active, new moments...)``."""
    xp = namespace(state.scale)
    u = xp.asarray(signal, dtype=state.scale.dtype)
    if u.ndim != 0:
        raise ValueError(f"{type(rule).__name__}: the signal must be a scalar; got shape {tuple(u.shape)}")
    with _quiet(xp):
        # a signal whose square overflows the state's dtype (|u| > ~1.8e19 in float32) cannot enter
        # the second moment: it is held and counted like NaN/inf instead of poisoning the statistics
        finite = xp.isfinite(u * u)
        u0 = xp.where(finite, u, 0.0)
        tiny = xp.finfo(state.scale.dtype).tiny
        corr = clip_min(xp, 1.0 - xp.pow(rule.decay, state.count), tiny)
        mean = state.mean / corr
        var = clip_min(xp, state.sq / corr - mean * mean, 0.0)
    active = (state.step >= rule.warmup) & (state.count > 0)
    return xp, u0, finite, mean, var, active, tiny


def _global_finish(
    rule: Any, xp: Any, s: Array, u0: Array, finite: Array, active: Array, state: GlobalState
) -> tuple[Array, GlobalState]:
    dt = state.scale.dtype
    s = xp.asarray(xp.where(finite, xp.where(active, s, 1.0), state.scale), dtype=dt)
    d = rule.decay
    one = xp.asarray(xp.where(finite, 1.0, 0.0), dtype=dt)
    new = GlobalState(
        step=state.step + 1.0,
        count=state.count + one,
        mean=xp.asarray(xp.where(finite, d * state.mean + (1.0 - d) * u0, state.mean), dtype=dt),
        sq=xp.asarray(xp.where(finite, d * state.sq + (1.0 - d) * u0 * u0, state.sq), dtype=dt),
        scale=s,
        nonfinite=state.nonfinite + (1.0 - one),
    )
    return s, new


@dataclass(frozen=True)
class Ratio:
    """G1: ``s = clip((u / ū)^κ, s_min, s_max)``, ``ū`` the bias-corrected EMA of the past signals.

    With ``κ < 0`` a batch more uncertain than usual (``u > ū``) gets a smaller step. The
    signal must be positive (entropy, mutual information, a loss); values ``<= 0`` count
    as "far below the mean" (``s = s_max`` for ``κ < 0``). Use :class:`ZScore` for signals
    of either sign.

    Attributes:
        kappa: exponent κ.
        s_min, s_max: bounds on the factor (``s_min <= 1 <= s_max``).
        decay: EMA decay of ``ū``.
        warmup: updates with ``s = 1`` while ``ū`` settles.

    Example:
        >>> import torch
        >>> rule = Ratio(kappa=-0.5, warmup=1)
        >>> state = rule.init(torch.zeros(()))
        >>> for u in [1.0, 4.0]:
        ...     s, state = rule.update(torch.tensor(u), state)
        >>> round(float(s), 4)
        0.5
    """

    kappa: float = -0.5
    s_min: float = 0.5
    s_max: float = 2.0
    decay: float = 0.99
    warmup: int = 20

    per_parameter: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_rule_fields(self)

    def init(self, like: Array | None = None) -> GlobalState:
        """Initial state (0-d arrays of ``like``'s backend and device; numpy float32 if ``None``)."""
        return _global_init(like)

    def update(self, signal: Any, state: GlobalState) -> tuple[Array, GlobalState]:
        """The factor for this step's scalar ``signal`` and the new state."""
        xp, u0, finite, mean, _, active, tiny = _global_step(self, signal, state)
        with _quiet(xp):
            ratio = clip_min(xp, u0 / clip_min(xp, mean, tiny), tiny)
            s = clip(xp, xp.pow(ratio, self.kappa), self.s_min, self.s_max)
            return _global_finish(self, xp, s, u0, finite, active, state)


@dataclass(frozen=True)
class ZScore:
    """G2: ``s = s_max^tanh(κ z)``, ``z = (u - ū) / sd(u)`` from running (bias-corrected) moments.

    The factor lies in ``[1 / s_max, s_max]``; with ``κ < 0`` a signal above its running
    mean gives ``s < 1``. Works for signals of either sign.

    Attributes:
        kappa: slope κ of the response to ``z``.
        s_max: largest factor (``>= 1``); the smallest is ``1 / s_max``.
        decay: EMA decay of the moments.
        warmup: updates with ``s = 1``.
        eps: floor on the standard deviation (in the signal's units).

    Example:
        >>> rule = ZScore(kappa=-1.0, warmup=3)
        >>> state = rule.init()
        >>> for u in [1.0, 2.0, 1.0, 2.0, 9.0]:
        ...     s, state = rule.update(u, state)
        >>> 0.5 <= float(s) < 0.6
        True
    """

    kappa: float = -1.0
    s_max: float = 2.0
    decay: float = 0.99
    warmup: int = 20
    eps: float = 1e-8

    per_parameter: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_rule_fields(self)
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise ValueError(f"ZScore: eps must be positive and finite; got {self.eps!r}")

    def init(self, like: Array | None = None) -> GlobalState:
        """Initial state (0-d arrays of ``like``'s backend and device; numpy float32 if ``None``)."""
        return _global_init(like)

    def update(self, signal: Any, state: GlobalState) -> tuple[Array, GlobalState]:
        """The factor for this step's scalar ``signal`` and the new state."""
        xp, u0, finite, mean, var, active, _ = _global_step(self, signal, state)
        with _quiet(xp):
            z = (u0 - mean) / xp.sqrt(var + self.eps * self.eps)
            s = xp.exp(xp.tanh(self.kappa * z) * math.log(self.s_max))
            return _global_finish(self, xp, s, u0, finite, active, state)


# --------------------------------------------------------------------------- per-parameter rules


class ParamSignal(NamedTuple):
    """What a per-parameter rule sees for one tensor: its gradient and posterior std (same shape).

    ``grad`` may be ``None`` for rules that do not read it (P1, P3).
    """

    grad: Array | None
    sigma: Array


class ParamState(NamedTuple):
    """State of a per-parameter rule for one tensor.

    Attributes:
        step: updates so far (0-d float).
        ema: EMA of the gradient, shaped like the tensor (P2; a 0-d zero for P1/P3).
        scale: the last factors, shaped like the tensor.
        nonfinite: updates whose signal had a non-finite element (0-d float).
    """

    step: Array
    ema: Array
    scale: Array
    nonfinite: Array


def _param_init(like: Array, *, with_ema: bool) -> ParamState:
    xp = namespace(like)
    dt = float_dtype(xp, like)
    zero = full(xp, like, 0.0, dt)
    return ParamState(
        zero, xp.zeros_like(like, dtype=dt) if with_ema else zero, xp.ones_like(like, dtype=dt), zero
    )


def _param_finish(rule: Any, xp: Any, raw: Array, state: ParamState, ema: Array) -> tuple[Array, ParamState]:
    """``raw >= 0`` elementwise -> bounded factors; a non-finite ``raw`` anywhere holds the old ones."""
    tiny = xp.finfo(state.scale.dtype).tiny
    ref = xp.mean(raw)
    ok = xp.isfinite(ref)
    active = state.step >= rule.warmup
    lo = xp.where(active, rule.s_min, 1.0)
    hi = xp.where(active, rule.s_max, 1.0)
    # (raw + tiny) / (ref + tiny): exactly 1 where every raw is 0 (e.g. before any gradient)
    s = xp.clip(xp.pow((raw + tiny) * (1.0 / (ref + tiny)), rule.kappa), lo, hi)
    if rule.renormalize:
        s = s / xp.mean(s)
    s = xp.where(ok, s, state.scale)
    new = ParamState(
        step=state.step + 1.0,
        ema=xp.where(ok, ema, state.ema) if ema is not state.ema else ema,
        scale=s,
        nonfinite=state.nonfinite + xp.where(ok, 0.0, 1.0),
    )
    return s, new


def _sigma(rule: Any, signal: Any) -> tuple[Any, Array]:
    if not isinstance(signal, ParamSignal):
        raise TypeError(
            f"{type(rule).__name__} is a per-parameter rule: pass ParamSignal(grad, sigma); got {type(signal).__name__}"
        )
    return namespace(signal.sigma), signal.sigma


_PARAM_DOC_FIELDS = """
    Attributes:
        kappa: exponent κ (``< 0``: larger step where the measure is smaller than the tensor's mean).
        s_min, s_max: bounds on each factor (``s_min <= 1 <= s_max``).
        renormalize: divide the factors by their mean over the tensor after clipping, so the
            rule redistributes the step across weights without changing its overall size; the
            factors then have mean 1 and lie in ``[s_min / s_max, s_max / s_min]``.
        decay: EMA decay (of the gradient, for P2).
        warmup: updates with ``s = 1``.
"""


@dataclass(frozen=True)
class _PerParameterRule:
    """Fields and plumbing shared by the per-parameter rules; subclasses define ``_measure``."""

    kappa: float = -0.5
    s_min: float = 0.25
    s_max: float = 4.0
    renormalize: bool = True
    decay: float = 0.9
    warmup: int = 20

    per_parameter: ClassVar[bool] = True
    _uses_grad: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_rule_fields(self)

    def init(self, like: Array) -> ParamState:
        """Initial state for a tensor shaped like ``like``."""
        return _param_init(like, with_ema=self._uses_grad)

    def update(self, signal: ParamSignal, state: ParamState) -> tuple[Array, ParamState]:
        """Elementwise factors for one tensor and the new state."""
        xp, sigma = _sigma(self, signal)
        if self._uses_grad and signal.grad is None:
            raise ValueError(f"{type(self).__name__} needs the gradient: ParamSignal(grad=..., sigma=...)")
        with _quiet(xp):
            raw, ema = self._measure(signal, sigma, state)
            return _param_finish(self, xp, raw, state, ema)

    def _measure(self, signal: ParamSignal, sigma: Array, state: ParamState) -> tuple[Array, Array]:
        raise NotImplementedError


@dataclass(frozen=True)
class SigmaRatio(_PerParameterRule):
    __doc__ = (
        """P1: ``s_j = clip((σ_j / mean σ)^κ, s_min, s_max)`` — a scale-free UCB on the posterior std.

    Example:
        >>> import numpy as np
        >>> rule = SigmaRatio(kappa=-1.0, warmup=0, renormalize=False)
        >>> s, _ = rule.update(ParamSignal(None, np.array([1.0, 2.0, 4.0])), rule.init(np.zeros(3)))
        >>> s.round(3).tolist()
        [2.333, 1.167, 0.583]
"""
        + _PARAM_DOC_FIELDS
    )

    def _measure(self, signal: ParamSignal, sigma: Array, state: ParamState) -> tuple[Array, Array]:
        return sigma, state.ema


@dataclass(frozen=True)
class GradSigmaRatio(_PerParameterRule):
    __doc__ = (
        """P2: ``s_j = clip((|ĝ_j| σ_j / mean |ĝ| σ)^κ, s_min, s_max)``, ``ĝ`` an EMA of the gradient.

    ``|ĝ| σ`` is how much the loss is expected to move if weight ``j`` moves by its posterior
    std: with ``κ < 0`` the step shrinks where the gradient is large *and* the weight is
    uncertain. The ratio is scale-free, so ``ĝ`` needs no bias correction.

    Example:
        >>> import numpy as np
        >>> rule = GradSigmaRatio(kappa=-0.5, warmup=0, decay=0.0, renormalize=False)
        >>> sig = ParamSignal(grad=np.array([1.0, -1.0, 4.0]), sigma=np.array([1.0, 4.0, 1.0]))
        >>> s, _ = rule.update(sig, rule.init(np.zeros(3)))
        >>> s.round(3).tolist()
        [1.732, 0.866, 0.866]
"""
        + _PARAM_DOC_FIELDS
    )

    _uses_grad: ClassVar[bool] = True

    def _measure(self, signal: ParamSignal, sigma: Array, state: ParamState) -> tuple[Array, Array]:
        xp = namespace(sigma)
        ema = self.decay * state.ema + (1.0 - self.decay) * signal.grad
        return xp.abs(ema) * sigma, ema


@dataclass(frozen=True)
class VarianceRatio(_PerParameterRule):
    __doc__ = (
        """P3: ``s_j = clip((σ_j² / mean σ²)^κ, s_min, s_max)`` — the BGD/IVON direction for κ > 0.

    Bayesian gradient descent and IVON step the mean by ``σ² g``: wider posteriors move
    further. ``kappa=1`` (the default) reproduces that reweighting on top of any optimizer.

    Example:
        >>> import numpy as np
        >>> rule = VarianceRatio(warmup=0, renormalize=False)
        >>> s, _ = rule.update(ParamSignal(None, np.array([1.0, 1.0, 2.0, 2.0])), rule.init(np.zeros(4)))
        >>> s.round(2).tolist()
        [0.4, 0.4, 1.6, 1.6]
"""
        + _PARAM_DOC_FIELDS
    )

    kappa: float = 1.0

    def _measure(self, signal: ParamSignal, sigma: Array, state: ParamState) -> tuple[Array, Array]:
        return sigma * sigma, state.ema


#: Short names used in DESIGN.md, the demo (``bnn+g1``, ``bnn+p2``) and the benchmarks.
G1, G2, P1, P2, P3 = Ratio, ZScore, SigmaRatio, GradSigmaRatio, VarianceRatio
