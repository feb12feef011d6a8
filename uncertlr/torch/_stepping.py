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

import types
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from uncertlr.modulation import Rule
from uncertlr.torch._state import is_numpy, state_from_dict, state_to_dict

__all__ = ["GlobalMode", "attached_modulator", "install_step_guard", "remove_step_guard"]

_GUARD_ATTR = "_uncertlr_step_guard"


def _group_params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p for g in optimizer.param_groups for p in g["params"]]


class GlobalMode:
    """One factor per step from the signal; applied through the learning rates or, in a closure step, the update."""

    def __init__(self, rule: Rule, params: list[Tensor]):
        self.rule = rule
        # The scalar state lives in numpy on every device: the same rule code, a few times less per-op
        # overhead than 0-d torch tensors, and on a GPU no launches at all. The factor sets the learning
        # rates (Python floats), so the signal is read back once a step either way; a state kept on the
        # device cost that read plus ~20 tiny kernels a step.
        self.state = rule.init(np.zeros((), np.float32))
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
        self._prev = (self.state, self.last_scale)  # states are immutable: a raised step puts them back
        signal = float(u)  # the step's one host read
        s, self.state = self.rule.update(np.float32(signal), self.state)
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
            self.state, self.last_scale = self._prev
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

    def scale(self) -> Tensor | None:
        s = self.last_scale
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
