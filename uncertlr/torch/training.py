"""A small, explicit training loop for scripts and the CLI — you can always write your own.

:func:`fit` does exactly what a hand-written loop does (shuffle, ``zero_grad``,
``loss.backward()``, ``optimizer.step()``, ``scheduler.step()``) with a progress
bar and a history; hooks attached to the optimizer (such as the LR modulator)
fire as usual. It never hides the optimizer: you build it and keep it.

Example:
    >>> import torch
    >>> from uncertlr.torch import bayesian
    >>> from uncertlr.torch.training import fit
    >>> bnn = bayesian(torch.nn.Linear(4, 3), num_data=64)
    >>> opt = torch.optim.Adam(bnn.parameters(), lr=1e-2)
    >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> hist = fit(bnn.elbo, opt, x, y, epochs=2, batch_size=16, progress=False)
    >>> len(hist), sorted(hist[0])
    (8, ['epoch', 'kl', 'loss', 'lr', 'nll', 'step'])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from uncertlr._progress import progress_bar
from uncertlr.torch.bnn import ELBOTerms

__all__ = ["fit", "progress_bar"]

StepFn = Callable[[Tensor, Tensor], "Tensor | ELBOTerms"]


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
) -> list[dict[str, float]]:
    """Minibatch training for ``epochs`` passes over ``(x[N, ...], y[N, ...])``.

    Args:
        step: ``step(xb, yb)`` returns the loss, or :class:`~uncertlr.torch.ELBOTerms` (e.g. ``bnn.elbo``).
        optimizer: any ``torch.optim`` optimizer (hooks registered on it fire as usual).
        scheduler: optional LR scheduler, stepped after every optimizer step.
        before_step: called with ``step``'s result after ``backward()`` and before
            ``optimizer.step()`` (e.g. to feed an uncertainty signal to the LR modulator).
        generator: RNG for the shuffling (reproducible runs).
        progress: True for a progress bar of its own, False for none, or a
            ``rich.progress.Progress`` to add a task to.

    Returns:
        The history: one dict per step with ``step``, ``epoch``, ``loss``, ``lr``
        (and ``nll``, ``kl`` when ``step`` returns ELBO terms).

    Raises:
        FloatingPointError: when the loss becomes NaN or inf (the step is not applied).
    """
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"epochs must be >= 0 and batch_size >= 1; got {epochs}, {batch_size}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of rows; got {x.shape[0]} and {y.shape[0]}")
    n = x.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    history: list[dict[str, float]] = []
    own = progress is True
    bar = progress_bar() if own else (progress or None)
    task = bar.add_task(description, total=epochs * steps_per_epoch, info="") if bar is not None else None
    if own:
        bar.start()
    try:
        for epoch in range(epochs):
            order = torch.randperm(n, generator=generator).to(x.device)
            for i in range(steps_per_epoch):
                idx = order[i * batch_size : (i + 1) * batch_size]
                optimizer.zero_grad(set_to_none=True)
                out = step(x[idx], y[idx])
                loss = out.loss if isinstance(out, ELBOTerms) else out
                if not torch.isfinite(loss.detach()):
                    raise FloatingPointError(
                        f"loss became {loss.item()} at epoch {epoch}, batch {i}; the step was not applied "
                        "(lower the learning rate or check the data)"
                    )
                loss.backward()
                if before_step is not None:
                    before_step(out)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                rec = {"step": float(len(history)), "epoch": float(epoch), "loss": loss.item(),
                       "lr": float(optimizer.param_groups[0]["lr"])}
                if isinstance(out, ELBOTerms):
                    rec.update(nll=out.nll.item(), kl=out.kl.item())
                history.append(rec)
                if bar is not None:
                    bar.update(task, advance=1, info=f"loss {rec['loss']:.4f}")
    finally:
        if own:
            bar.stop()
    return history
