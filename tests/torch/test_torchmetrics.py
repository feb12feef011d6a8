"""uncertlr.torch.metrics: accumulated over batches, each torchmetrics.Metric equals the whole-array function."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchmetrics")

from uncertlr import metrics as m  # noqa: E402
from uncertlr.torch import metrics as tm  # noqa: E402


def _batches(k=4, s=5, n=20, c=3):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(k):
        probs = torch.softmax(2 * torch.randn(s, n, c, generator=g, dtype=torch.float64), -1)
        out.append((probs, torch.randint(0, c, (n,), generator=g), torch.rand(n, generator=g) < 0.4))
    return out


@pytest.mark.parametrize("uncertainty", ["max_probability", "entropy", "mutual_information"])
def test_accumulated_equals_whole_array(uncertainty):
    batches = _batches()
    probs = torch.cat([b[0] for b in batches], 1)
    labels = torch.cat([b[1] for b in batches])
    ood = torch.cat([b[2] for b in batches])
    score = {
        "max_probability": 1 - m.mean_probs(probs).max(-1).values,
        "entropy": m.predictive_entropy(probs),
        "mutual_information": m.mutual_information(probs),
    }[uncertainty]
    correct = m.mean_probs(probs).argmax(-1) == labels
    expected = {
        tm.AURC: m.aurc(score, correct),
        tm.EAURC: m.eaurc(score, correct),
        tm.OODAUROC: m.ood_auroc(score[~ood], score[ood]),
        tm.FPRAtTPR: m.fpr_at_tpr(score[~ood], score[ood]),
        tm.AUPRIn: m.aupr_in(score[~ood], score[ood]),
        tm.AUPROut: m.aupr_out(score[~ood], score[ood]),
    }
    for cls, ref in expected.items():
        metric = cls(uncertainty=uncertainty)
        for p, y, o in batches:
            metric.update(p, y if cls in (tm.AURC, tm.EAURC) else o)
        assert float(metric.compute()) == pytest.approx(float(ref), abs=1e-12), cls.__name__
        metric.reset()
        with pytest.raises(ValueError, match="before any update"):
            metric.compute()


def test_scores_can_be_given_directly_and_bad_input_is_named():
    metric = tm.FPRAtTPR(tpr=0.5)
    metric.update(torch.tensor([0.1, 0.9, 0.2, 0.8]), torch.tensor([False, True, False, True]))
    assert float(metric.compute()) == 0.0
    with pytest.raises(TypeError, match="boolean"):
        metric.update(torch.rand(4), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="uncertainty must be"):
        tm.AURC(uncertainty="variance")
    with pytest.raises(ValueError, match=r"\[S, N, C\]"):
        tm.AURC().update(torch.rand(4), torch.zeros(4, dtype=torch.long))
