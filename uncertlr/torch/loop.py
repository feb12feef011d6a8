"""A small, explicit training loop for scripts and the CLI — you can always write your own.

:func:`fit` does exactly what a hand-written loop does (shuffle, ``zero_grad``,
``loss.backward()``, ``optimizer.step()``, ``scheduler.step()``) with a progress
bar and a history; hooks attached to the optimizer (such as the LR modulator)
fire as usual. It never hides the optimizer: you build it and keep it.

:class:`StepGuard` is its numerical guard, usable in your own loop: never apply an
optimizer step computed from a non-finite loss or gradient.

Example:
    >>> import torch
    >>> from uncertlr.torch import bayesian, fit
    >>> bnn = bayesian(torch.nn.Linear(4, 3), num_data=64)
    >>> opt = torch.optim.Adam(bnn.parameters(), lr=1e-2)
    >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> hist = fit(bnn.elbo, opt, x, y, epochs=2, batch_size=16, progress=False)
    >>> len(hist), sorted(hist[0])
    (8, ['epoch', 'kl', 'loss', 'lr', 'nll', 'skipped', 'step'])

    >>> from uncertlr.torch import StepGuard
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
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from uncertlr._progress import progress_task
from uncertlr.torch.bnn import ELBOTerms

__all__ = ["LoopState", "StepGuard", "fit"]


StepFn = Callable[[Tensor, Tensor], "Tensor | ELBOTerms"]


class LoopState(NamedTuple):
    """What :func:`fit` passes to ``on_step`` after every step.

    ``resume_generator_state`` is the data-order generator state from which
    ``fit(..., start_step=step)`` regenerates exactly the remaining batch order: save it
    with the step (``save_checkpoint(..., generator=state.resume_generator_state)``).
    """

    step: int
    epoch: int
    resume_generator_state: Tensor | None
    history: list[dict[str, float]]
    guard: StepGuard


def fit(
    step: StepFn,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    batch_size: int,
    scheduler: Any | None = None,
    before_step: Callable[[Tensor | ELBOTerms], None] | None = None,
    generator: torch.Generator | None = None,
    progress: Any = True,
    description: str = "training",
    max_consecutive_skips: int = 5,
    start_step: int = 0,
    history: list[dict[str, float]] | None = None,
    on_step: Callable[[LoopState], bool | None] | None = None,
    shard: tuple[int, int] | None = None,
) -> list[dict[str, float]]:
    """Minibatch training for ``epochs`` passes over ``(x[N, ...], y[N, ...])``.

    Args:
        step: ``step(xb, yb)`` returns the loss, or :class:`~uncertlr.torch.ELBOTerms` (e.g. ``bnn.elbo``).
        optimizer: any ``torch.optim`` optimizer (hooks registered on it fire as usual).
        scheduler: optional LR scheduler, stepped after every applied optimizer step.
        before_step: called with ``step``'s result after ``backward()`` and before
            ``optimizer.step()`` (e.g. to feed an uncertainty signal to the LR modulator);
            not called for a skipped step.
        generator: RNG for the shuffling (reproducible runs; required to resume mid-epoch).
        progress: True for a progress bar of its own, False for none, or a
            ``rich.progress.Progress`` to add a task to.
        max_consecutive_skips: a step whose loss or gradients are not finite is skipped
            (parameters untouched, ``skipped: 1`` in the history); this many in a row raise
            ``FloatingPointError`` with a diagnosis (see :class:`StepGuard`).
        start_step: resume at this global step. ``generator`` must then hold the state saved
            from ``LoopState.resume_generator_state`` at that step.
        history: an earlier history to continue (it is extended in place and returned).
        on_step: called after every step with a :class:`LoopState`; returning True stops
            training after that step (e.g. on SIGTERM, after writing a checkpoint).
        shard: ``(rank, world_size)`` under data parallelism: every process draws the same
            global batch order from ``generator`` and trains on its contiguous share of each
            global batch (``torch.tensor_split``); ``batch_size`` is the global batch size.

    Returns:
        The history: one dict per step with ``step``, ``epoch``, ``loss``, ``lr``, ``skipped``
        (and ``nll``, ``kl`` when ``step`` returns ELBO terms).
    """
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"epochs must be >= 0 and batch_size >= 1; got {epochs}, {batch_size}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of rows; got {x.shape[0]} and {y.shape[0]}")
    n = x.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    if not 0 <= start_step <= total:
        raise ValueError(f"start_step must be in [0, {total}]; got {start_step}")
    history = [] if history is None else history
    guard = StepGuard(optimizer, max_consecutive_skips=max_consecutive_skips)
    global_step = start_step
    with progress_task(progress, description, total, completed=start_step) as advance:
        for epoch in range(start_step // steps_per_epoch, epochs):
            epoch_state = generator.get_state() if generator is not None else None
            order = torch.randperm(n, generator=generator).to(x.device)
            first = global_step - epoch * steps_per_epoch
            for i in range(first, steps_per_epoch):
                idx = order[i * batch_size : (i + 1) * batch_size]
                if shard is not None:
                    idx = torch.tensor_split(idx, shard[1])[shard[0]]
                optimizer.zero_grad(set_to_none=True)
                out = step(x[idx], y[idx])
                loss = out.loss if isinstance(out, ELBOTerms) else out
                loss.backward()
                applied = guard.check(loss)  # counts a skip; raises after max_consecutive_skips in a row
                if applied:
                    if before_step is not None:
                        before_step(out)
                    optimizer.step()
                    if scheduler is not None:
                        scheduler.step()
                rec = {
                    "step": float(global_step),
                    "epoch": float(epoch),
                    "loss": loss.item(),
                    "lr": float(optimizer.param_groups[0]["lr"]),
                    "skipped": 0.0 if applied else 1.0,
                }
                if isinstance(out, ELBOTerms):
                    rec.update(nll=out.nll.item(), kl=out.kl.item())
                history.append(rec)
                global_step += 1
                advance(info=f"loss {rec['loss']:.4f}")
                if on_step is not None:
                    # at an epoch boundary the next epoch's order comes from the generator's current state
                    resume_state = (
                        (generator.get_state() if generator is not None else None)
                        if i == steps_per_epoch - 1
                        else epoch_state
                    )
                    if on_step(LoopState(global_step, epoch, resume_state, history, guard)):
                        return history
    return history


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
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        huge = [
            self._names.get(id(p), f"param{i}{tuple(p.shape)}")
            for i, p in enumerate(params)
            if p.numel() and not bool(torch.isfinite(p.detach().float().square().sum()))
        ]
        state = (
            f"parameters that are non-finite or too large to square in float32: {', '.join(huge[:8])}"
            f"{' ...' if len(huge) > 8 else ''} (the optimizer diverged before these steps)"
            if huge
            else "every parameter is finite"
        )
        return (
            f"{self.consecutive} optimizer steps in a row were skipped because {cause}; "
            f"non-finite gradients in: {', '.join(bad[:8]) or 'none'}{' ...' if len(bad) > 8 else ''}; "
            f"{state}; learning rate {lrs}. Likely causes: a learning rate too large for this model, "
            "NaN/inf in the inputs or targets, or exploding gradients (lower the learning rate or clip "
            "gradients with torch.nn.utils.clip_grad_norm_)."
        )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped, self.consecutive = int(state["skipped"]), int(state["consecutive"])
