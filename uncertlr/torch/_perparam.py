"""The Modulator's per-parameter mode: a factor per weight from ``|g|`` and ``σ``, applied to the update.

Each modulated optimizer parameter is a :class:`Target`, split into segments (one per named
random parameter for a BNN). Before the optimizer steps, the rule turns each segment's gradient
and σ into factors ``s``; after the step the update is rescaled in place,
``θ ← θ_before + s ⊙ (θ_after − θ_before)``. Built-in rules run fused over the flat parameter
(:mod:`uncertlr.torch._fused`). Used only by :class:`uncertlr.torch.Modulator`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from uncertlr.modulation import GradientNoise, ParamSignal, Rule
from uncertlr.torch import _fused, _native
from uncertlr.torch._state import state_from_dict, state_to_dict
from uncertlr.torch.bnn import BNN

__all__ = ["PerParameterMode", "SigmaSource", "Target"]

SigmaSource = BNN | Callable[[], Mapping[Tensor, Tensor]] | None


class Target:
    """One modulated optimizer parameter, split into segments (per named parameter for a BNN).

    A built-in rule keeps its per-segment states flat in ``fused`` (:class:`~uncertlr.torch._fused.FusedRule`);
    ``states`` and ``noise`` read and write them there, so checkpoints see the same lists either way.
    """

    def __init__(
        self,
        param: Tensor,
        sizes: list[int],
        states: list[Any],
        noise: list[Any] | None = None,
        *,
        rule: Rule,
        estimator: GradientNoise,
    ):
        self.param, self.sizes = param, sizes
        self.fused = (
            _fused.FusedRule(rule, sizes, states, estimator if noise else None, noise)
            if _fused.supports(rule)
            else None
        )
        self._states, self._noise = states, noise
        self.scales: list[Tensor] | None = None  # this step's factors, one per segment
        self.flat_scale: Tensor | None = None  # the same, flat (fused targets)
        self.before: Tensor | None = None

    @property
    def states(self) -> list[Any]:
        return self.fused.states if self.fused is not None else self._states

    @states.setter
    def states(self, value: list[Any]) -> None:
        self._states = value
        if self.fused is not None:
            self.fused.load(value, self.fused.noise_states)

    @property
    def noise(self) -> list[Any] | None:
        return self.fused.noise_states if self.fused is not None else self._noise

    @noise.setter
    def noise(self, value: list[Any] | None) -> None:
        self._noise = value
        if self.fused is not None:
            self.fused.load(self.fused.states, value)


def _posterior_scale(post: Any, floor: bool = True) -> tuple[Tensor, bool]:
    """A BNN posterior's detached flat σ and whether the caller may overwrite it: the mean-field
    posterior reuses its last sample's ``exp(log_scale)``; other posteriors compute a fresh one.

    ``floor=False`` (the fused built-in rules): a σ that underflowed to 0 may stay 0; their
    factors are the same for 0 as for the floor (the factor of such a weight is clamped to a bound
    either way, and a segment that is all 0 or all at the floor gets factors of 1).
    """
    detached = getattr(post, "detached_scale", None)
    if detached is not None:
        return detached(floor=floor)  # type: ignore[no-any-return]
    return post.scale.detach(), True


def _snapshot(param: Tensor, before: Tensor) -> None:
    """``before ← param`` (under ``no_grad``). On a CPU with the compiled kernels, with stores that bypass the
    cache: the snapshot is read only after the optimizer's step, and a plain copy first pulled its old contents
    into the cache and evicted what that step uses (a BNN + P2 step over fused Adam on the 784-400-400-10 MLP:
    1.146x a BNN step with ``copy_``, 1.122x with this; BENCHMARKS.md)."""
    if param.is_cpu and param.is_contiguous() and not torch.compiler.is_compiling():
        kern = _native.kernels()
        if kern is not None and kern.usable():
            kern.snapshot(param, before)
            return
    before.copy_(param)


class PerParameterMode:
    """Elementwise factors from ``(grad, σ)``, applied to the update after the step (foreach lerp)."""

    def __init__(self, rule: Rule, sigma: SigmaSource, noise: GradientNoise, params: list[Tensor]):
        self.rule, self.sigma, self.noise = rule, sigma, noise
        self.targets = self._build_targets(params)
        self._step_targets: list[Target] = []

    def _build_targets(self, params: list[Tensor]) -> list[Target]:
        rule = self.rule
        kw = {"rule": rule, "estimator": self.noise}
        if isinstance(self.sigma, BNN):
            post = self.sigma.posterior
            if id(post.loc) not in {id(p) for p in params}:
                raise ValueError(
                    "bnn.posterior.loc is not among the optimizer's parameters; "
                    "build the optimizer over bnn.parameters()"
                )
            sizes = list(post.sizes)
            return [Target(post.loc, sizes, [rule.init(s) for s in post.loc.detach().split(sizes)], **kw)]
        if self.sigma is None:
            flats = [(p, p.detach().reshape(-1)) for p in params if p.requires_grad]
            return [Target(p, [f.numel()], [rule.init(f)], [self.noise.init(f)], **kw) for p, f in flats]
        mapping = self.sigma()
        out = [
            Target(p, [p.numel()], [rule.init(p.detach().reshape(-1))], **kw) for p in params if p in mapping
        ]
        if not out:
            raise ValueError("sigma() returned no parameter that the optimizer holds")
        return out

    def _sigmas(
        self, t: Target, grads: list[Tensor], sigma_map: Mapping[Tensor, Tensor] | None
    ) -> list[Tensor]:
        if isinstance(self.sigma, BNN):
            return list(_posterior_scale(self.sigma.posterior)[0].split(t.sizes))
        if sigma_map is not None:
            return [sigma_map[t.param].detach().reshape(-1)]
        out = []
        for i, gi in enumerate(grads):
            sg, t.noise[i] = self.noise.update(gi, t.noise[i])  # type: ignore[index]
            out.append(sg)
        return out

    def before_step(self, optimizer: torch.optim.Optimizer, u: Tensor | None) -> None:
        self._step_targets = []
        with torch.no_grad():
            sigma_map = self.sigma() if self.sigma is not None and not isinstance(self.sigma, BNN) else None
            for t in self.targets:
                g = t.param.grad
                if g is None:
                    continue
                if g.is_sparse:
                    raise TypeError("the Modulator does not support sparse gradients")
                if t.fused is not None:
                    # the renormalisation may be left to after_step's apply_ (one pass fewer)
                    t.flat_scale = t.fused.update(g.reshape(-1), *self._flat_sigma(t, sigma_map), defer=True)
                    t.scales = None  # per segment only on request (scale()): no views every step
                else:
                    gs = list(g.reshape(-1).split(t.sizes))
                    scales = []
                    for i, (gi, si) in enumerate(zip(gs, self._sigmas(t, gs, sigma_map))):
                        s, t.states[i] = self.rule.update(ParamSignal(gi, si), t.states[i])
                        scales.append(s)
                    t.scales, t.flat_scale = scales, None
                if t.before is None or t.before.shape != t.param.shape or t.before.dtype != t.param.dtype:
                    t.before = torch.empty_like(t.param, memory_format=torch.contiguous_format)
                _snapshot(t.param, t.before)
                self._step_targets.append(t)

    def _flat_sigma(self, t: Target, sigma_map: Mapping[Tensor, Tensor] | None) -> tuple[Tensor | None, bool]:
        """``(σ[P] or None for the gradient-noise estimate, whether the fused update may overwrite it)``."""
        if isinstance(self.sigma, BNN):
            return _posterior_scale(self.sigma.posterior, floor=False)
        if sigma_map is not None:
            return sigma_map[t.param].detach().reshape(-1), False
        return None, True

    def restore(self, optimizer: torch.optim.Optimizer | None) -> None:
        return None

    def after_step(self, optimizer: torch.optim.Optimizer, record: bool = True) -> dict[str, float] | None:
        """Apply the step's factors; the record (mean, min and max factor: one host read) only if ``record``."""
        targets, self._step_targets = self._step_targets, []
        if not targets:
            return None
        with torch.no_grad():
            befores: list[Tensor] = []
            afters: list[Tensor] = []
            scales: list[Tensor] = []
            stats: list[Tensor] = []  # one tensor per target (flat) or per segment
            for t in targets:
                after = t.param.detach().view(-1)
                if t.flat_scale is not None:
                    # before + s * (after - before), in one pass, in place
                    t.fused.apply_(t.before.view(-1), after)  # type: ignore[union-attr]
                    stats.append(t.flat_scale)
                    continue
                befores += t.before.view(-1).split(t.sizes)  # type: ignore[union-attr]
                afters += after.split(t.sizes)
                scales += [s.to(t.param.dtype) for s in t.scales]  # type: ignore[union-attr]
                stats += t.scales  # type: ignore[arg-type]
            if befores:
                # before + s * (after - before), written into the snapshot, then copied back
                torch._foreach_lerp_(befores, afters, scales)
                torch._foreach_copy_(afters, befores)
            if not record:  # no host read: on a GPU the next step's kernels queue behind this one's
                return None
            n = sum(s.numel() for s in stats)
            known = [t.fused.last_total if t.fused is not None else None for t in targets]
            ranges = [t.fused.last_range if t.fused is not None else None for t in targets]
            if all(v is not None for v in known) and all(r is not None for r in ranges):
                # the compiled kernels' sums, minima and maxima: nothing to read back
                mean_sum = float(sum(known))  # type: ignore[arg-type]
                lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)  # type: ignore[index]
            elif all(v is not None for v in known):  # the fused rules' sums, read on the host already
                lo_hi = torch.stack([torch.stack(s.aminmax()) for s in stats]).float()
                lo, hi = torch.stack([lo_hi[:, 0].min(), lo_hi[:, 1].max()]).tolist()
                mean_sum = float(sum(known))  # type: ignore[arg-type]
            else:
                lo_hi = torch.stack([torch.stack(s.aminmax()) for s in stats]).float()
                total = torch.stack([s.sum() for s in stats]).sum().float()
                mean_sum, lo, hi = torch.stack([total, lo_hi[:, 0].min(), lo_hi[:, 1].max()]).tolist()
            return {
                "scale": mean_sum / n,
                "scale_min": lo,
                "scale_max": hi,
                "lr": float(optimizer.param_groups[0]["lr"]),
            }

    def scale(self) -> list[Tensor] | None:
        if not self.targets or (self.targets[0].scales is None and self.targets[0].flat_scale is None):
            return None
        out = []
        for t in self.targets:
            if t.fused is not None:
                t.fused.flush()  # applied factors are written out only when read (and a raised step's)
            if t.flat_scale is not None:
                out.append(t.flat_scale.view_as(t.param).clone())  # a copy: the rule keeps the original
            elif t.scales:
                out.append(torch.cat([s.reshape(-1) for s in t.scales]).view_as(t.param))
        return out

    def state_dict(self) -> tuple[Any, Any]:
        rule_state = [[state_to_dict(s) for s in t.states] for t in self.targets]
        noise_state = [[state_to_dict(s) for s in t.noise] if t.noise else None for t in self.targets]
        return rule_state, noise_state

    def load(self, rule_state: Any, noise_state: Any) -> None:
        if len(rule_state) != len(self.targets) or any(
            len(a) != len(t.states) for a, t in zip(rule_state, self.targets)
        ):
            raise ValueError("Modulator state_dict does not match the optimizer's modulated parameters")
        for ti, (t, st) in enumerate(zip(self.targets, rule_state)):
            t.states = [
                state_from_dict(cur, s, f"rule_state[{ti}][{i}]")
                for i, (cur, s) in enumerate(zip(t.states, st))
            ]
            ns = noise_state[ti]
            if (ns is None) != (t.noise is None):
                raise ValueError("Modulator state_dict: gradient-noise state does not match the sigma source")
            if t.noise is not None:
                t.noise = [
                    state_from_dict(cur, s, f"noise_state[{ti}][{i}]")
                    for i, (cur, s) in enumerate(zip(t.noise, ns))
                ]
