"""The LR modulator for any ``torch.optim`` optimizer.

``Modulator(rule).attach(optimizer)`` registers a step pre-hook and a step post-hook on
that optimizer (never the process-wide hooks) that scale the step the optimizer proposes.
The facade holds what every mode shares (the signal, the history, checkpoints); one small
class per mode does the scaling:

* a **global** rule (:class:`~uncertlr.modulation.Ratio`, :class:`~uncertlr.modulation.ZScore`)
  turns the signal passed to :meth:`Modulator.observe` into a factor ``s`` and runs the step
  with ``lr = base_lr * s`` in every param group; the base learning rates are put back right
  after the step (also when it raises), so LR schedulers, ``optimizer.state_dict()`` and
  your logs only ever see the base schedule; in a closure step (``optimizer.step(closure)``)
  the factor scales the update instead (``uncertlr/torch/_stepping.py``);
* a **per-parameter** rule (:class:`~uncertlr.modulation.SigmaRatio`,
  :class:`~uncertlr.modulation.GradSigmaRatio`, :class:`~uncertlr.modulation.VarianceRatio`)
  snapshots the modulated parameters before the step and afterwards sets
  ``θ = θ_before + s ⊙ (θ_after - θ_before)`` with ``torch._foreach`` ops;
* a **per-layer variance** rule (:class:`~uncertlr.modulation.LayerScaleCap`, passed as
  ``variance=`` with ``sigma=bnn``) scales the step of each layer's posterior ``log σ``
  (``uncertlr/torch/_variance.py``); it combines with any of the above, or runs alone
  (``Modulator(None, variance=..., sigma=bnn)``).

Where σ comes from for a per-parameter rule (``sigma=``):

* a :class:`~uncertlr.torch.BNN`: its posterior std ``bnn.posterior.scale`` for
  ``bnn.posterior.loc``, with the rule's reference mean taken per named random parameter
  (one weight matrix or bias vector at a time). Only the posterior *means* are modulated:
  ``log_scale`` (the posterior's own width), the likelihood noise and any deterministic
  parameters take their optimizer's plain step;
* ``None``: a gradient-noise estimate (:class:`~uncertlr.modulation.GradientNoise`) for every
  parameter the optimizer holds — for deterministic networks;
* a callable returning ``{parameter: sigma tensor shaped like it}`` for anything else
  (a Laplace approximation, MCMC draws...); parameters it leaves out are not modulated.

Under ``torch.distributed`` (when a process group is initialised) the signal of a global
rule is all-reduced (mean, :func:`uncertlr.torch.distributed.all_reduce_mean`) before the
rule sees it, so every replica applies the same factor; per-parameter rules need no
reduction because replicas hold the same parameters and (after DDP's all-reduce) the same
gradients.

Example:
    >>> import torch
    >>> from uncertlr.modulation import Ratio
    >>> from uncertlr.torch import Modulator, batch_entropy
    >>> net = torch.nn.Linear(4, 3)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> mod = Modulator(Ratio(warmup=0)).attach(opt)
    >>> for _ in range(3):
    ...     opt.zero_grad()
    ...     logits = net(torch.randn(8, 4))
    ...     torch.nn.functional.cross_entropy(logits, torch.randint(0, 3, (8,))).backward()
    ...     mod.observe(batch_entropy(logits))
    ...     opt.step()
    >>> opt.param_groups[0]["lr"], sorted(mod.history[-1])
    (0.1, ['lr', 'scale', 'signal', 'step'])
"""

from __future__ import annotations

import numbers
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from uncertlr.modulation import GradientNoise, Rule
from uncertlr.torch._perparam import PerParameterMode, SigmaSource
from uncertlr.torch._state import rule_id
from uncertlr.torch._stepping import GlobalMode, attached_modulator, install_step_guard, remove_step_guard
from uncertlr.torch._variance import NoRuleMode, VarianceMode
from uncertlr.torch.bnn import BNN
from uncertlr.torch.distributed import all_reduce_mean

__all__ = ["STATE_KEYS", "Modulator"]

#: Keys of :meth:`Modulator.state_dict`, in order (``variance_state`` may be absent from
#: states saved before variance rules existed).
STATE_KEYS = ("rule", "num_steps", "rule_state", "noise_state", "history", "variance_state")


