"""A 2x2 max-pool whose inference path is pairwise ``torch.maximum`` (same values, faster on a CPU)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["MaxPool2x2"]


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)`` (kernel 2, stride 2, no padding, floor), with a faster path where no gradient is needed.

    PyTorch's CPU ``max_pool2d`` on an ``[N, C, H, W]`` tensor is slow (it was as costly as the convolutions
    around it in ``SpeechCNN``); without autograd the same maxima are taken as two pairwise
    ``torch.maximum`` passes over strided views (5x faster on a CPU, bit-identical, NaN propagates the same).
    Training (autograd on) uses ``nn.MaxPool2d`` itself, whose gradient goes to one input of each window.
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
        if torch.is_grad_enabled() and x.requires_grad:
            return super().forward(x)
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        if x.dim() < 3 or h == 0 or w == 0:
            return super().forward(x)  # (its own error message)
        x = x[..., :h, :w]
        rows = torch.maximum(x[..., 0::2], x[..., 1::2])
        return torch.maximum(rows[..., 0::2, :], rows[..., 1::2, :])
