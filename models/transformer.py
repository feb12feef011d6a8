"""A small Transformer encoder classifier for token sequences (torch).

Pre-norm encoder blocks (multi-head self-attention, then a GELU feed-forward), a learned
position embedding, mean pooling over the sequence and a linear head. The attention is written
with matrix products and a softmax rather than ``nn.TransformerEncoderLayer`` or
``F.scaled_dot_product_attention``, whose fused CPU kernels have no ``vmap`` rule: a BNN of this
network evaluates many weight draws at once (``bnn.predict``, ``num_particles``) without a
per-sample fallback.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["TransformerClassifier"]


class _Block(nn.Module):
    def __init__(self, d_model: int, heads: int, ff: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, ff), nn.GELU(), nn.Linear(ff, d_model))

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5), dim=-1)
        a = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(a)
        return x + self.ff(self.norm2(x))


class TransformerClassifier(nn.Module):
    """Token ids ``[B, T]`` (``T <= max_len``) -> logits ``[B, num_classes]``.

    Args:
        vocab_size: number of token ids.
        num_classes: outputs (logits).
        d_model: embedding width (a multiple of ``heads``).
        heads: attention heads.
        layers: encoder blocks.
        ff: width of the feed-forward layer (default ``4 * d_model``).
        max_len: longest sequence (size of the position embedding).

    Example:
        >>> import torch
        >>> from uncertlr_models import TransformerClassifier
        >>> net = TransformerClassifier(100, 4, d_model=32, heads=4, layers=2, max_len=16)
        >>> net(torch.randint(0, 100, (3, 16))).shape
        torch.Size([3, 4])
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        *,
        d_model: int = 128,
        heads: int = 4,
        layers: int = 2,
        ff: int | None = None,
        max_len: int = 128,
    ):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of heads ({heads})")
        self.max_len = max_len
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.blocks = nn.Sequential(*[_Block(d_model, heads, ff or 4 * d_model) for _ in range(layers)])
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits ``[B, num_classes]``."""
        if tokens.dim() != 2 or tokens.shape[1] > self.max_len:
            raise ValueError(
                f"expected token ids [B, T] with T <= {self.max_len}; got shape {tuple(tokens.shape)}"
            )
        pos = self.pos.weight[: tokens.shape[1]]
        h = self.blocks(self.embed(tokens) + pos)
        return self.head(self.norm(h).mean(1))
