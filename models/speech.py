"""Networks for log-mel / MFCC speech features ``[B, bands, frames]`` (torch): a small CNN and a CRNN."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from uncertlr_models._pool import MaxPool2x2

__all__ = ["SpeechCNN", "SpeechCRNN"]


def _conv_blocks(channels: Sequence[int]) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    width = 1
    for c in channels:
        layers += [nn.Conv2d(width, c, 3, padding=1), nn.ReLU(), MaxPool2x2()]
        width = c
    return nn.Sequential(*layers), width


def _check(x: Tensor, bands: int) -> Tensor:
    if x.dim() != 3 or x.shape[1] != bands:
        raise ValueError(f"expected features [B, {bands}, frames]; got shape {tuple(x.shape)}")
    return x.unsqueeze(1)


class SpeechCNN(nn.Module):
    """2-d CNN over (bands, frames): ``[conv3x3 -> ReLU -> 2x2 max-pool] x len(channels)``,
    then the mean over time (frequency is kept: which bands carry energy is what tells
    digits apart), dropout, linear.

    Args:
        n_bands: mel bands or MFCCs per frame (input ``[B, n_bands, frames]``; any number of
            frames of at least ``2 ** len(channels)``).
        num_classes: outputs (logits).
        channels: output channels of each block.
        dropout: dropout before the head (0 = none).

    Example:
        >>> import torch
        >>> from uncertlr_models import SpeechCNN
        >>> SpeechCNN(40, 10)(torch.zeros(3, 40, 64)).shape
        torch.Size([3, 10])
    """

    def __init__(
        self,
        n_bands: int = 40,
        num_classes: int = 10,
        *,
        channels: Sequence[int] = (16, 32, 64),
        dropout: float = 0.0,
    ):
        super().__init__()
        if not channels:
            raise ValueError("channels must name at least one convolution block")
        self.n_bands = n_bands
        self.features, width = _conv_blocks(channels)
        reduced = n_bands // 2 ** len(channels)
        if reduced < 1:
            raise ValueError(
                f"{len(channels)} pooling blocks need at least {2 ** len(channels)} bands; got {n_bands}"
            )
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.head = nn.Linear(width * reduced, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` of features ``[B, n_bands, frames]``."""
        h = self.features(_check(x, self.n_bands)).mean(dim=3).flatten(1)  # [B, C * bands']
        return self.head(self.dropout(h))


class SpeechCRNN(nn.Module):
    """Convolutional recurrent network: CNN blocks over (bands, frames), then a GRU over the
    remaining frames; the head reads the GRU's mean output over time.

    Args:
        n_bands: mel bands or MFCCs per frame (input ``[B, n_bands, frames]``).
        num_classes: outputs (logits).
        channels: output channels of each convolution block (each halves bands and frames).
        hidden: GRU hidden size.

    Example:
        >>> import torch
        >>> from uncertlr_models import SpeechCRNN
        >>> SpeechCRNN(40, 10)(torch.zeros(3, 40, 64)).shape
        torch.Size([3, 10])
    """

    def __init__(
        self,
        n_bands: int = 40,
        num_classes: int = 10,
        *,
        channels: Sequence[int] = (16, 32),
        hidden: int = 64,
    ):
        super().__init__()
        if not channels:
            raise ValueError("channels must name at least one convolution block")
        self.n_bands = n_bands
        self.features, width = _conv_blocks(channels)
        reduced = n_bands // 2 ** len(channels)
        if reduced < 1:
            raise ValueError(
                f"{len(channels)} pooling blocks need at least {2 ** len(channels)} bands; got {n_bands}"
            )
        self.gru = nn.GRU(width * reduced, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` of features ``[B, n_bands, frames]``."""
        h = self.features(_check(x, self.n_bands))  # [B, C, bands', frames']
        seq = h.flatten(1, 2).transpose(1, 2)  # [B, frames', C * bands']
        out, _ = self.gru(seq)
        return self.head(out.mean(dim=1))
