"""A 2x2 max-pool that takes ``nn.MaxPool2d(2)``'s maxima and gradients faster on a CPU."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["MaxPool2x2"]


def _layout(x: Tensor) -> torch.memory_format:
    """channels-last for a tensor stored that way (and not also contiguous), else the contiguous format."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class _ChannelsLastMaxPool(torch.autograd.Function):
    """``max_pool2d(x, 2)`` of an ``[N, C, H, W]`` CPU tensor, pooled in channels-last order.

    ATen's CPU kernel for a contiguous input visits one window at a time (~6 ns per input number); its
    channels-last kernel vectorises across channels (~4x faster with the layout copy: 4.2 vs 15.5 ms on a
    [64, 16, 40, 64] input, one thread). Both kernels pick the same input of each window (the first maximum,
    NaN first; checked on ties and NaN), and the backward is ATen's own ``max_pool2d_with_indices_backward``,
    so values and gradients equal ``nn.MaxPool2d(2)``'s bit for bit. Under ``torch.func.vmap`` (a BNN's
    particles) the vmapped dimension joins the batch dimension.
    """

    @staticmethod
    def forward(x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        y, idx = torch.nn.functional.max_pool2d(
            x.contiguous(memory_format=torch.channels_last), 2, return_indices=True
        )
        # the output in the input's layout, as nn.MaxPool2d's
        return y.contiguous(memory_format=_layout(x)), idx

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: tuple[Tensor, Tensor]) -> None:
        # x only for its sizes and layout (the ReLU before keeps it alive anyway)
        ctx.save_for_backward(inputs[0], output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _grad_idx: Tensor | None) -> Tensor:  # type: ignore[override]
        x, idx = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(
            grad.contiguous(memory_format=_layout(x)), x, [2, 2], [2, 2], [0, 0], [1, 1], False, idx
        )

    @staticmethod
    def vmap(
        info: Any, in_dims: tuple[int | None], x: Tensor
    ) -> tuple[tuple[Tensor, Tensor], tuple[int, int]]:
        (dim,) = in_dims
        if dim is None:  # pragma: no cover - vmap only calls the rule with a batched input
            return _ChannelsLastMaxPool.apply(x), (None, None)
        x = x.movedim(dim, 0)
        y, idx = _ChannelsLastMaxPool.apply(x.flatten(0, 1).contiguous())  # [V * N, C, H, W]
        return (y.unflatten(0, x.shape[:2]), idx.unflatten(0, x.shape[:2])), (0, 0)


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)`` (kernel 2, stride 2, no padding, floor), faster on a CPU, same values and gradients.

    PyTorch's CPU ``max_pool2d`` on a contiguous ``[N, C, H, W]`` tensor is slow (it was as costly as the
    convolutions around it in ``SpeechCNN``). Without autograd the same maxima are taken as two pairwise
    ``torch.maximum`` passes over strided views (5x faster, bit-identical, NaN propagates the same); with
    autograd (grad mode) on a CPU the input is pooled in channels-last order and the gradient goes through ATen's own
    ``max_pool2d`` backward with the same window indices as ``nn.MaxPool2d``'s (values and gradients bit
    for bit). On other devices, and under ``torch.compile``, it is ``nn.MaxPool2d`` itself.
    A subclass of ``nn.MaxPool2d``: the module's ``repr``, ``state_dict`` (none) and ``isinstance`` checks
    are those of ``nn.MaxPool2d(2)``.

    Example:
        >>> import torch
        >>> x = torch.randn(2, 3, 5, 6)
        >>> with torch.no_grad():
        ...     torch.equal(MaxPool2x2()(x), torch.nn.MaxPool2d(2)(x))
        True
    """

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        if x.dim() not in (3, 4) or h == 0 or w == 0 or torch.compiler.is_compiling():
            return super().forward(x)  # (its own error message; inductor has its own pooling)
        if torch.is_grad_enabled():
            # (under torch.func.vmap, e.g. a BNN's particles, `x.requires_grad` reads False even when the
            # gradient is wanted, so grad mode alone decides; without a gradient the Function costs ~2x the
            # pairwise path below and still a quarter of nn.MaxPool2d's)
            if x.device.type == "cpu" and x.dtype.is_floating_point:
                if x.dim() == 3:
                    return _ChannelsLastMaxPool.apply(x.unsqueeze(0))[0].squeeze(0)
                return _ChannelsLastMaxPool.apply(x)[0]
            return super().forward(x)
        x = x[..., :h, :w]
        rows = torch.maximum(x[..., 0::2], x[..., 1::2])
        return torch.maximum(rows[..., 0::2, :], rows[..., 1::2, :])
