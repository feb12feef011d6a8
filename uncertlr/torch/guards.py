"""Numerical guards: never apply an optimizer step computed from a non-finite loss or gradient.

Example:
    >>> import torch
    >>> from uncertlr.torch.guards import StepGuard
    >>> net = torch.nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> guard = StepGuard(opt, model=net, max_consecutive_skips=3)
    >>> loss = net(torch.tensor([[float("nan"), 1.0]])).sum()
    >>> loss.backward()
    >>> guard.step(loss), guard.skipped      # the step is skipped, the parameters are untouched
    (False, 1)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["StepGuard"]


class StepGuard:
    """Calls ``optimizer.step()`` only when the loss and every gradient are finite.

    Use ``guard.step(loss)`` in place of ``optimizer.step()``. A skipped step leaves the
    parameters and the optimizer state untouched and is counted; after
    ``max_consecutive_skips`` skips in a row it raises ``FloatingPointError`` with a
    diagnosis (the loss, the parameters with non-finite gradients, the learning rate).

    Args:
        optimizer: the optimizer to step.
        model: optional module whose ``named_parameters()`` name the parameters in the diagnosis.
        max_consecutive_skips: how many non-finite steps in a row are tolerated (>= 1).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        model: torch.nn.Module | None = None,
        max_consecutive_skips: int = 5,
    ):
        if max_consecutive_skips < 1:
            raise ValueError(f"max_consecutive_skips must be >= 1; got {max_consecutive_skips}")
        self.optimizer = optimizer
        self.max_consecutive_skips = int(max_consecutive_skips)
        self._names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
        self.skipped = 0
        self.consecutive = 0

    def _grads(self) -> list[tuple[Tensor, Tensor]]:
        return [(p, p.grad) for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]

    def finite(self, loss: Tensor | float) -> bool:
        """Whether ``loss`` and all gradients are finite (one device synchronisation)."""
        loss_t = loss.detach() if isinstance(loss, Tensor) else torch.tensor(float(loss))
        grads = [g for _, g in self._grads()]
        if not grads:
            return bool(torch.isfinite(loss_t).all())
        norms = torch._foreach_norm(grads)
        total = torch.stack([n.to(loss_t.device, torch.float32) for n in norms]).sum() + loss_t.float().sum()
        return bool(torch.isfinite(total))

    def check(self, loss: Tensor | float) -> bool:
        """Whether a step may be applied; counts a skip (and raises after too many in a row) if not."""
        if self.finite(loss):
            self.consecutive = 0
            return True
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive >= self.max_consecutive_skips:
            raise FloatingPointError(self.diagnosis(loss))
        return False

    def step(self, loss: Tensor | float) -> bool:
        """Step the optimizer if the loss and gradients are finite; returns whether the step was applied."""
        applied = self.check(loss)
        if applied:
            self.optimizer.step()
        return applied

    def diagnosis(self, loss: Tensor | float) -> str:
        value = float(loss.detach().float().sum()) if isinstance(loss, Tensor) else float(loss)
        bad = [
            self._names.get(id(p), f"param{i}{tuple(p.shape)}")
            for i, (p, g) in enumerate(self._grads())
            if not torch.isfinite(g).all()
        ]
        lrs = sorted({g.get("lr") for g in self.optimizer.param_groups if "lr" in g}, key=lambda v: float(v))
        cause = (
            "the loss is " + ("NaN" if math.isnan(value) else "infinite")
            if not math.isfinite(value)
            else "the loss is finite but some gradients are not"
        )
        return (
            f"{self.consecutive} optimizer steps in a row were skipped because {cause}; "
            f"non-finite gradients in: {', '.join(bad[:8]) or 'none'}{' ...' if len(bad) > 8 else ''}; "
            f"learning rate {lrs}. Likely causes: a learning rate too large for this model, NaN/inf in the "
            "inputs or targets, or exploding gradients (lower the learning rate or clip gradients with "
            "torch.nn.utils.clip_grad_norm_)."
        )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped, self.consecutive = int(state["skipped"]), int(state["consecutive"])
