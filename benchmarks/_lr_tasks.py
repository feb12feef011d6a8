"""The tasks of ``benchmarks/lr_robustness.py``: data, network and training budget of each.

* ``digits`` — sklearn digits (1,347 / 450), MLP 64-128-128-10, minibatch 64;
* ``fsdd`` — FSDD official split (2,250 / 250 recordings of the five-speaker copy in the data
  folder), 40-band log-mel × 32 frames (40 dB floor), standardised per band on the training
  set, the reference ``uncertlr_models.SpeechCNN`` with channels (8, 16, 32);
* ``diabetes`` — sklearn diabetes (331 / 111), features and target standardised, ReLU MLP (50);
* ``hetero`` — synthetic heteroscedastic regression: ``x ~ U(-3, 3)``,
  ``y = sin(2x) + 0.3 x + ε``, ``sd(ε) = 0.05 + 0.45 (x + 3) / 6`` (512 / 1,024 points), tanh MLP (50, 50);
* ``transformer`` — synthetic pointer task: ``[p, c_1 … c_16]`` with ``p`` one of 16 position
  tokens and ``c_i`` one of 16 content tokens; the label is ``c_p`` (16 classes). One pre-norm
  Transformer block (``nn.MultiheadAttention``, d = 32, 4 heads, MLP 64), read out at the
  pointer's position (2,000 / 1,000 sequences).

Every task holds out the last 15% of its (shuffled) training set as a validation split, used
only by the ReduceLROnPlateau baseline (which trains on the remaining 85%).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["TASKS", "Task", "load_task"]

TASKS = ("digits", "fsdd", "diabetes", "hetero", "transformer")


@dataclass(frozen=True)
class Task:
    """One task: tensors, the network factory and the training budget (epochs, patience in steps)."""

    name: str
    regression: bool
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    make_net: Callable[[], nn.Module]
    epochs: int
    quick_epochs: int
    batch: int
    patience_epochs: int
    kl_weight: float

    @property
    def num_train(self) -> int:
        return len(self.x_train)

    def steps_per_epoch(self, n: int | None = None) -> int:
        return math.ceil((n or self.num_train) / self.batch)

    def split_validation(self, fraction: float = 0.15) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x_fit, y_fit, x_val, y_val)``: the last ``fraction`` of the training set held out."""
        n_val = max(1, int(round(fraction * self.num_train)))
        return (
            self.x_train[:-n_val],
            self.y_train[:-n_val],
            self.x_train[-n_val:],
            self.y_train[-n_val:],
        )

    @property
    def num_classes(self) -> int:
        return 0 if self.regression else int(max(self.y_train.max(), self.y_test.max())) + 1


def _shuffled(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[Tensor, Tensor]:
    idx = np.random.default_rng(seed).permutation(len(x))
    return torch.from_numpy(np.ascontiguousarray(x[idx])), torch.from_numpy(np.ascontiguousarray(y[idx]))


class PointerTransformer(nn.Module):
    """One pre-norm Transformer block over token + position embeddings; logits read at position 0."""

    def __init__(self, vocab: int, length: int, num_classes: int, d: int = 32, heads: int = 4, ff: int = 64):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.02 * torch.randn(length, d))
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))
        self.norm3 = nn.LayerNorm(d)
        self.head = nn.Linear(d, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.tok(x) + self.pos
        a = self.norm1(h)
        h = h + self.attn(a, a, a, need_weights=False)[0]
        h = h + self.ff(self.norm2(h))
        return self.head(self.norm3(h[:, 0]))


def _pointer_data(n: int, rng: np.random.Generator, length: int = 16, content: int = 16) -> tuple:
    c = rng.integers(0, content, size=(n, length))
    p = rng.integers(0, length, size=n)
    x = np.concatenate([(content + p)[:, None], c], axis=1).astype(np.int64)
    return x, c[np.arange(n), p].astype(np.int64)


def load_task(name: str, data_dir: Path | None = None) -> Task:
    """Build task ``name`` (one of :data:`TASKS`)."""
    from uncertlr_models import MLP, SpeechCNN

    if name == "digits":
        from uncertlr.data import load_digits

        s = load_digits(seed=0)
        xtr, ytr = _shuffled(s.x_train, s.y_train)
        return Task(
            name, False, xtr, ytr, torch.from_numpy(s.x_test), torch.from_numpy(s.y_test),
            lambda: MLP(64, (128, 128), 10), epochs=20, quick_epochs=8, batch=64,
            patience_epochs=1, kl_weight=0.1,
        )  # fmt: skip
    if name == "fsdd":
        from uncertlr.data import LogMel, load_fsdd

        s = load_fsdd(data_dir, features=LogMel(n_mels=40, num_frames=32, top_db=40.0))
        mu = s.x_train.mean(axis=(0, 2), keepdims=True)
        sd = s.x_train.std(axis=(0, 2), keepdims=True) + 1e-6
        xtr, ytr = _shuffled(((s.x_train - mu) / sd).astype(np.float32), s.y_train)
        xte = torch.from_numpy(((s.x_test - mu) / sd).astype(np.float32))
        return Task(
            name, False, xtr, ytr, xte, torch.from_numpy(s.y_test),
            lambda: SpeechCNN(40, 10, channels=(8, 16, 32)), epochs=4, quick_epochs=2, batch=64,
            patience_epochs=1, kl_weight=0.1,
        )  # fmt: skip
    if name == "diabetes":
        from uncertlr.data import load_diabetes

        s = load_diabetes(seed=0)
        xtr, ytr = _shuffled(s.x_train, s.y_train[:, None])
        return Task(
            name, True, xtr, ytr, torch.from_numpy(s.x_test), torch.from_numpy(s.y_test[:, None]),
            lambda: MLP(10, (50,), 1), epochs=100, quick_epochs=40, batch=64,
            patience_epochs=5, kl_weight=1.0,
        )  # fmt: skip
    if name == "hetero":
        rng = np.random.default_rng(0)

        def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
            x = rng.uniform(-3, 3, size=(n, 1))
            sd = 0.05 + 0.45 * (x + 3) / 6
            return x.astype(np.float32), (np.sin(2 * x) + 0.3 * x + sd * rng.normal(size=x.shape)).astype(
                np.float32
            )

        (x, y), (xt, yt) = draw(512), draw(1024)
        return Task(
            name, True, torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xt), torch.from_numpy(yt),
            lambda: MLP(1, (50, 50), 1, activation="tanh"), epochs=60, quick_epochs=20, batch=64,
            patience_epochs=3, kl_weight=0.1,
        )  # fmt: skip
    if name == "transformer":
        rng = np.random.default_rng(0)
        (x, y), (xt, yt) = _pointer_data(2000, rng), _pointer_data(1000, rng)
        return Task(
            name, False, torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xt), torch.from_numpy(yt),
            lambda: PointerTransformer(32, 17, 16), epochs=10, quick_epochs=4, batch=64,
            patience_epochs=1, kl_weight=0.1,
        )  # fmt: skip
    raise SystemExit(f"unknown task {name!r}; use one of {TASKS}")
