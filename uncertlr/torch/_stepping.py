"""The Modulator's global mode and the stepping contract it keeps with any ``torch.optim`` optimizer.

* :class:`GlobalMode` — one factor per step, applied through every param group's learning rate
  (a plain ``optimizer.step()``) or, when the step runs a closure, to the update itself
  (``θ = θ_before + s (θ_after - θ_before)``): the signal is then only known once the closure
  has run, and some optimizers (LBFGS) read the learning rate before they call it.
* :func:`install_step_guard` / :func:`remove_step_guard` — an instance-level wrapper around
  ``optimizer.step`` that calls back when the step raises, so the base learning rates are put
  back at once (a checkpoint saved in an ``except`` block never stores a modulated LR). It is
  a bound method, like the wrapper torch's LR schedulers install, so schedulers created before
  or after it keep working.
* :func:`attached_modulator` — the modulator already hooked on an optimizer, if any.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from uncertlr.modulation import GlobalState, Ratio, Rule, ZScore
from uncertlr.torch._state import is_numpy, state_from_dict, state_to_dict

__all__ = ["GlobalMode", "attached_modulator", "install_step_guard", "remove_step_guard"]

_GUARD_ATTR = "_uncertlr_step_guard"


def _group_params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p for g in optimizer.param_groups for p in g["params"]]


_TINY = float(np.finfo(np.float64).tiny)


def _pow(base: float, exponent: float) -> float:
    """``numpy.power`` on floats: overflow gives inf (``math.pow`` raises), a domain error NaN."""
    try:
        return math.pow(base, exponent)
    except OverflowError:
        return math.inf
    except ValueError:
        return math.nan


def _at_least(x: float, lo: float) -> float:
    """``numpy.maximum(x, lo)``: NaN propagates."""
    return x if x != x or x >= lo else lo  # x != x: x is NaN


def _at_most(x: float, hi: float) -> float:
    """``numpy.minimum(x, hi)``: NaN propagates."""
    return x if x != x or x <= hi else hi


def host_update(rule: Ratio | ZScore, signal: float, state: GlobalState) -> tuple[float, GlobalState]:
    """:class:`~uncertlr.modulation.Ratio` / :class:`~uncertlr.modulation.ZScore` ``.update`` on Python floats.

    The same operations, in the same order, as the rules' array code (``_global_step``, the rule's
    formula, ``_global_finish``) run on 0-d float64 numpy arrays; ``tests/torch/test_modulator_stepping.py``
    holds the two together on random signal sequences (non-finite and huge values included). It exists
    for speed: about 25 numpy calls on 0-d arrays cost 50 µs a step, and 180 µs right after a training
    step has pushed numpy's code out of the caches (measured on the 784-400-400-10 MLP); this costs a
    few µs. ``state``'s fields are floats.
    """
    if not math.isfinite(signal * signal):  # held: the previous factor, the moments untouched, counted
        return state.scale, state._replace(step=state.step + 1.0, nonfinite=state.nonfinite + 1.0)
    u0 = signal
    corr = _at_least(1.0 - _pow(rule.decay, state.count), _TINY)
    mean = state.mean / corr
    if type(rule) is Ratio:
        ratio = _at_least(u0 / _at_least(mean, _TINY), _TINY)
        s = _at_most(_at_least(_pow(ratio, rule.kappa), rule.s_min), rule.s_max)
    else:
        var = _at_least(state.sq / corr - mean * mean, 0.0)
        z = (u0 - mean) / math.sqrt(var + rule.eps * rule.eps)
        s = math.exp(math.tanh(rule.kappa * z) * math.log(rule.s_max))
    s = s if state.step >= rule.warmup and state.count > 0 else 1.0
    d = rule.decay
    new = GlobalState(
        step=state.step + 1.0,
        count=state.count + 1.0,
        mean=d * state.mean + (1.0 - d) * u0,
        sq=d * state.sq + (1.0 - d) * u0 * u0,
        scale=s,
        nonfinite=state.nonfinite,
    )
    return s, new


def _floats(state: GlobalState) -> GlobalState:
    return GlobalState(*(float(v) for v in state))


def _arrays(state: GlobalState) -> GlobalState:
    return GlobalState(*(np.asarray(v, dtype=np.float64) for v in state))


class GlobalMode:
    """One factor per step from the signal; applied through the learning rates or, in a closure step, the update."""

    def __init__(self, rule: Rule, params: list[Tensor]):
        self.rule = rule
        # The scalar state lives on the host on every device: on a GPU a state of 0-d device tensors cost
        # ~20 tiny kernels a step and saved no host read (the factor sets the learning rates, Python floats).
        # It is float64: free on the host. The built-in rules (exactly Ratio and ZScore: a subclass may
        # change the math) run on Python floats (``host_update``); any other rule on 0-d numpy arrays.
        self._host = type(rule) in (Ratio, ZScore)
        self._state: Any = rule.init(np.zeros((), np.float64))
        if self._host:
            self._state = _floats(self._state)
        self.last_scale: Any = None
        self._saved_lr: list[Any] | None = None
        self._before: list[Tensor] | None = None
        self._factor = 1.0
        self._prev: tuple[Any, Any] | None = None

    def before_step(
        self, optimizer: torch.optim.Optimizer, u: Tensor | None, *, in_closure: bool = False
    ) -> dict[str, float]:
        if u is None:
            raise RuntimeError(
                "Modulator: call observe(signal) before every optimizer.step(), or inside the step's "
                "closure (a global rule needs this step's signal)"
            )
        self._prev = (self._state, self.last_scale)  # states are immutable: a raised step puts them back
        signal = float(u)  # the step's one host read
        if self._host:
            s, self._state = host_update(self.rule, signal, self._state)  # type: ignore[arg-type]
        else:
            s, self._state = self.rule.update(np.float64(signal), self._state)
        factor = float(s)
        self.last_scale = s
        base = float(optimizer.param_groups[0]["lr"])
        if in_closure:  # scale the update after the step (the optimizer may have read lr already)
            with torch.no_grad():
                self._before = [p.detach().clone() for p in _group_params(optimizer)]
            self._factor = factor
        else:
            self._saved_lr = [g["lr"] for g in optimizer.param_groups]
            for g in optimizer.param_groups:
                g["lr"] = g["lr"] * factor
        return {"signal": signal, "scale": factor, "lr": base * factor}

    def restore(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Put the base learning rates back (after the step, or after a step that raised)."""
        if self._saved_lr is not None and optimizer is not None:
            for g, lr in zip(optimizer.param_groups, self._saved_lr):
                g["lr"] = lr
        self._saved_lr = None
        self._before = None

    def abort(self, optimizer: torch.optim.Optimizer | None) -> None:
        """The step raised: base learning rates back, and the rule state as before the step."""
        self.restore(optimizer)
        if self._prev is not None:
            self._state, self.last_scale = self._prev
            self._prev = None

    def after_step(self, optimizer: torch.optim.Optimizer, record: bool = True) -> dict[str, float] | None:
        before, self._before = self._before, None
        if before is not None:
            with torch.no_grad():
                params = [p.detach() for p in _group_params(optimizer)]
                torch._foreach_lerp_(before, params, self._factor)
                torch._foreach_copy_(params, before)
        self.restore(optimizer)
        self._prev = None
        return None

    @property
    def state(self) -> Any:
        """The rule's state; for the built-in rules a :class:`~uncertlr.modulation.GlobalState` of 0-d float64
        numpy arrays (made from the floats they run on), as any other rule's."""
        return _arrays(self._state) if self._host else self._state

    @state.setter
    def state(self, value: Any) -> None:
        self._state = _floats(value) if self._host else value

    def scale(self) -> Tensor | None:
        s = self.last_scale
        if isinstance(s, float):
            return torch.tensor(s, dtype=torch.float64)
        return torch.as_tensor(np.asarray(s)) if is_numpy(s) else s

    def state_dict(self) -> tuple[Any, Any]:
        return state_to_dict(self.state), None

    def load(self, rule_state: Any, noise_state: Any) -> None:
        self.state = state_from_dict(self.state, rule_state, "rule_state")


