"""Mean-field Normal posterior over a flat parameter vector, with a fused sample + KL kernel.

All random parameters of a network live in two flat leaf tensors, ``loc`` and
``log_scale`` (``P`` elements each), so sampling, the KL term and the optimizer
touch one large tensor instead of many small ones. :class:`_SampleKL` draws
``w = loc + exp(log_scale) * eps`` and the analytic ``KL(q || p)`` to a Normal
prior in one autograd node with a hand-written backward; it computes exactly
the reparameterised ELBO gradient (tests compare it with autograd and with
Pyro's ``TraceMeanField_ELBO``), only without a graph of ~20 elementwise nodes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from uncertlr.torch import _native

#: One-particle draws of at least this many weights, on a CPU, with one prior precision for every weight, run
#: the compiled kernels (:mod:`uncertlr.torch._native`: one pass forward and one backward); smaller ones the eager
#: kernel below (a ``ctypes`` call costs more than it saves).
NATIVE_MIN_WEIGHTS = 1 << 14


def _native_kernels(
    loc: Tensor, log_scale: Tensor, eps: Tensor, prior_loc: Tensor | None, prior_prec: Tensor | float
) -> _native.Kernels | None:
    """The compiled kernels where they apply to this sample (see :data:`NATIVE_MIN_WEIGHTS`), else None."""
    if (
        isinstance(prior_prec, Tensor)
        or eps.dim() != 1
        or loc.numel() < NATIVE_MIN_WEIGHTS
        or loc.device.type != "cpu"
        or loc.dtype not in (torch.float32, torch.float64)
        or torch.compiler.is_compiling()
    ):
        return None
    for t in (loc, log_scale, eps) if prior_loc is None else (loc, log_scale, eps, prior_loc):
        if t.dtype != loc.dtype or t.device != loc.device or t.shape != loc.shape or not t.is_contiguous():
            return None
    k = _native.kernels()
    return k if k is not None and k.usable() else None


class _SampleKL(torch.autograd.Function):
    """``(loc[P], log_scale[P], eps[P] or [K, P]) -> (w, kl, scale)`` for prior ``N(prior_loc, 1/prior_prec)``.

    ``scale = exp(log_scale)`` is returned too (not differentiable) so that the posterior can hand
    the same tensor to the LR modulator's per-parameter rules instead of a second ``exp`` pass.

    ``prior_prec`` is a tensor ``[P]`` or, when every weight has the same prior precision (a
    :class:`~uncertlr.priors.Normal` prior), a number: the kernel then skips two elementwise
    products. Written for few passes over ``P``: the forward is two elementwise passes (``exp``
    and the sample) and three reductions, the backward three elementwise passes (four with
    several particles or a tensor precision); with the compiled kernels (one particle, a number
    precision, a CPU: see :data:`NATIVE_MIN_WEIGHTS`) the sample and the reductions are one pass,
    and so is the backward; the
    only tensors kept for the backward are the noise, ``scale`` and ``(loc - prior_loc)``
    (times ``prior_prec`` for a tensor precision).
    """

    @staticmethod
    def forward(
        ctx,
        loc: Tensor,
        log_scale: Tensor,
        eps: Tensor,
        prior_loc: Tensor | None,  # type: ignore[override]
        prior_prec: Tensor | float,
        kl_const: Tensor | float,
        sign: float = 1.0,
    ) -> tuple[Tensor, Tensor, Tensor]:
        # exp underflows to 0 below log_scale ~ -103 (float32): w = loc, and every formula below
        # (KL through log_scale itself, the gradients) is still exact in that limit
        scale = log_scale.exp()
        ctx.native = _native_kernels(loc, log_scale, eps, prior_loc, prior_prec)
        if ctx.native is not None:  # the same formulas in one pass (float64 sums)
            w = torch.empty_like(loc)
            diff = loc if prior_loc is None else torch.empty_like(loc)
            sums = torch.empty(3, dtype=torch.float64)
            ctx.native.sample(
                loc, log_scale, scale, eps, prior_loc, sign, w, None if prior_loc is None else diff, sums
            )
            s_log_scale, s_scale2, s_diff2 = sums.tolist()
            kl = torch.as_tensor(kl_const, dtype=loc.dtype) + (
                -s_log_scale + 0.5 * prior_prec * (s_scale2 + s_diff2)
            )
            ctx.prec, ctx.sign = prior_prec, sign
            ctx.save_for_backward(diff, scale, scale, eps)
            ctx.mark_non_differentiable(scale)
            return w, kl, scale
        # the noise is sign * eps (sign -1: an antithetic step, without a pass to negate eps)
        w = torch.addcmul(loc, scale, eps, value=sign)  # broadcasts over a leading particle dim
        diff = loc if prior_loc is None else loc - prior_loc
        # KL = sum[log sigma_p - log sigma + (sigma^2 + (mu - mu_p)^2) / (2 sigma_p^2) - 1/2]
        if isinstance(prior_prec, Tensor):
            diff_prec, scale_prec = diff * prior_prec, scale * prior_prec
            quad = torch.dot(scale, scale_prec) + torch.dot(diff, diff_prec)
        else:
            diff_prec, scale_prec = diff, scale
            quad = prior_prec * (torch.dot(scale, scale) + torch.dot(diff, diff))
        kl = kl_const - log_scale.sum() + 0.5 * quad
        ctx.prec = None if isinstance(prior_prec, Tensor) else prior_prec
        ctx.sign = sign
        ctx.save_for_backward(diff_prec, scale_prec, scale, eps)
        ctx.mark_non_differentiable(scale)
        return w, kl, scale

    @staticmethod
    def backward(ctx, grad_w: Tensor, grad_kl: Tensor, _grad_scale: Tensor | None):  # type: ignore[override]
        diff_prec, scale_prec, scale, eps = ctx.saved_tensors
        if ctx.native is not None:  # one pass: d_loc and d_log_scale as below
            g, gkl = grad_w.contiguous(), float(grad_kl)
            d_loc, d_log_scale = torch.empty_like(g), torch.empty_like(g)
            ctx.native.sample_grad(
                g, eps, scale, diff_prec, gkl * ctx.prec, gkl, ctx.sign, d_loc, d_log_scale
            )
            return d_loc, d_log_scale, None, None, None, None, None
        # a number precision c: diff_prec and scale_prec are (mu - mu_p) and sigma, times c below
        k = grad_kl if ctx.prec is None else grad_kl * ctx.prec
        g_sum = grad_w if grad_w.dim() == 1 else grad_w.sum(0)
        # d/d loc = sum_k dL/dw_k + grad_kl * (mu - mu_p) / sigma_p^2
        d_loc = torch.addcmul(g_sum, diff_prec, k)
        # d/d log_scale = sigma * (sum_k dL/dw_k eps_k + grad_kl * sigma / sigma_p^2) - grad_kl,
        # with sign * eps for eps: sign * sigma * (sum_k dL/dw_k eps_k + sign * grad_kl * sigma / sigma_p^2) - grad_kl
        sign = ctx.sign
        ge = grad_w * eps
        if ge.dim() > 1:
            ge = ge.sum(0)
        d_log_scale = torch.addcmul(
            -grad_kl, scale, ge.addcmul_(scale_prec, k if sign == 1 else -k), value=sign
        )
        return d_loc, d_log_scale, None, None, None, None, None


class MeanFieldNormal(nn.Module):
    """``q(w) = prod_j N(w_j | loc_j, exp(log_scale_j)^2)`` over named parameters stored flat.

    Args:
        named_init: parameter name -> initial mean (the network's current weights).
        init_scale: initial posterior std of every weight.

    Attributes:
        loc, log_scale: flat ``[P]`` leaf parameters (the optimizer's view).
        names, shapes: the parameters in storage order.
    """

    def __init__(self, named_init: dict[str, Tensor], init_scale: float):
        super().__init__()
        if not named_init:
            raise ValueError("select chose no parameters to make random")
        if not (math.isfinite(init_scale) and init_scale > 0):
            raise ValueError(f"init_scale must be positive and finite; got {init_scale!r}")
        self.names: list[str] = list(named_init)
        self.shapes: list[torch.Size] = [t.shape for t in named_init.values()]
        self.sizes: list[int] = [t.numel() for t in named_init.values()]
        dtypes = {t.dtype for t in named_init.values()}
        devices = {t.device for t in named_init.values()}
        if len(dtypes) != 1 or len(devices) != 1:
            raise ValueError(f"random parameters must share one dtype and device; got {dtypes} on {devices}")
        flat = torch.cat([t.detach().reshape(-1) for t in named_init.values()])
        if not torch.isfinite(flat).all():
            bad = [n for n, t in named_init.items() if not torch.isfinite(t).all()]
            raise ValueError(f"the network's weights contain NaN or inf: {bad}")
        self.loc = nn.Parameter(flat.clone())
        self.log_scale = nn.Parameter(torch.full_like(flat, math.log(init_scale)))
        # exp(log_scale) of the last sample_kl, and the (tensor, version) of log_scale it was computed from
        self._last_scale: tuple[Tensor, int, int] | None = None

    @property
    def num_params(self) -> int:
        return self.loc.numel()

    @property
    def scale(self) -> Tensor:
        """Flat posterior std ``[P]`` (differentiable), floored at the dtype's smallest normal number."""
        return self.log_scale.exp().clamp_min(torch.finfo(self.log_scale.dtype).tiny)

    def detached_scale(self, floor: bool = True) -> tuple[Tensor, bool]:
        """``(σ[P] detached, whether it is a fresh tensor the caller may overwrite)``.

        The ``exp(log_scale)`` of the last :meth:`sample_kl` while ``log_scale`` has not changed
        since (its version counter, bumped by every in-place update such as an optimizer step or
        ``load_state_dict``, and its identity are checked), floored like :attr:`scale`; otherwise
        computed afresh. Saves the per-parameter modulator rules one pass over ``P`` per step.
        (Writes through ``log_scale.data`` bypass the version counter; the next :meth:`sample_kl`
        refreshes the cache.)

        ``floor=False``: the cached σ as it is, where an ``exp`` that underflowed is 0 (a caller
        to whom 0 and the floor are the same saves the check, another pass over ``P``).
        """
        last, ls = self._last_scale, self.log_scale
        if last is not None and last[1] == id(ls) and last[2] == ls._version:
            sc = last[0]
            if not floor:
                return sc, False
            tiny = torch.finfo(ls.dtype).tiny
            if sc.device.type == "cpu" and bool(sc.min() >= tiny):  # a free host read on the CPU
                return sc, False
            return sc.clamp_min(tiny), True
        with torch.no_grad():
            return self.scale, True

    def draw(self, eps: Tensor) -> Tensor:
        """Weights ``loc + scale * eps`` ``[..., P]`` for standard-normal ``eps[..., P]`` (no KL)."""
        return torch.addcmul(self.loc, self.scale, eps)

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Split ``flat[..., P]`` into ``{name: tensor[..., *shape]}`` views."""
        lead = flat.shape[:-1]
        return {
            n: t.view(*lead, *s) for n, t, s in zip(self.names, flat.split(self.sizes, dim=-1), self.shapes)
        }

    def flatten(self, named: dict[str, Tensor]) -> Tensor:
        return torch.cat([named[n].reshape(-1) for n in self.names])

    def sample_kl(
        self,
        eps: Tensor,
        prior_loc: Tensor | None,
        prior_prec: Tensor | float,
        kl_const: Tensor | float,
        sign: float = 1.0,
    ) -> tuple[Tensor, Tensor]:
        """Weights ``[..., P]`` for standard-normal noise ``sign * eps[..., P]`` and the analytic KL (a scalar).

        ``prior_prec`` is the prior precision ``1 / sigma_p^2``: a tensor ``[P]``, or a number
        when it is the same for every weight. ``sign`` (1 or -1) negates the noise without a pass over it.
        """
        w, kl, scale = _SampleKL.apply(self.loc, self.log_scale, eps, prior_loc, prior_prec, kl_const, sign)
        if not torch.compiler.is_compiling():  # no Python-side cache inside a compiled graph
            self._last_scale = (scale, id(self.log_scale), self.log_scale._version)
        return w, kl
