"""Small convolutional networks for images: 8x8 digits and 28x28 MNIST-format images (torch)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from uncertlr_models._pool import MaxPool2x2

__all__ = ["ImageCNN"]


class ImageCNN(nn.Module):
    """``[conv3x3 -> ReLU -> (2x2 max-pool)] x len(channels) -> adaptive avg-pool -> linear``.

    Works for any image size of at least ``2 ** (len(channels) - 1)`` pixels a side:
    pooling follows every block but the last, then an adaptive average pool to
    ``pool x pool`` makes the head independent of the input size. No batch norm, so
    every weight can be made Bayesian and evaluated for many posterior samples at once.

    Args:
        in_channels: image channels (1 for digits / MNIST).
        num_classes: outputs (logits).
        channels: output channels of each convolution block.
        pool: side of the final adaptive average pool.

    Example:
        >>> import torch
        >>> from uncertlr_models import ImageCNN
        >>> net = ImageCNN(1, 10)
        >>> net(torch.zeros(2, 1, 8, 8)).shape, net(torch.zeros(2, 1, 28, 28)).shape
        (torch.Size([2, 10]), torch.Size([2, 10]))
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        *,
        channels: Sequence[int] = (16, 32),
        pool: int = 2,
    ):
        super().__init__()
        if not channels:
            raise ValueError("channels must name at least one convolution block")
        layers: list[nn.Module] = []
        width = in_channels
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(width, c, 3, padding=1), nn.ReLU()]
            if i < len(channels) - 1:
                layers.append(MaxPool2x2())
            width = c
        layers.append(nn.AdaptiveAvgPool2d(pool))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width * pool * pool, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` of images ``[B, C, H, W]`` (``[B, H, W]`` is read as one channel)."""
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return self.head(self.features(x).flatten(1))
