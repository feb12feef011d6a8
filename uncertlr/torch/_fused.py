"""Fused per-parameter rule updates for the torch :class:`~uncertlr.torch.Modulator`.

The rules P1-P3 (:class:`~uncertlr.modulation.SigmaRatio`, :class:`~uncertlr.modulation.GradSigmaRatio`,
:class:`~uncertlr.modulation.VarianceRatio`) and the gradient-noise estimate
(:class:`~uncertlr.modulation.GradientNoise`) are written once on the array API as pure functions
of one tensor (``uncertlr.modulation``); written that way each step makes ~15 passes over every
weight, each into a fresh tensor, plus one small op per named parameter. :class:`FusedRule`
computes exactly the same factors for one flat tensor split into segments (a BNN's flat
posterior mean, one segment per named parameter; or one deterministic parameter): elementwise
work runs in place over the whole flat tensor at once, the per-segment means are one
``torch._foreach_norm`` call, and the per-segment state lives in flat tensors. The per-segment
:class:`~uncertlr.modulation.ParamState` / :class:`~uncertlr.modulation.NoiseState` values are
views of those tensors, so checkpoints and ``Modulator.rule_state`` are unchanged. Every update
allocates new state tensors (states stay immutable values, as in the reference). On a CPU, with
``renormalize`` (the default), the segment means are read on the host and the factors computed as
``clip(raw^κ, lo r, hi r)`` renormalised (``r`` the mean to the power κ, which the renormalisation
cancels): two passes fewer, and the factors' sum known without a third (``last_total``).

``tests/torch/test_fused.py`` holds it to the reference rules on random inputs (non-finite
values, warm-up, both ``renormalize`` settings, several segments).

Example:
    >>> import torch
    >>> from uncertlr.modulation import GradSigmaRatio
    >>> rule = GradSigmaRatio(warmup=0, decay=0.0, renormalize=False)
    >>> fused = FusedRule(rule, [3], [rule.init(torch.zeros(3))])
    >>> fused.update(torch.tensor([1.0, -1.0, 4.0]), torch.tensor([1.0, 4.0, 1.0])).round(decimals=3)
    tensor([1.7320, 0.8660, 0.8660])
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from uncertlr.modulation import (
    GradientNoise,
    GradSigmaRatio,
    NoiseState,
    ParamState,
    SigmaRatio,
    VarianceRatio,
)
from uncertlr.torch import _native

__all__ = ["FusedRule", "supports"]

#: Device types whose per-segment sums run as one multi-tensor kernel (see ``FusedRule._segment_mean``).
MULTI_TENSOR_DEVICES = frozenset({"cuda"})

_MEASURES = {SigmaRatio: "sigma", GradSigmaRatio: "grad_sigma", VarianceRatio: "variance"}


def supports(rule: object) -> bool:
    """Whether ``rule`` is one of the built-in per-parameter rules (exactly; a subclass may change the math)."""
    return type(rule) in _MEASURES


#: The clamp bounds the host path (``FusedRule._factors_on_host``) works with stay within these, so the
#: factors' sums cannot overflow or underflow; outside them the update takes the general path.
_HOST_BOUNDS = (1e-20, 1e20)


_F32 = struct.Struct("f")


def _float32(x: float) -> float:
    """``x`` rounded to float32 (round to nearest even; beyond float32's range, inf), as a float."""
    try:
        return _F32.unpack(_F32.pack(x))[0]  # type: ignore[no-any-return]
    except OverflowError:
        return math.copysign(math.inf, x)


def _host_ok(ok: Tensor) -> bool | None:
    """``all(ok)`` read on the CPU (free there); ``None`` elsewhere (select on the device instead)."""
    if ok.device.type == "cpu" and not torch.compiler.is_compiling():
        return bool(ok.all())
    return None


class FusedRule:
    """A built-in per-parameter rule over one flat tensor of ``sum(sizes)`` elements split into segments.

    Args:
        rule: a :class:`~uncertlr.modulation.SigmaRatio`, :class:`~uncertlr.modulation.GradSigmaRatio`
            or :class:`~uncertlr.modulation.VarianceRatio` (see :func:`supports`).
        sizes: the segment sizes; each segment gets its own reference mean, as with one
            ``rule.update`` per segment.
        states: one ``rule.init`` (or a restored) state per segment.
        noise, noise_states: the gradient-noise estimator and its per-segment states, when σ
            comes from the gradient's noise rather than from the caller.
    """

    def __init__(
        self,
        rule: SigmaRatio | GradSigmaRatio | VarianceRatio,
        sizes: Sequence[int],
        states: Sequence[ParamState],
        noise: GradientNoise | None = None,
        noise_states: Sequence[NoiseState] | None = None,
    ):
        if not supports(rule):
            raise TypeError(f"no fused update for {type(rule).__name__}")
        self.rule, self.measure = rule, _MEASURES[type(rule)]
        self.sizes = list(sizes)
        self.noise = noise
        #: the sum of the last update's factors when the host path knew it (``None``: not known)
        self.last_total: float | None = None
        #: the smallest and largest of the last update's factors when the compiled kernels knew them
        self.last_range: tuple[float, float] | None = None
        self._nbuf: dict[str, Tensor] | None = None  # the compiled kernels' small per-segment buffers
        self._nbuf_np: dict[str, Any] = {}  # the same as numpy arrays
        self._spare: tuple[Tensor, Tensor | None] | None = None  # the arrays the compiled path writes next
        # the compiled kernels when the last update left its renormalisation (``x *= c`` per segment, the
        # buffers "op" and "c") pending: ``apply_`` uses the renormalised factors without writing them (they are
        # written only when read: ``flush``), so ``scale`` holds them up to one multiplier per segment
        self._pending: _native.Kernels | None = None
        self.load(states, noise_states)

    # ------------------------------------------------------------------ state

    def load(self, states: Sequence[ParamState], noise_states: Sequence[NoiseState] | None = None) -> None:
        """Take per-segment states (from ``rule.init`` or a checkpoint) into the flat layout."""
        if len(states) != len(self.sizes):
            raise ValueError(f"{len(states)} states for {len(self.sizes)} segments")
        first = states[0].scale
        self.dtype, self.device = first.dtype, first.device
        self._spare = None
        self._pending = None
        self._noise_spare: tuple[Tensor, Tensor] | None = None
        self.tiny = torch.finfo(self.dtype).tiny
        self.numel = torch.tensor(self.sizes, dtype=self.dtype, device=self.device)
        self._step_like = states[0].step  # dtype and device of the per-segment step counts
        self.nonfinite = torch.stack([s.nonfinite for s in states])
        self.scale = torch.cat([s.scale.reshape(-1) for s in states])
        self._zero_ema = [s.ema for s in states] if self.measure != "grad_sigma" else None
        self.ema = torch.cat([s.ema.reshape(-1) for s in states]) if self.measure == "grad_sigma" else None
        # the step counts live in Python (the warm-up test is a comparison, and advancing them costs no
        # tensor op); ``step`` makes the tensor when a state is read
        self._steps = [int(s.step) for s in states]
        if self.noise is not None:
            if noise_states is None or len(noise_states) != len(self.sizes):
                raise ValueError("the gradient-noise estimate needs one state per segment")
            self.count = torch.stack([s.count for s in noise_states])
            self.mean = torch.cat([s.mean.reshape(-1) for s in noise_states])
            self.sq = torch.cat([s.sq.reshape(-1) for s in noise_states])

    @property
    def step(self) -> Tensor:
        """The per-segment step counts ``[num_segments]`` (a new tensor)."""
        like = self._step_like
        return torch.tensor(self._steps, dtype=like.dtype, device=like.device)

    @property
    def states(self) -> list[ParamState]:
        """Per-segment :class:`~uncertlr.modulation.ParamState` copies of the flat state (the compiled path
        reuses the flat arrays two updates later, so a state read now must not be a view of them)."""
        self.flush()
        emas = self.ema.split(self.sizes) if self.ema is not None else self._zero_ema
        step = self.step
        return [
            ParamState(step[i], emas[i].clone(), s.clone(), self.nonfinite[i])  # type: ignore[index]
            for i, s in enumerate(self.scale.split(self.sizes))
        ]

    @property
    def noise_states(self) -> list[NoiseState] | None:
        """Per-segment :class:`~uncertlr.modulation.NoiseState` copies (``None`` without a noise estimate;
        copies for the reason :attr:`states` gives)."""
        if self.noise is None:
            return None
        pairs = zip(self.mean.split(self.sizes), self.sq.split(self.sizes))
        return [NoiseState(self.count[i], m.clone(), q.clone()) for i, (m, q) in enumerate(pairs)]

    # ------------------------------------------------------------------ update

    def _segment_mean(self, x: Tensor, segments: Sequence[Tensor] | None = None) -> Tensor:
        """Per-segment means ``[num_segments]`` of ``x >= 0`` (NaN/inf propagate); ``segments``: ``x``'s
        views per segment when the caller has them already (each split costs host work per segment).

        On a CPU one ``sum`` per segment: for ``x >= 0`` the same as the L1 norm, and ~10x faster
        there (``_foreach_norm(·, 1)`` took 0.54 ms for a 478k-weight MLP, the sums 0.05 ms). On a
        GPU a launch per segment (62 for a ResNet-18, twice a step) costs more than the sums: there
        one multi-tensor ``_foreach_norm(·, 1)``.
        """
        segments = x.split(self.sizes) if segments is None else segments
        if len(segments) > 1 and x.device.type in MULTI_TENSOR_DEVICES:
            return torch.stack(torch._foreach_norm(segments, 1)) / self.numel
        return torch.stack([seg.sum() for seg in segments]) / self.numel

    def _scale_segments_(self, x: Tensor, factors: Tensor, segments: Sequence[Tensor] | None = None) -> None:
        """``x[segment i] *= factors[i]`` in place (``segments``: as for :meth:`_segment_mean`)."""
        if len(self.sizes) == 1:
            x.mul_(factors[0])
        else:
            segments = x.split(self.sizes) if segments is None else segments
            torch._foreach_mul_(list(segments), list(factors.unbind()))

    def _keep_old_(self, ok: Tensor, new: Tensor, old: Tensor) -> None:
        """Where a segment is not ``ok``, put ``old`` back into (freshly allocated) ``new``."""
        all_ok = _host_ok(ok)
        if all_ok:
            return
        if all_ok is None:  # an accelerator, or tracing: select on the device
            keep = ok.repeat_interleave(self.numel.long(), output_size=new.numel())
            torch.where(keep, new, old, out=new)
            return
        for i, (n, o) in enumerate(zip(new.split(self.sizes), old.split(self.sizes))):
            if not bool(ok[i]):
                n.copy_(o)

    def _noise_sigma(self, grad: Tensor) -> Tensor:
        """Fold ``grad`` into the gradient moments; returns σ up to a positive factor per segment (a new tensor).

        The estimator's ``σ = sqrt(max(sq / corr - (mean / corr)^2, 0))`` is ``sqrt(1 / corr)`` times
        ``sqrt(max(sq - mean^2 / corr, 0))``; every rule divides σ (or its square) by its own segment mean,
        so the factor per segment cancels and the second form is returned: two passes fewer.
        """
        d = self.noise.decay  # type: ignore[union-attr]
        g2 = grad * grad
        # a non-finite gradient, or a square that overflows, leaves a segment's moments untouched
        ok = torch.isfinite(self._segment_mean(g2))
        mean = torch.lerp(self.mean, grad, 1.0 - d)
        sq = torch.lerp(self.sq, g2, 1.0 - d, out=g2)
        self._keep_old_(ok, mean, self.mean)
        self._keep_old_(ok, sq, self.sq)
        self.mean, self.sq = mean, sq
        inv_corr = self._count(ok)
        # sigma * sqrt(corr) = sqrt(max(sq - mean^2 / corr, 0)); square, then subtract (not addcmul: a fused
        # multiply-add leaves a rounding residue where the variance cancels to exactly 0, e.g. with decay 0)
        m2 = mean.square()
        self._scale_segments_(m2, inv_corr)
        return torch.sub(sq, m2, out=m2).clamp_min_(0.0).sqrt_()

    def update(
        self, grad: Tensor | None, sigma: Tensor | None, sigma_owned: bool = False, *, defer: bool = False
    ) -> Tensor:
        """The factors ``s[P]`` for this step (the state advances). The tensor is the new state's own array;
        the compiled path writes the update after next into it, so copy it to keep it longer.

        Args:
            grad: the flat gradient ``[P]`` (needed by P2 and by the gradient-noise estimate).
            sigma: the flat σ ``[P]``; ``None`` when the gradient-noise estimate supplies it.
            sigma_owned: ``sigma`` is a temporary the update may overwrite.
            defer: the compiled path may leave the renormalisation pending: the caller then applies the
                factors with :meth:`apply_` (which finishes them in its pass), or calls :meth:`flush` before
                it reads them. Reading :attr:`states` and the next update flush it themselves.
        """
        # the previous update's factors may still await their multipliers: this update reads them only to keep a
        # non-finite segment at its old factors, so they are taken along instead of written out
        prev_c = self._take_pending()
        rule = self.rule
        if grad is not None and grad.dtype != self.dtype:
            grad = grad.to(self.dtype)
        ema = None
        self.last_range = None
        kern = self._native_kernels(sigma if sigma is not None else grad)  # type: ignore[arg-type]
        if sigma is None and kern is not None:
            raw, ema, ref = self._noise_measure_native(kern, grad)  # type: ignore[arg-type]
        elif sigma is None:
            sigma, sigma_owned = self._noise_sigma(grad), True  # type: ignore[arg-type]
        elif sigma.dtype != self.dtype:
            sigma = sigma.to(self.dtype)
        if kern is not None:
            if sigma is not None:
                raw, ema, ref = self._measure_native(kern, grad, sigma, sigma_owned)
        elif self.measure == "grad_sigma":
            ema = torch.lerp(self.ema, grad, 1.0 - rule.decay)  # type: ignore[arg-type]
            raw = sigma.mul_(ema) if sigma_owned else sigma * ema
            raw.abs_()
        elif self.measure == "variance":
            raw = sigma.square_() if sigma_owned else sigma * sigma
        else:
            raw = sigma if sigma_owned else sigma.clone()
        # views of raw per segment, made where needed (raw changes in place)
        segs: Sequence[Tensor] | None = None
        if kern is None:
            segs = raw.split(self.sizes)
            ref = self._segment_mean(raw, segs)
            finite = self._factors_on_host(raw, segs, ref)
        else:  # the segment means were computed on the host (floats, rounded to the state's dtype)
            finite = self._factors_native(kern, raw, ref)
            if finite is None:
                ref = torch.tensor(ref, dtype=self.dtype)
        if finite is None:
            segs = raw.split(self.sizes) if segs is None else segs
            ok = torch.isfinite(ref)
            # ((raw + tiny) / (ref + tiny))^kappa: exactly 1 where a whole segment is 0
            raw.add_(self.tiny)
            self._scale_segments_(raw, (ref + self.tiny).reciprocal_(), segs)
            active = [st >= rule.warmup for st in self._steps]
            if all(active) or not any(active):
                lo, hi = (rule.s_min, rule.s_max) if active[0] else (1.0, 1.0)
                raw.pow_(rule.kappa).clamp_(lo, hi)
            else:  # segments restored at different steps
                raw.pow_(rule.kappa)
                for a, seg in zip(active, segs):
                    seg.clamp_(*((rule.s_min, rule.s_max) if a else (1.0, 1.0)))
            if rule.renormalize:
                self._scale_segments_(raw, self._segment_mean(raw, segs).reciprocal_(), segs)
        else:  # known on the host: nothing to restore or count when every segment is finite
            ok = None if all(finite) else torch.tensor(finite, device=self.device)
        if ok is not None:
            self._keep_old_(ok, raw, self.scale)
            if prev_c is not None:  # the old factors' pending renormalisation, on the segments kept
                for i, (n, f) in enumerate(zip(raw.split(self.sizes), ok.tolist())):
                    if not f and prev_c[i] != 1.0:
                        n.mul_(prev_c[i])
            if ema is not None:
                self._keep_old_(ok, ema, self.ema)  # type: ignore[arg-type]
            self.nonfinite = self.nonfinite + (~ok).to(self.nonfinite.dtype)
        # the compiled path writes the next update into the arrays this one replaces (no state refers to them:
        # ``states`` hands out copies); the eager path allocates afresh
        self._spare = (self.scale, self.ema if ema is not None else None) if kern is not None else None
        if ema is not None:
            self.ema = ema
        self.scale = raw
        self._steps = [st + 1 for st in self._steps]
        # the host path knows each renormalised segment's sum (its size); a segment kept at its old factors
        # is summed
        if finite is None:
            self.last_total = None
        elif all(finite):
            self.last_total = float(sum(self.sizes))
        else:
            segs = raw.split(self.sizes) if segs is None else segs
            self.last_total = sum(n if f else float(seg.sum()) for n, f, seg in zip(self.sizes, finite, segs))
        if not defer:
            self.flush()
        return raw

    def flush(self) -> None:
        """Finish the last update's factors where their renormalisation is still pending (see :meth:`apply_`)."""
        kern, self._pending = self._pending, None
        if kern is not None:
            buf = self._buffers()
            kern.scale(buf["sizes"], buf["op"], buf["c"], self.scale)

    def _take_pending(self) -> list[float] | None:
        """The pending renormalisation as one multiplier per segment (``None``: nothing pending), now the
        caller's to apply; ``scale`` is left as it is."""
        if self._pending is None:
            return None
        self._pending = None
        host = self._nbuf_np
        return [c if op == 1 else 1.0 for op, c in zip(host["op"].tolist(), host["c"].tolist())]

    def apply_(self, before: Tensor, theta: Tensor) -> None:
        """``theta ← before + s ⊙ (theta − before)`` in place with the last update's factors ``s``
        (``torch.lerp``); flat ``[P]`` tensors. Where the compiled path left the renormalisation pending, the
        factors are renormalised on the fly in the same pass and, when the modulator's record does not need
        them (every segment finite: their range is known), not written back until something reads them."""
        kern = self._pending
        if (
            kern is not None
            and theta.dtype == self.dtype
            and before.dtype == self.dtype
            and theta.is_contiguous()
            and before.is_contiguous()
            and theta.device.type == "cpu"
        ):
            keep = self.last_range is not None  # every segment finite: the record reads no factor
            if not keep:
                self._pending = None
            buf = self._buffers()
            kern.apply(buf["sizes"], buf["op"], buf["c"], self.scale, before, theta, write_x=not keep)
            return
        self.flush()
        s = self.scale if self.scale.dtype == theta.dtype else self.scale.to(theta.dtype)
        torch.lerp(before, theta, s, out=theta)

    def _factors_on_host(self, raw: Tensor, segs: Sequence[Tensor], ref: Tensor) -> list[bool] | None:
        """:meth:`update`'s factors with ``renormalize`` on a CPU, the segment means read on the host;
        returns which segments are finite (the others are left for the caller to restore), or ``None``
        (nothing changed) where this path does not apply.

        With ``renormalize`` the reference's ``clip(((raw + tiny) / (ref + tiny))^κ, lo, hi)`` need not
        be divided by the mean first: for ``r = (ref + tiny)^κ`` it is ``clip(raw^κ, lo r, hi r) / r``
        (up to ``tiny``), and the ``1 / r`` cancels in the renormalisation. That saves two passes over
        ``P`` (the ``+ tiny`` and the division), and the factors' sum is then known without a third
        (each renormalised segment sums to its size). A segment whose ``raw`` is all 0 (or still in
        warm-up) gets factors of exactly 1, as in the reference; bounds ``lo r, hi r`` outside
        ``_HOST_BOUNDS`` (``raw`` means near the dtype's limits) take the general path.
        """
        rule = self.rule
        if not (
            rule.renormalize
            and raw.device.type == "cpu"
            and raw.dtype in (torch.float32, torch.float64)
            and not torch.compiler.is_compiling()
        ):
            return None
        kappa = rule.kappa
        plan = self._plan(ref.tolist())
        if plan is None:
            return None
        raw.pow_(kappa)
        live = [i for i, p in enumerate(plan) if isinstance(p, tuple)]
        for i in live:
            segs[i].clamp_(*plan[i])  # type: ignore[misc]
        if live:
            sums = torch.stack([segs[i].sum() for i in live]).tolist()
            torch._foreach_mul_([segs[i] for i in live], [self.sizes[i] / sm for i, sm in zip(live, sums)])
        for i, p in enumerate(plan):
            if p == 1.0:
                segs[i].fill_(1.0)
        return [p is not None for p in plan]

    def _plan(self, means: list[float]) -> list[tuple[float, float] | float | None] | None:
        """Per segment with ``renormalize``: the clip bounds ``(lo r, hi r)`` of ``raw^κ``, a constant
        ``1.0`` (a segment whose mean is 0, or in warm-up), or ``None`` (not finite); ``None`` in all
        when a bound leaves ``_HOST_BOUNDS`` (the general path then runs)."""
        rule = self.rule
        kappa, floor, ceil = rule.kappa, *_HOST_BOUNDS
        plan: list[tuple[float, float] | float | None] = []
        for m, step in zip(means, self._steps):
            if not math.isfinite(m):
                plan.append(None)
            elif m == 0.0 or step < rule.warmup:
                plan.append(1.0)
            else:
                try:
                    r = (m + self.tiny) ** kappa  # a Python float: range checked next
                except OverflowError:
                    return None
                lo, hi = rule.s_min * r, rule.s_max * r
                if not floor < lo <= hi < ceil:
                    return None
                plan.append((lo, hi))
        return plan

    # ------------------------------------------------------------------ compiled kernels (uncertlr.torch._native)

    def _native_kernels(self, like: Tensor) -> _native.Kernels | None:
        """The compiled kernels where they apply: the host path's conditions (a CPU, float32/64,
        ``renormalize``, not tracing), and the kernels built and usable at torch's thread count."""
        if not (
            self.rule.renormalize
            and self.device.type == "cpu"
            and self.dtype in (torch.float32, torch.float64)
            and like.device.type == "cpu"  # σ, or the gradient when σ comes from its noise
            and not torch.compiler.is_compiling()
        ):
            return None
        kern = _native.kernels()
        return kern if kern is not None and kern.usable() else None

    def _buffers(self) -> dict[str, Tensor]:
        if self._nbuf is None:
            n = len(self.sizes)
            f64 = {"dtype": torch.float64}
            self._nbuf = {
                "sizes": torch.tensor(self.sizes, dtype=torch.int64),
                "op": torch.zeros(n, dtype=torch.int8),
                "upd": torch.zeros(n, dtype=torch.int8),
                "ic": torch.zeros(n, dtype=torch.float64),
                **{k: torch.zeros(n, **f64) for k in ("sums", "lo", "hi", "c", "mins", "maxs")},  # type: ignore[arg-type]
            }
            self._nbuf_np = {k: v.numpy() for k, v in self._nbuf.items()}
        return self._nbuf

    def _count(self, ok: Tensor) -> Tensor:
        """Count this step's gradient into the segments that are ``ok``; returns each segment's ``1 / corr``,
        the gradient-noise moments' bias correction ``1 / (1 - decay^count)``."""
        self.count = self.count + ok.to(self.count.dtype)
        d = self.noise.decay  # type: ignore[union-attr]
        return (1.0 - torch.pow(d, self.count)).clamp_min_(torch.finfo(self.count.dtype).tiny).reciprocal_()

    def _next_arrays(self, owned: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Where the compiled path writes this update's factors and (P2) EMA: the arrays the previous update
        replaced, else ``owned`` (a σ the caller gave away) or new ones."""
        spare_scale, spare_ema = self._spare or (None, None)
        raw = (
            spare_scale
            if spare_scale is not None
            else owned
            if owned is not None
            else torch.empty_like(self.scale)
        )
        if self.measure != "grad_sigma":
            return raw, None
        return raw, spare_ema if spare_ema is not None else torch.empty_like(self.ema)  # type: ignore[arg-type]

    def _measure_native(
        self, kern: _native.Kernels, grad: Tensor | None, sigma: Tensor, sigma_owned: bool
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """The measure ``raw`` (see :meth:`_next_arrays`), P2's new EMA, and the segment means (in the
        state's dtype, as the eager sums would give them) in one pass."""
        buf = self._buffers()
        sigma = sigma.contiguous()
        raw, ema = self._next_arrays(sigma if sigma_owned else None)
        if ema is not None:
            grad = grad.contiguous()  # type: ignore[union-attr]
        kern.measure(
            self.measure,
            buf["sizes"],
            self.ema,
            grad if ema is not None else None,
            sigma,
            1.0 - self.rule.decay,
            ema,
            raw,
            buf["sums"],
        )
        return raw, ema, self._host_means()

    def _host_means(self) -> list[float]:
        """The segment means from the kernels' double sums, rounded to the state's dtype (a float32 mean that
        overflows is inf, as the eager path's would be), as Python floats: no tensor or numpy op beyond one read
        of the sums (numpy's 0-d arithmetic costs ~50 µs here right after a training step)."""
        means = [t / n for t, n in zip(self._nbuf_np["sums"].tolist(), self.sizes)]
        return means if self.dtype == torch.float64 else [_float32(m) for m in means]

    def _noise_measure_native(
        self, kern: _native.Kernels, grad: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """:meth:`_noise_sigma` and :meth:`_measure_native` in two passes: the segment sums of ``g²`` (a
        segment whose sum is not finite keeps its moments), then the moments, σ up to a factor per segment,
        the measure and its sums."""
        buf, host = self._buffers(), self._nbuf_np
        grad = grad.contiguous()
        kern.sumsq(buf["sizes"], grad, buf["sums"])
        # as the eager path: a segment whose mean square is not finite in the state's dtype keeps its moments
        ok = torch.isfinite((buf["sums"] / buf["sizes"]).to(self.dtype))
        host["upd"][:] = ok.numpy()
        host["ic"][:] = self._count(ok).double().numpy()
        d = self.noise.decay  # type: ignore[union-attr]
        mean_out, sq_out = self._noise_spare or (torch.empty_like(self.mean), torch.empty_like(self.sq))
        raw, ema = self._next_arrays(None)
        kern.noise_measure(
            self.measure,
            buf["sizes"],
            buf["upd"],
            buf["ic"],
            1.0 - d,
            (self.mean, self.sq),
            (mean_out, sq_out),
            self.ema,
            grad,
            1.0 - self.rule.decay,
            ema,
            raw,
            buf["sums"],
        )
        self._noise_spare = (self.mean, self.sq)
        self.mean, self.sq = mean_out, sq_out
        return raw, ema, self._host_means()

    def _factors_native(self, kern: _native.Kernels, raw: Tensor, means: list[float]) -> list[bool] | None:
        """:meth:`_factors_on_host` with the compiled kernels: the power, the clip and the sums in one
        pass, the renormalisation in a second; also records the factors' range (``last_range``).
        ``means``: the segment means (the state's dtype's values, as floats)."""
        plan = self._plan(means)
        if plan is None:
            return None
        buf, host = self._buffers(), self._nbuf_np  # the same memory as numpy arrays: host writes and reads
        live = [i for i, p in enumerate(plan) if isinstance(p, tuple)]
        # one numpy assignment per buffer (a numpy scalar write per segment costs more)
        host["op"][:] = [1 if isinstance(p, tuple) else (2 if p == 1.0 else 0) for p in plan]
        if live:  # whole-buffer assignments: numpy's fancy indexing costs several times more
            host["lo"][:] = [p[0] if isinstance(p, tuple) else 0.0 for p in plan]
            host["hi"][:] = [p[1] if isinstance(p, tuple) else 0.0 for p in plan]
        power = _native.POWERS.get(self.rule.kappa)
        if power is None:
            raw.pow_(self.rule.kappa)
            power = _native.IDENTITY
        kern.factors(
            buf["sizes"], buf["op"], power, buf["lo"], buf["hi"], raw, buf["sums"], buf["mins"], buf["maxs"]
        )
        c: list[float] = []
        if live:
            sums = host["sums"].tolist()
            c = [self.sizes[i] / sums[i] for i in live]
            cs = dict(zip(live, c))
            host["c"][:] = [cs.get(i, 1.0) for i in range(len(plan))]
            self._pending = kern  # raw *= c per segment: in apply_'s pass, or flush()
        finite = [p is not None for p in plan]
        if all(finite):
            mins, maxs = host["mins"].tolist(), host["maxs"].tolist()
            rest = [1.0] if len(live) < len(plan) else []
            lows = [mins[i] * ci for i, ci in zip(live, c)] + rest
            highs = [maxs[i] * ci for i, ci in zip(live, c)] + rest
            self.last_range = (min(lows), max(highs))
        return finite
