"""benchmarks/lr_robustness.py: the working-LR-range summary on hand-made rows."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
from benchmarks.lr_robustness import lr_ranges  # noqa: E402

LRS = [1e-4, 1e-3, 1e-2, 1e-1]


def _rows(method, accs_per_lr):
    return [
        {"method": method, "lr": lr, "seed": s, "accuracy": a}
        for lr, accs in zip(LRS, accs_per_lr)
        for s, a in enumerate(accs)
    ]


def test_range_is_the_contiguous_block_around_the_best_lr():
    rows = _rows("a", [[0.5, 0.5], [0.95, 0.93], [0.97, 0.97], [0.2, 0.9]])  # 1e-1 mean 0.55
    rows += _rows("b", [[0.95, 0.95], [0.5, 0.5], [0.96, 0.96], [0.95, 0.95]])  # 1e-4 not contiguous
    rows += _rows("c", [[0.1, 0.1], [0.2, 0.2], [0.3, float("nan")], [0.1, 0.1]])  # never reaches it
    r = lr_ranges(rows, LRS, target=0.94)
    assert r["a"]["best_lr"] == 1e-2 and r["a"]["range"] == pytest.approx(10.0)
    assert r["b"]["range"] == pytest.approx(10.0)
    assert r["c"]["range"] == 0.0 and r["c"]["mean_accuracy"][2] == pytest.approx(
        0.15
    )  # a diverged run counts as 0
