"""The Modulator's variance mode: a per-layer factor on a BNN posterior's ``log σ`` step.

Before the optimizer steps, the posterior's flat ``log_scale`` is copied; afterwards the step
``Δ = after − before`` is measured per layer (one named random parameter: ``posterior.sizes``),
the per-layer rule (:class:`~uncertlr.modulation.LayerScaleCap`) turns the RMS of each layer's
``Δ`` into a factor, and ``log_scale ← before + s_l Δ``. The posterior means
(and any other parameter) keep their step. Used only by :class:`uncertlr.torch.Modulator`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from uncertlr.torch._state import rule_id, state_from_dict, state_to_dict
from uncertlr.torch.bnn import BNN

__all__ = ["NoRuleMode", "VarianceMode"]


class VarianceMode:
    """Per-layer factors on the proposed ``log σ`` step of ``bnn.posterior`` (see the module docs)."""

    def __init__(self, rule: Any, bnn: BNN, params: list[Tensor]):
        post = bnn.posterior
        log_scale = getattr(post, "log_scale", None)
        if not isinstance(log_scale, Tensor) or log_scale.numel() != sum(post.sizes):
            raise ValueError(
                f"variance= needs a posterior with a flat log_scale over its random parameters; "
                f"{type(post).__name__} has none"
            )
        if id(log_scale) not in {id(p) for p in params}:
            raise ValueError(
                "bnn.posterior.log_scale is not among the optimizer's parameters; "
                "build the optimizer over bnn.parameters()"
            )
        self.rule, self.param = rule, log_scale
        self.split = list(post.sizes)
        self.sizes = torch.tensor(self.split, dtype=log_scale.dtype, device=log_scale.device)
        self.state = rule.init(torch.zeros(len(post.sizes), dtype=log_scale.dtype, device=log_scale.device))
        self.before: Tensor | None = None
        self._armed = False  # a snapshot of this step is waiting for after_step

    def before_step(self) -> None:
        self._armed = self.param.grad is not None  # without a gradient the optimizer will not move it
        if not self._armed:
            return
        with torch.no_grad():
            if self.before is None or self.before.shape != self.param.shape:
                self.before = torch.empty_like(self.param, memory_format=torch.contiguous_format)
            self.before.copy_(self.param.detach())

    def drop(self) -> None:
        """The step raised: forget the snapshot (the parameters are whatever the optimizer left)."""
        self._armed = False

    def after_step(self, record: bool) -> dict[str, float] | None:
        if not self._armed or self.before is None:
            return None
        self._armed = False
        with torch.no_grad():
            after = self.param.detach().view(-1)
            before = self.before.view(-1)
            steps = torch.sub(after, before).split(self.split)  # one view per layer: no gather
            sq = torch.stack([step.dot(step) for step in steps])
            s, self.state = self.rule.update((sq / self.sizes).sqrt(), self.state)
            # before + s_l (after - before), in place; lerp with s_l = 1 gives `after` exactly
            for b, a, w in zip(before.split(self.split), after.split(self.split), s.to(after.dtype).unbind()):
                torch.lerp(b, a, w, out=a)
            if not record:
                return None
            return {
                "variance_scale": float(s.mean()),
                "variance_scale_min": float(s.min()),
            }

    def state_dict(self) -> dict[str, Any]:
        return {"rule": rule_id(self.rule), "state": state_to_dict(self.state)}

    def parse(self, saved: Any) -> Any:
        """The state in ``saved`` (from :meth:`state_dict`), checked against this rule; nothing is changed."""
        if not isinstance(saved, dict) or set(saved) != {"rule", "state"}:
            raise ValueError("Modulator state_dict: variance_state must be {'rule', 'state'}")
        if saved["rule"] != rule_id(self.rule):
            raise ValueError(
                f"Modulator state_dict: variance rule was {saved['rule']}, not {rule_id(self.rule)}"
            )
        return state_from_dict(self.state, saved["state"], "variance_state.state")


class NoRuleMode:
    """The step mode when a Modulator has only a variance rule: nothing scaled, no signal needed."""

    def restore(self, optimizer: Any) -> None:
        return None

    def before_step(self, optimizer: Any, u: Any) -> None:
        return None

    def after_step(self, optimizer: Any, record: bool = True) -> dict[str, float] | None:
        return {"lr": float(optimizer.param_groups[0]["lr"])}

    def scale(self) -> None:
        return None

    def state_dict(self) -> tuple[None, None]:
        return None, None

    def load(self, rule_state: Any, noise_state: Any) -> None:
        if rule_state is not None or noise_state is not None:
            raise ValueError("Modulator state_dict holds a rule state, but this Modulator has no rule")