def _as_signal(signal: Any) -> Tensor:
    """A real scalar (tensor, numpy/jax array or number) as a 0-d float32 tensor on its device."""
    if (
        type(signal) is Tensor
        and signal.dtype is torch.float32
        and signal.dim() == 0
        and not signal.requires_grad
    ):  # already one (batch_entropy's): the same tensor the general path returns, in a few checks
        return signal
    if isinstance(signal, Tensor):
        t = signal.detach()
    elif isinstance(signal, numbers.Real):
        t = torch.tensor(float(signal))
    elif hasattr(signal, "__array__") and np.asarray(signal).dtype.kind in "biuf":  # numpy, jax
        t = torch.as_tensor(np.asarray(signal, dtype=np.float64))
    else:
        raise TypeError(
            f"the signal must be a real scalar (tensor, array or number); got {type(signal).__name__}"
        )
    if t.is_complex():
        raise TypeError(f"the signal must be real; got dtype {t.dtype}")
    if t.numel() != 1:
        raise ValueError(f"the signal must be a scalar; got shape {tuple(t.shape)} (reduce it, e.g. .mean())")
    return t.reshape(()).float()


# --------------------------------------------------------------------------- the facade


class Modulator:
    """Scales each step of a ``torch.optim`` optimizer by a modulation rule's factor.

    Args:
        rule: a rule from :mod:`uncertlr.modulation` (or your own object with ``init``/``update``);
            ``None`` when only ``variance`` is wanted.
        sigma: per-parameter rules only: a :class:`~uncertlr.torch.BNN`, ``None`` (gradient-noise
            σ for every parameter), or a callable returning ``{parameter: σ}`` (see the module docs).
            With ``variance``: the :class:`~uncertlr.torch.BNN` whose posterior it acts on.
        variance: a per-layer rule for the BNN's posterior ``log σ`` step
            (:class:`~uncertlr.modulation.LayerScaleCap`); history records then carry
            ``variance_scale`` (mean factor over layers) and ``variance_scale_min``.
        noise: the gradient-noise estimator used when ``sigma`` is ``None``.
        record: append ``{step, signal, scale, lr}`` to :attr:`history` every step (for a
            per-parameter rule ``scale`` is the mean factor over the modulated weights, with
            ``scale_min``/``scale_max``). Recording reads a few numbers back to the host: one
            synchronisation per step on a GPU, which ``record=False`` avoids for a per-parameter
            rule (a global rule reads its signal on the host to compute the factor either way).
        max_history: keep only the newest ``max_history`` records (a ``collections.deque``
            ring buffer), so a run of millions of steps does not grow without bound (each
            record is ~0.4 KB); ``None`` keeps them all in a list.

    Attributes:
        history: the records, oldest first.
        num_steps: optimizer steps taken while attached.

    Call :meth:`observe` once before every ``optimizer.step()`` with a global rule (a step
    without a fresh signal raises), or inside the closure of ``optimizer.step(closure)``
    (Lightning's automatic optimization, LBFGS): the signal observed by the closure's first
    call drives that step, and the factor is then applied to the update itself. One
    modulator per optimizer (a second :meth:`attach` raises). If ``optimizer.step`` raises,
    the base learning rates are put back before the exception propagates (and a global
    rule's state and record are as if the step had not been taken). Checkpoint with
    :meth:`state_dict` next to the optimizer's and the scheduler's; the LR schedule itself
    is untouched.
    """

    def __init__(
        self,
        rule: Rule | None,
        *,
        sigma: SigmaSource = None,
        noise: GradientNoise | None = None,
        variance: Any = None,
        record: bool = True,
        max_history: int | None = None,
    ):
        if max_history is not None and (
            isinstance(max_history, bool) or not isinstance(max_history, int) or max_history < 1
        ):
            raise ValueError(f"max_history must be an integer >= 1 or None; got {max_history!r}")
        if rule is None and variance is None:
            raise TypeError("Modulator needs a rule, a variance rule (variance=), or both")
        if rule is not None and not (
            callable(getattr(rule, "init", None)) and callable(getattr(rule, "update", None))
        ):
            raise TypeError(f"rule must have init() and update(signal, state); got {type(rule).__name__}")
        if getattr(rule, "per_layer", False):
            raise TypeError(
                f"{type(rule).__name__} is a per-layer variance rule: pass it as variance=, with sigma=bnn"
            )
        if variance is not None:
            if not getattr(variance, "per_layer", False):
                raise TypeError(
                    f"variance= takes a per-layer rule (e.g. LayerScaleCap); got {type(variance).__name__}"
                )
            if not isinstance(sigma, BNN):
                raise TypeError("variance= needs sigma=bnn: the BNN whose posterior log-std it scales")
        self.rule = rule
        self.variance = variance
        self.per_parameter = bool(getattr(rule, "per_parameter", False))
        if sigma is not None and not self.per_parameter and variance is None:
            raise ValueError(f"sigma= is for per-parameter rules; {type(rule).__name__} is a global rule")
        if sigma is not None and not (isinstance(sigma, BNN) or callable(sigma)):
            raise TypeError(
                f"sigma must be a BNN, a callable returning {{param: sigma}} or None; got {type(sigma).__name__}"
            )
        self.sigma = sigma
        self.noise = noise if noise is not None else GradientNoise()
        self.record = bool(record)
        self.max_history = max_history
        self.history: list[dict[str, float]] | deque[dict[str, float]] = self._new_history([])
        self.num_steps = 0
        self._optimizer: torch.optim.Optimizer | None = None
        self._handles: list[Any] = []
        self._guard: Any = None
        self._closure_step = False
        self._step_began = False
        self._record_appended = False
        self._mode: GlobalMode | PerParameterMode | NoRuleMode | None = None
        self._variance: VarianceMode | None = None
        self._pending: Tensor | None = None
        self._signal_value: float | None = None
        self._pending_load: Mapping[str, Any] | None = None

    # ------------------------------------------------------------------ attaching

    def attach(self, optimizer: torch.optim.Optimizer) -> Modulator:
        """Register the step hooks on ``optimizer``; returns ``self``.

        One modulator per optimizer: a second one would scale (and put back) the same learning
        rates, so attaching to an optimizer that already has one raises.
        """
        if self._optimizer is not None:
            raise RuntimeError("this Modulator is already attached; call detach() first")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}")
        if attached_modulator(optimizer, Modulator) is not None:
            raise RuntimeError(
                "this optimizer already has a Modulator attached; one modulator per optimizer "
                "(detach() the other first, or combine rules with uncertlr.modulation.Product)"
            )
        if any("lr" not in g for g in optimizer.param_groups):
            raise ValueError("every param group of the optimizer needs an 'lr' entry")
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if not params:
            raise ValueError("the optimizer has no parameters")
        if self.rule is None:
            self._mode = NoRuleMode()
        elif self.per_parameter:
            self._mode = PerParameterMode(self.rule, self.sigma, self.noise, params)
        else:
            self._mode = GlobalMode(self.rule, params)
        if self.variance is not None:
            assert isinstance(self.sigma, BNN)
            self._variance = VarianceMode(self.variance, self.sigma, params)
        self._optimizer = optimizer
        self._handles = [
            optimizer.register_step_pre_hook(self._pre_hook),
            optimizer.register_step_post_hook(self._post_hook),
        ]
        self._guard = install_step_guard(optimizer, self._abort_step)
        if self._pending_load is not None:
            saved, self._pending_load = self._pending_load, None
            self.load_state_dict(saved)
        return self

    def detach(self) -> None:
        """Remove the hooks (restoring the base learning rates if a step was interrupted)."""
        if self._mode is not None:
            self._mode.restore(self._optimizer)
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._guard is not None and self._optimizer is not None:
            remove_step_guard(self._optimizer, self._guard)
        self._guard = None
        self._optimizer = None

    def _new_history(
        self, records: Iterable[dict[str, float]]
    ) -> list[dict[str, float]] | deque[dict[str, float]]:
        if self.max_history is None:
            return list(records)
        return deque(records, maxlen=self.max_history)

    # ------------------------------------------------------------------ per-step API

    def observe(self, signal: Tensor | float) -> None:
        """Give the rule this step's scalar signal (call before ``optimizer.step()``).

        For a per-parameter rule the signal is optional and only recorded in :attr:`history`.
        A tensor stays on its device (no host sync); a NaN or inf is allowed — the rule holds
        its previous factor and counts it.
        """
        self._pending = _as_signal(signal)

    @property
    def last_scale(self) -> Tensor | list[Tensor] | None:
        """The factor of the last step: a 0-d tensor (global rule) or one tensor per modulated
        parameter, shaped like it (per-parameter rule); ``None`` before the first step."""
        return None if self._mode is None else self._mode.scale()

    @property
    def rule_state(self) -> Any:
        """The rule's current state: one state (global rule; e.g. ``.nonfinite``, the count of held
        non-finite signals) or, per-parameter, one list of states per modulated parameter (one per
        segment); ``None`` before :meth:`attach`."""
        if isinstance(self._mode, GlobalMode):
            return self._mode.state
        if isinstance(self._mode, PerParameterMode):
            return [list(t.states) for t in self._mode.targets]
        return None

    @property
    def variance_state(self) -> Any:
        """The variance rule's state (e.g. :class:`~uncertlr.modulation.LayerCapState`, whose
        ``capped`` counts the steps each layer was cut); ``None`` without a variance rule."""
        return None if self._variance is None else self._variance.state

    def _pre_hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> Any:
        assert self._mode is not None
        self._mode.restore(optimizer)  # a previous step that raised never reached the post-hook
        self._step_began = self._record_appended = False
        # args are the step's own arguments, the optimizer first: (optimizer, closure=None)
        closure = kwargs.get("closure") if "closure" in kwargs else (args[1] if len(args) > 1 else None)
        self._closure_step = closure is not None
        if closure is None:
            self._begin_step(optimizer, in_closure=False)
            return None
        # the signal is observed inside the closure: begin the step once it has run the first time
        # (LBFGS calls it again during its line search; those calls only evaluate)

        def modulated_closure() -> Any:
            out = closure()
            if not self._step_began:
                self._begin_step(optimizer, in_closure=True)
            return out

        if "closure" in kwargs:
            return args, {**kwargs, "closure": modulated_closure}
        return (args[0], modulated_closure, *args[2:]), kwargs

    def _begin_step(self, optimizer: torch.optim.Optimizer, *, in_closure: bool) -> None:
        assert self._mode is not None
        self._step_began = True
        u, self._pending = self._pending, None
        if u is not None:
            u = all_reduce_mean(u)
        if isinstance(self._mode, GlobalMode):
            rec = self._mode.before_step(optimizer, u, in_closure=in_closure)
        else:
            rec = self._mode.before_step(optimizer, u)
        if self._variance is not None:
            self._variance.before_step()
        if rec is not None and self.record:
            self.history.append({"step": float(self.num_steps), **rec})
            self._record_appended = True
        if u is None or not self.record:
            self._signal_value = None
        else:  # a global rule has read it back already
            self._signal_value = rec["signal"] if rec is not None and "signal" in rec else float(u)

    def _post_hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        assert self._mode is not None
        rec = self._mode.after_step(optimizer, record=self.record)
        if self._variance is not None:
            vrec = self._variance.after_step(self.record)
            if vrec is not None:
                if rec is not None:
                    rec.update(vrec)
                elif self._record_appended and self.history:  # a global rule recorded this step before it
                    self.history[-1].update(vrec)
        self.num_steps += 1
        if self._closure_step:  # signals observed by later closure calls (a line search) belong to no step
            self._pending = None
        self._closure_step = self._step_began = self._record_appended = False
        if rec is not None and self.record:
            if self._signal_value is not None:
                rec["signal"] = self._signal_value
            self.history.append({"step": float(self.num_steps - 1), **rec})

    def _abort_step(self) -> None:
        """``optimizer.step`` raised: base learning rates back, the step's record and (global rule) state undone."""
        if isinstance(self._mode, GlobalMode):
            self._mode.abort(self._optimizer)
        elif self._mode is not None:
            self._mode.restore(self._optimizer)
        if self._variance is not None:
            self._variance.drop()
        if self._record_appended and self.history:
            self.history.pop()
        if self._closure_step:
            self._pending = None
        self._closure_step = self._step_began = self._record_appended = False

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The modulator's state under the keys :data:`STATE_KEYS` (tensors are cloned)."""
        if self._mode is not None:
            rule_state, noise_state = self._mode.state_dict()
        else:  # not attached yet: no targets (per-parameter) and no state (global)
            rule_state, noise_state = ([], []) if self.per_parameter else (None, None)
        return {
            "rule": rule_id(self.rule),
            "num_steps": self.num_steps,
            "rule_state": rule_state,
            "noise_state": noise_state,
            "history": [dict(r) for r in self.history],
            "variance_state": None if self._variance is None else self._variance.state_dict(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; training then continues exactly as it would have.

        Must match the rule (class and fields). Before :meth:`attach` the state is kept and
        applied when attaching (a per-parameter rule needs the optimizer's parameters).
        """
        keys = set(state_dict)
        if keys | {"variance_state"} != set(STATE_KEYS):
            raise KeyError(
                f"Modulator state_dict: missing {sorted(set(STATE_KEYS) - keys)}, "
                f"unexpected {sorted(keys - set(STATE_KEYS))}"
            )
        if state_dict["rule"] != rule_id(self.rule):
            raise ValueError(
                f"Modulator state_dict was saved for rule {state_dict['rule']}, not {rule_id(self.rule)}"
            )
        if self._mode is None or self._optimizer is None:
            self._pending_load = state_dict
            return
        saved_variance = state_dict.get("variance_state")
        if (saved_variance is None) != (self._variance is None):
            raise ValueError(
                "Modulator state_dict: "
                + (
                    "no variance rule state was saved"
                    if saved_variance is None
                    else "it holds a variance rule state"
                )
                + (
                    ", but this Modulator has one"
                    if self._variance is not None
                    else ", but this Modulator has none"
                )
            )
        variance_state = None if self._variance is None else self._variance.parse(saved_variance)
        self._mode.load(state_dict["rule_state"], state_dict["noise_state"])
        if self._variance is not None:
            self._variance.state = variance_state
        self.num_steps = int(state_dict["num_steps"])
        self.history = self._new_history(dict(r) for r in state_dict["history"])
