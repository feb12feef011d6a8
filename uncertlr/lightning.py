"""Lightning integration: the LR modulator as a ``lightning.pytorch`` callback (optional extra ``lightning``).

:class:`ModulatorCallback` attaches one :class:`~uncertlr.torch.Modulator` to each of the
LightningModule's optimizers when fitting starts, feeds it the value the module logs under
``monitor`` in every training step (``self.log("train/entropy", batch_entropy(...))``, as
``EarlyStopping`` and ``ModelCheckpoint`` read theirs), and keeps the modulators' state in the
Trainer's checkpoints, so ``trainer.fit(model, ckpt_path=...)`` continues exactly. It works
under automatic optimization, where Lightning runs ``training_step`` inside the closure it
passes to ``optimizer.step(closure)``, and under manual optimization (``opt.step()`` in your
``training_step`` after ``self.log``). Per-parameter rules (P1-P3) need no signal: give them
``sigma=`` (the BNN inside your module) and omit ``monitor``.

Example:
    >>> import lightning as L, torch
    >>> from uncertlr.modulation import Ratio
    >>> from uncertlr.torch import batch_entropy
    >>> class Net(L.LightningModule):
    ...     def __init__(self):
    ...         super().__init__(); self.net = torch.nn.Linear(4, 3)
    ...     def training_step(self, batch, batch_idx):
    ...         x, y = batch
    ...         logits = self.net(x)
    ...         self.log("train/entropy", batch_entropy(logits))
    ...         return torch.nn.functional.cross_entropy(logits, y)
    ...     def configure_optimizers(self):
    ...         return torch.optim.Adam(self.parameters(), lr=1e-2)
    >>> data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randint(0, 3, (64,)))
    >>> callback = ModulatorCallback(Ratio(warmup=2), monitor="train/entropy")
    >>> trainer = L.Trainer(max_epochs=1, callbacks=[callback], logger=False, enable_checkpointing=False,
    ...                     enable_progress_bar=False, enable_model_summary=False)
    >>> trainer.fit(Net(), torch.utils.data.DataLoader(data, batch_size=16))
    >>> [m.num_steps for m in callback.modulators]
    [4]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "uncertlr.lightning needs Lightning: pip install 'uncertlr[lightning]' (or lightning>=2.4)"
    ) from exc
import torch

from uncertlr.modulation import Rule
from uncertlr.torch import Modulator
from uncertlr.torch.modulator import SigmaSource

__all__ = ["ModulatorCallback"]


class ModulatorCallback(pl.Callback):
    """Modulates every step of the LightningModule's optimizers with an :mod:`uncertlr.modulation` rule.

    Args:
        rule: the rule (``Ratio(kappa=-0.5)`` for G1, ``GradSigmaRatio()`` for P2...).
        monitor: the name your ``training_step`` logs the step's signal under with ``self.log``
            (every step). Required for a global rule; optional (recorded only) for a
            per-parameter rule.
        sigma: per-parameter rules: the posterior std source, as for
            :class:`~uncertlr.torch.Modulator` (your module's BNN, ``None`` for a gradient-noise
            estimate, or a callable).
        optimizers: indices into ``trainer.optimizers`` to modulate (default: all).
        log: log each step's factor as ``modulator/scale`` (``modulator{i}/scale`` for several
            optimizers) through the module's loggers.
        max_history: passed to each :class:`~uncertlr.torch.Modulator`.

    Attributes:
        modulators: the :class:`~uncertlr.torch.Modulator` of each modulated optimizer
            (their ``history`` holds ``{step, signal, scale, lr}`` records).
    """

    def __init__(
        self,
        rule: Rule,
        *,
        monitor: str | None = None,
        sigma: SigmaSource = None,
        optimizers: Sequence[int] | None = None,
        log: bool = True,
        max_history: int | None = None,
    ):
        self.rule = rule
        self.per_parameter = bool(getattr(rule, "per_parameter", False))
        if monitor is None and not self.per_parameter:
            raise ValueError(
                f"{type(rule).__name__} is a global rule: say which logged value drives it, "
                "e.g. monitor='train/entropy' (and self.log('train/entropy', ...) in training_step)"
            )
        if monitor is not None and not isinstance(monitor, str):
            raise TypeError(f"monitor must be the name of a logged value; got {type(monitor).__name__}")
        self.monitor = monitor
        self.sigma = sigma
        self.optimizer_indices = None if optimizers is None else [int(i) for i in optimizers]
        self.log = bool(log)
        self.max_history = max_history
        self.modulators: list[Modulator] = []
        self._by_optimizer: dict[int, Modulator] = {}
        self._handles: list[Any] = []
        self._pending_state: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(rule=repr(self.rule), monitor=self.monitor)

    # ------------------------------------------------------------------ attaching

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizers = list(trainer.optimizers)
        indices = self.optimizer_indices if self.optimizer_indices is not None else range(len(optimizers))
        chosen = []
        for i in indices:
            if not 0 <= i < len(optimizers):
                raise IndexError(
                    f"optimizers={self.optimizer_indices}: the module has {len(optimizers)} optimizer(s)"
                )
            chosen.append(optimizers[i])
        if not chosen:
            raise ValueError("ModulatorCallback: the LightningModule configured no optimizer to modulate")
        self._detach_all()
        # fresh modulators for every fit; a checkpoint's state (trainer.fit(ckpt_path=...)) is loaded below
        self.modulators = [
            Modulator(self.rule, sigma=self.sigma, max_history=self.max_history) for _ in chosen
        ]
        for opt, mod in zip(chosen, self.modulators):
            if isinstance(opt, torch.optim.LBFGS):
                raise TypeError(
                    "ModulatorCallback cannot modulate LBFGS: it re-evaluates its closure within one step"
                )
            # Registered before the modulator's own hooks, so it runs first: it evaluates Lightning's
            # closure (training_step, backward, on_before_optimizer_step, where the signal is observed)
            # before the modulator reads the signal, and hands the optimizer the closure's result.
            self._handles.append(opt.register_step_pre_hook(_run_closure_first))
            mod.attach(opt)
            self._by_optimizer[id(opt)] = mod
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self._load(state)

    def _detach_all(self) -> None:
        for mod in self.modulators:
            mod.detach()
        for h in self._handles:
            h.remove()
        self._handles, self._by_optimizer = [], {}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._detach_all()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._detach_all()  # puts the base learning rates back if a step was interrupted

    # ------------------------------------------------------------------ the signal

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        mod = self._by_optimizer.get(id(optimizer))
        if mod is None or self.monitor is None:
            return
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            raise KeyError(
                f"ModulatorCallback: nothing was logged under monitor={self.monitor!r} in this training step; "
                f"log it every step with self.log({self.monitor!r}, value) before the optimizer steps "
                f"(logged so far: {sorted(metrics)})"
            )
        mod.observe(metrics[self.monitor])

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.log:
            return
        for k, mod in enumerate(self.modulators):
            if mod.history:
                name = "modulator/scale" if len(self.modulators) == 1 else f"modulator{k}/scale"
                pl_module.log(name, float(mod.history[-1]["scale"]), on_step=True, on_epoch=False)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """``{"modulators": [Modulator.state_dict(), ...]}`` (plain data and tensors only)."""
        return {"modulators": [mod.state_dict() for mod in self.modulators]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callbacks before the optimizers exist: keep the state until on_fit_start.
        if not self._by_optimizer:
            self._pending_state = dict(state_dict)
            return
        self._load(state_dict)

    def _load(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["modulators"]
        if len(saved) != len(self.modulators):
            raise ValueError(
                f"the checkpoint holds {len(saved)} modulator state(s) but {len(self.modulators)} optimizer(s) "
                "are modulated"
            )
        for mod, st in zip(self.modulators, saved):
            mod.load_state_dict(st)


def _run_closure_first(
    optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Step pre-hook: evaluate ``optimizer.step(closure)``'s closure now; the step then gets its result.

    Lightning observes the step's signal inside the closure; the modulator's pre-hook, which
    runs next, needs it before the parameters move. ``step`` calls the replacement closure
    once, as every optimizer but LBFGS does, and receives the same loss.
    """
    # torch passes step's own arguments: ``args[0]`` is the optimizer, a positional closure ``args[1]``
    closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
    if closure is None:
        return None
    with torch.enable_grad():
        result = closure()
    return args[:1], {**kwargs, "closure": lambda: result}
