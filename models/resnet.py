"""ResNet-18 (He et al., 2016) for small images (torch), written here because torchvision is optional.

The layout is torchvision's ``resnet18`` (basic blocks ``[2, 2, 2, 2]``, widths 64-128-256-512,
global average pool, linear head) with a choice of stem: ``"cifar"`` (a 3x3 convolution, no
max-pool: the usual stem for 32x32 images) or ``"imagenet"`` (7x7 stride-2 convolution and a
3x3 max-pool). ``norm="batch"`` matches torchvision; ``norm="group"`` (GroupNorm) or
``"none"`` keeps no batch statistics, so a BNN of it can evaluate several weight draws at once
in training mode too.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ResNet18"]

_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, channels // 4), channels)
    return nn.Identity()


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=norm == "none")
        self.bn1 = _norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=norm == "none")
        self.bn2 = _norm(norm, cout)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=norm == "none"), _norm(norm, cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for images ``[B, in_channels, H, W]`` -> logits ``[B, num_classes]``.

    Args:
        num_classes: outputs (logits).
        in_channels: image channels.
        stem: ``"cifar"`` (3x3 conv, for 32x32 images) or ``"imagenet"`` (7x7/2 conv + max-pool).
        norm: ``"batch"`` (as torchvision), ``"group"`` or ``"none"``.
        width: channels of the first stage (64 in the paper; the later stages double it).

    Example:
        >>> import torch
        >>> from uncertlr_models import ResNet18
        >>> net = ResNet18(10)
        >>> net(torch.zeros(2, 3, 32, 32)).shape, sum(p.numel() for p in net.parameters())
        (torch.Size([2, 10]), 11173962)
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        *,
        stem: str = "cifar",
        norm: str = "batch",
        width: int = 64,
    ):
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet'; got {stem!r}")
        if norm not in ("batch", "group", "none"):
            raise ValueError(f"norm must be 'batch', 'group' or 'none'; got {norm!r}")
        if width < 4 or width % 4:
            raise ValueError(f"width must be a positive multiple of 4; got {width!r}")
        layers: list[nn.Module]
        if stem == "cifar":
            layers = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=norm == "none")]
        else:
            layers = [nn.Conv2d(in_channels, width, 7, 2, 3, bias=norm == "none")]
        layers += [_norm(norm, width), nn.ReLU()]
        if stem == "imagenet":
            layers.append(nn.MaxPool2d(3, 2, 1))
        cin = width
        for mult, stride in _STAGES:
            cout = width * mult // 64
            layers += [_BasicBlock(cin, cout, stride, norm), _BasicBlock(cout, cout, 1, norm)]
            cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]``."""
        if x.dim() != 4:
            raise ValueError(f"expected images [B, C, H, W]; got shape {tuple(x.shape)}")
        return self.head(self.features(x))