# --------------------------------------------------------------------------- the step guard


def install_step_guard(optimizer: torch.optim.Optimizer, on_raise: Callable[[], None]) -> Any:
    """Wrap ``optimizer.step`` (an instance attribute) so that ``on_raise()`` runs when a step raises.

    Returns a handle for :func:`remove_step_guard`.
    """
    prev = optimizer.step
    had_instance_step = "step" in vars(optimizer)
    box = {"active": True}

    def guarded_step(opt: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        if not box["active"]:
            return prev(*args, **kwargs)
        try:
            return prev(*args, **kwargs)
        except BaseException:
            on_raise()
            raise

    if hasattr(prev, "_wrapped_by_lr_sched"):  # keep an LR scheduler from warning that step was replaced
        guarded_step._wrapped_by_lr_sched = True  # type: ignore[attr-defined]
    setattr(guarded_step, _GUARD_ATTR, True)
    bound = types.MethodType(guarded_step, optimizer)
    optimizer.step = bound  # type: ignore[method-assign]
    return (bound, prev, had_instance_step, box)


def remove_step_guard(optimizer: torch.optim.Optimizer, handle: Any) -> None:
    """Undo :func:`install_step_guard`; if something wrapped the guard since, it becomes a pass-through."""
    bound, prev, had_instance_step, box = handle
    box["active"] = False
    if vars(optimizer).get("step") is bound:
        if had_instance_step:
            optimizer.step = prev  # type: ignore[method-assign]
        else:
            del optimizer.step


def attached_modulator(optimizer: torch.optim.Optimizer, cls: type) -> Any:
    """The ``cls`` instance whose step hooks are registered on ``optimizer`` (or None)."""
    hooks = getattr(optimizer, "_optimizer_step_pre_hooks", {})
    for h in hooks.values():
        owner = getattr(h, "__self__", None)
        if isinstance(owner, cls):
            return owner
    return None
