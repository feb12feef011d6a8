"""Controllers with memory: global rules whose factor persists, unlike G1/G2 (which return to ~1).

G1 and G2 compare the signal with its own running mean, so at steady state they give a
factor near 1: they can shape single steps but can neither replace a schedule nor hold a
run back that is going wrong. The controllers here keep a *persistent* factor that
multiplies the base learning rate until the controller itself changes it:

* :class:`UncertaintyPlateau` — decays the factor by ``factor`` when the smoothed training
  signal (batch entropy, predictive variance...) has made no new minimum for ``patience``
  steps; no validation set. It is *armed* only once the smoothed signal has fallen by
  ``1 - arm`` of its initial level, so a run at a small LR, whose signal sits at its
  initial level for a while, is not mistaken for a plateau.
* :class:`UncertaintyWarmup` — the factor follows the smoothed signal relative to its
  *initial* level: ``start`` at the initial level, 1 once the signal has fallen to
  ``release`` × initial (or after ``horizon`` steps at the latest), and with
  ``anneal > 0`` smaller again as the signal keeps falling.
* :class:`Product` — several global rules at once, the factors multiplied (e.g. a warm-up
  and a plateau).

A divergence guard (cut the factor on a z-score spike of the loss, recover slowly) was built and
measured too (``BENCHMARKS.md``, issue 12) and deleted: on digits its false alarms at small LRs cut
runs that were training fine (0.19 instead of 0.88 accuracy at 1e-4 on one seed), and where it
helped at large LRs the plateau helped more.

Every controller is a frozen dataclass with pure ``init``/``update`` on the array API (numpy,
torch, jax; jit-safe, no branching on values), like the rules in :mod:`uncertlr.modulation.rules`,
and plugs into :class:`uncertlr.torch.Modulator` and ``uncertlr.jax.scale_by_uncertainty``.
Patience, cooldown, warm-up and horizon are counted in optimizer steps (one epoch =
``ceil(N / batch_size)`` steps). The signal of :class:`UncertaintyPlateau` and
:class:`UncertaintyWarmup` should be positive (entropy, variance, a loss above its minimum).

Example:
    >>> from uncertlr.modulation import UncertaintyPlateau
    >>> rule = UncertaintyPlateau(patience=2, cooldown=0, factor=0.5, decay=0.0)
    >>> state = rule.init()
    >>> for u in [2.0, 1.0, 0.5, 0.5, 0.5]:   # falls (arms), then stalls for 2 steps
    ...     s, state = rule.update(u, state)
    >>> float(s), int(state.cuts)
    (0.5, 1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np

from uncertlr._arrays import clip, clip_min, float_dtype, full, namespace
from uncertlr._arrays import quiet as _quiet

Array = Any

__all__ = [
    "PlateauState",
    "Product",
    "ProductState",
    "UncertaintyPlateau",
    "UncertaintyWarmup",
    "WarmupState",
]


def _num(owner: str, field: str, value: Any, lo: float, hi: float, *, lo_open: bool, hi_open: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{owner}: {field} must be a finite number; got {value!r}")
    if (value <= lo if lo_open else value < lo) or (value >= hi if hi_open else value > hi):
        a, b = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(f"{owner}: {field} must be in {a}{lo}, {hi}{b}; got {value!r}")


def _steps(owner: str, field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{owner}: {field} must be an integer >= 0 (optimizer steps); got {value!r}")


def _zeros(like: Array | None, n: int) -> tuple[Any, Any, list[Array]]:
    if like is None:
        like = np.zeros((), np.float32)
    xp = namespace(like)
    dt = float_dtype(xp, like)
    return xp, dt, [full(xp, like, 0.0, dt) for _ in range(n)]


def _signal(owner: Any, signal: Any, ref: Array) -> tuple[Any, Array, Array]:
    xp = namespace(ref)
    u = xp.asarray(signal, dtype=ref.dtype)
    if u.ndim != 0:
        raise ValueError(f"{type(owner).__name__}: the signal must be a scalar; got shape {tuple(u.shape)}")
    finite = xp.isfinite(u * u)  # a square that overflows could not enter the running moments
    return xp, xp.where(finite, u, 0.0), finite


def _smooth(xp: Any, decay: float, ema: Array, count: Array, u0: Array, finite: Array) -> tuple[Array, ...]:
    """New (ema, count) folding in a finite ``u0``, and the bias-corrected smoothed signal."""
    one = xp.where(finite, 1.0, 0.0)
    count1 = count + one
    ema1 = xp.where(finite, decay * ema + (1.0 - decay) * u0, ema)
    tiny = xp.finfo(ema.dtype).tiny
    corr = clip_min(xp, 1.0 - xp.pow(decay, count1), tiny)
    return ema1, count1, ema1 / corr


def _cast(xp: Any, dt: Any, state: NamedTuple) -> Any:
    return type(state)(*(xp.asarray(v, dtype=dt) for v in state))


# --------------------------------------------------------------------------- plateau


class PlateauState(NamedTuple):
    """State of :class:`UncertaintyPlateau` (0-d float arrays).

    Attributes:
        step: updates so far; ``count``: finite signals folded into ``ema``.
        ema: EMA of the signal (not bias-corrected); ``initial``: the smoothed signal at the
            end of the warm-up (the level the arming compares with).
        best: lowest smoothed signal so far; ``wait``: steps since it was last lowered.
        cool: cooldown steps left; ``armed``: 1 once the smoothed signal fell below ``arm × initial``.
        scale: the factor; ``cuts``: decays so far; ``nonfinite``: non-finite signals (held).
    """

    step: Array
    count: Array
    ema: Array
    initial: Array
    best: Array
    wait: Array
    cool: Array
    armed: Array
    scale: Array
    cuts: Array
    nonfinite: Array


@dataclass(frozen=True)
class UncertaintyPlateau:
    """Persistent decay of the LR factor when the smoothed training uncertainty stops falling.

    ReduceLROnPlateau without a validation set: the monitored quantity is the step's own
    signal, smoothed by a bias-corrected EMA. A new minimum (lower than ``best`` by more
    than ``threshold × |best|``) resets the patience; ``patience`` steps without one multiply
    the factor by ``factor`` (down to ``s_min``), then ``cooldown`` steps pass before the next
    decay can happen. Nothing is cut before the rule is *armed*: the smoothed signal must
    first fall below ``initial - (1 - arm) |initial|`` (``arm = 0.9``: 10% below where it
    started), so the flat start of a run at a small LR is not taken for a plateau.

    Attributes:
        factor: multiplier per decay, in ``(0, 1)``.
        patience: steps without a new minimum before a decay.
        cooldown: steps after a decay during which no decay happens.
        threshold: relative improvement that counts as a new minimum (0 = any).
        arm: the smoothed signal must fall to ``arm`` × its initial level first (1 = armed at once).
        decay: EMA decay of the smoothed signal.
        warmup: steps before arming can start; ``initial`` is the smoothed signal at the end of them.
        s_min: floor on the factor.

    Example:
        >>> rule = UncertaintyPlateau(patience=1, cooldown=0, arm=0.9)
        >>> state = rule.init()
        >>> for u in [1.0] * 6:            # flat from the start: never armed, never cut
        ...     s, state = rule.update(u, state)
        >>> float(s), int(state.armed)
        (1.0, 0)
    """

    factor: float = 0.5
    patience: int = 100
    cooldown: int = 100
    threshold: float = 0.0
    arm: float = 0.9
    decay: float = 0.9
    warmup: int = 0
    s_min: float = 1e-3

    per_parameter: ClassVar[bool] = False

    def __post_init__(self) -> None:
        n = type(self).__name__
        _num(n, "factor", self.factor, 0.0, 1.0, lo_open=True, hi_open=True)
        _num(n, "threshold", self.threshold, 0.0, 1.0, lo_open=False, hi_open=True)
        _num(n, "arm", self.arm, 0.0, 1.0, lo_open=True, hi_open=False)
        _num(n, "decay", self.decay, 0.0, 1.0, lo_open=False, hi_open=True)
        _num(n, "s_min", self.s_min, 0.0, 1.0, lo_open=True, hi_open=False)
        for f in ("patience", "cooldown", "warmup"):
            _steps(n, f, getattr(self, f))

    def init(self, like: Array | None = None) -> PlateauState:
        """Initial state (0-d arrays of ``like``'s backend and device; numpy float32 if ``None``)."""
        xp, dt, z = _zeros(like, 11)
        big = z[0] + xp.finfo(dt).max
        return PlateauState(z[0], z[1], z[2], z[3], big, z[4], z[5], z[6], z[7] + 1.0, z[8], z[9])

    def update(self, signal: Any, state: PlateauState) -> tuple[Array, PlateauState]:
        """The factor for this step's scalar ``signal`` and the new state."""
        xp, u0, finite = _signal(self, signal, state.scale)
        with _quiet(xp):
            ema, count, m = _smooth(xp, self.decay, state.ema, state.count, u0, finite)
            settling = state.step < self.warmup
            initial = xp.where(finite & (settling | (state.count == 0)), m, state.initial)
            active = finite & ~settling
            armed = (state.armed > 0) | (active & (m < initial - (1.0 - self.arm) * xp.abs(initial)))
            better = finite & (m < state.best - self.threshold * xp.abs(state.best))
            best = xp.where(better, m, state.best)
            wait = xp.where(finite, xp.where(better, 0.0, state.wait + 1.0), state.wait)
            cool = xp.where(finite, clip_min(xp, state.cool - 1.0, 0.0), state.cool)
            cut = active & armed & (wait >= self.patience) & (cool <= 0.0)
            scale = xp.where(cut, clip_min(xp, state.scale * self.factor, self.s_min), state.scale)
            new = PlateauState(
                step=state.step + 1.0,
                count=count,
                ema=ema,
                initial=initial,
                best=best,
                wait=xp.where(cut, 0.0, wait),
                cool=xp.where(cut, float(self.cooldown), cool),
                armed=xp.where(armed, 1.0, 0.0),
                scale=scale,
                cuts=state.cuts + xp.where(cut, 1.0, 0.0),
                nonfinite=state.nonfinite + xp.where(finite, 0.0, 1.0),
            )
            new = _cast(xp, state.scale.dtype, new)
            return new.scale, new


# --------------------------------------------------------------------------- warm-up / annealing


class WarmupState(NamedTuple):
    """State of :class:`UncertaintyWarmup` (0-d float arrays): ``step``, ``count``, ``ema`` (the
    EMA of the signal), ``initial`` (its smoothed level at the first signal), ``scale``, ``nonfinite``."""

    step: Array
    count: Array
    ema: Array
    initial: Array
    scale: Array
    nonfinite: Array


@dataclass(frozen=True)
class UncertaintyWarmup:
    """A warm-up (and optional annealing) driven by the signal relative to its *initial* level.

    With ``r = ū / u_0`` (``ū`` the smoothed signal, ``u_0`` its first value):

    * warm-up: ``s = start^t`` with ``t = clip((r - release) / (1 - release), 0, 1)`` — the factor
      is ``start`` while the signal is at its initial level and 1 once it has fallen to
      ``release`` × that level; it falls back if the signal rises again. After ``horizon``
      steps the warm-up part is 1 whatever the signal (``horizon = 0``: no limit), so a run
      whose uncertainty falls slowly (a small LR) is not held back for long.
    * annealing: below ``release`` the factor is multiplied by ``(r / release)^anneal``
      (``anneal > 0``: smaller steps as the model grows certain; 0 = off).

    The factor is clipped to ``[s_min, 1]``.

    Attributes:
        start: factor at the initial level, in ``(0, 1]``.
        release: fraction of the initial level at which the warm-up ends, in ``(0, 1)``.
        horizon: steps after which the warm-up part is 1 (0 = never).
        anneal: exponent of the annealing part (>= 0).
        decay: EMA decay of the smoothed signal.
        s_min: floor on the factor.

    Example:
        >>> rule = UncertaintyWarmup(start=0.1, release=0.5, decay=0.0)
        >>> state, out = rule.init(), []
        >>> for u in [2.0, 1.5, 1.0, 3.0]:      # falls to half its start, then jumps back
        ...     s, state = rule.update(u, state)
        ...     out.append(round(float(s), 3))
        >>> out
        [0.1, 0.316, 1.0, 0.1]
    """

    start: float = 0.1
    release: float = 0.5
    horizon: int = 0
    anneal: float = 0.0
    decay: float = 0.9
    s_min: float = 1e-3

    per_parameter: ClassVar[bool] = False

    def __post_init__(self) -> None:
        n = type(self).__name__
        _num(n, "start", self.start, 0.0, 1.0, lo_open=True, hi_open=False)
        _num(n, "release", self.release, 0.0, 1.0, lo_open=True, hi_open=True)
        _num(n, "anneal", self.anneal, 0.0, math.inf, lo_open=False, hi_open=True)
        _num(n, "decay", self.decay, 0.0, 1.0, lo_open=False, hi_open=True)
        _num(n, "s_min", self.s_min, 0.0, 1.0, lo_open=True, hi_open=False)
        _steps(n, "horizon", self.horizon)

    def init(self, like: Array | None = None) -> WarmupState:
        """Initial state (0-d arrays of ``like``'s backend and device; numpy float32 if ``None``)."""
        _, _, z = _zeros(like, 6)
        return WarmupState(z[0], z[1], z[2], z[3], z[4] + self.start, z[5])

    def update(self, signal: Any, state: WarmupState) -> tuple[Array, WarmupState]:
        """The factor for this step's scalar ``signal`` and the new state."""
        xp, u0, finite = _signal(self, signal, state.scale)
        with _quiet(xp):
            ema, count, m = _smooth(xp, self.decay, state.ema, state.count, u0, finite)
            initial = xp.where(finite & (state.count == 0), m, state.initial)
            tiny = xp.finfo(state.scale.dtype).tiny
            r = m / xp.where(xp.abs(initial) > tiny, initial, 1.0)
            t = clip(xp, (r - self.release) / (1.0 - self.release), 0.0, 1.0)
            if self.horizon > 0:
                t = xp.where(state.step >= self.horizon, 0.0, t)
            warm = xp.exp(t * math.log(self.start))
            ratio = clip_min(xp, r / self.release, tiny)
            anneal = xp.where(r < self.release, xp.exp(self.anneal * xp.log(ratio)), 1.0)
            s = clip(xp, warm * anneal, self.s_min, 1.0)
            new = WarmupState(
                step=state.step + 1.0,
                count=count,
                ema=ema,
                initial=initial,
                scale=xp.where(finite, s, state.scale),
                nonfinite=state.nonfinite + xp.where(finite, 0.0, 1.0),
            )
            new = _cast(xp, state.scale.dtype, new)
            return new.scale, new


# --------------------------------------------------------------------------- composition


class ProductState(NamedTuple):
    """State of :class:`Product`: ``scale`` (the last product) and ``states`` (one per rule, in order)."""

    scale: Array
    states: tuple[Any, ...]


@dataclass(frozen=True)
class Product:
    """Several global rules on the same signal; the factor is the product of theirs.

    Example:
        >>> from uncertlr.modulation import UncertaintyPlateau, UncertaintyWarmup
        >>> rule = Product((UncertaintyWarmup(start=0.5, decay=0.0), UncertaintyPlateau()))
        >>> s, state = rule.update(2.0, rule.init())
        >>> float(s), len(state.states)
        (0.5, 2)
    """

    rules: tuple[Any, ...]

    per_parameter: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not isinstance(self.rules, tuple) or not self.rules:
            raise TypeError(f"Product: rules must be a non-empty tuple of global rules; got {self.rules!r}")
        for r in self.rules:
            if not (callable(getattr(r, "init", None)) and callable(getattr(r, "update", None))):
                raise TypeError(f"Product: {type(r).__name__} is not a rule (init/update)")
            if getattr(r, "per_parameter", False):
                raise ValueError(
                    f"Product: {type(r).__name__} is a per-parameter rule; only global rules combine"
                )

    def init(self, like: Array | None = None) -> ProductState:
        """The rules' initial states and the product of their initial factors."""
        states = tuple(r.init(like) for r in self.rules)
        scale = states[0].scale
        for st in states[1:]:
            scale = scale * st.scale
        return ProductState(scale, states)

    def update(self, signal: Any, state: ProductState) -> tuple[Array, ProductState]:
        """The product of the rules' factors for this step's ``signal`` and the new states."""
        if not isinstance(state, ProductState) or len(state.states) != len(self.rules):
            raise ValueError(f"Product: state must be the ProductState of {len(self.rules)} rules")
        out, scale = [], None
        for r, st in zip(self.rules, state.states):
            s, st = r.update(signal, st)
            out.append(st)
            scale = s if scale is None else scale * s
        return scale, ProductState(scale, tuple(out))
