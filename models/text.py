"""A tiny Transformer text classifier shaped like a Hugging Face model (torch; nothing downloaded).

``forward(input_ids, attention_mask)`` takes padded token ids ``[B, T]`` and a mask ``[B, T]``
(1 for real tokens, 0 for padding) and returns a :class:`ClassifierOutput` dataclass with
``logits [B, C]`` — the calling convention of ``AutoModelForSequenceClassification``, so
``bayesian(net, inputs=("input_ids", "attention_mask"), output="logits")`` wraps it the way it
wraps a Hugging Face model. Pre-norm blocks of ``nn.MultiheadAttention`` (with the padding as
``key_padding_mask``) and an MLP; masked mean pooling, so padding never changes the logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["ClassifierOutput", "TinyTextTransformer"]


@dataclass
class ClassifierOutput:
    """What :class:`TinyTextTransformer` returns (like ``transformers.modeling_outputs.SequenceClassifierOutput``)."""

    logits: Tensor
    pooled: Tensor | None = None


class _Block(nn.Module):
    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model))

    def forward(self, h: Tensor, padding: Tensor) -> Tensor:
        a = self.norm1(h)
        h = h + self.attn(a, a, a, key_padding_mask=padding, need_weights=False)[0]
        return h + self.mlp(self.norm2(h))


class TinyTextTransformer(nn.Module):
    """Token + position embeddings, ``num_layers`` pre-norm attention blocks, masked mean pooling, a linear head.

    Example:
        >>> import torch
        >>> net = TinyTextTransformer(vocab_size=30, num_classes=2)
        >>> ids = torch.tensor([[5, 7, 9, 0], [3, 4, 0, 0]])
        >>> out = net(ids, attention_mask=(ids != 0).long())
        >>> tuple(out.logits.shape)
        (2, 2)
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        *,
        d_model: int = 32,
        num_heads: int = 2,
        num_layers: int = 1,
        max_len: int = 64,
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.position = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, num_heads) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> ClassifierOutput:
        positions = torch.arange(input_ids.shape[-1], device=input_ids.device)
        h = self.embed(input_ids) + self.position(positions)
        padding = attention_mask == 0
        for block in self.blocks:
            h = block(h, padding)
        keep = attention_mask.to(h.dtype).unsqueeze(-1)
        pooled = (self.norm(h) * keep).sum(-2) / keep.sum(-2).clamp_min(1.0)
        return ClassifierOutput(logits=self.head(pooled), pooled=pooled)
