"""Figures: the run-folder figures against independent computations, and atomic PNGs."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from uncertlr.diagnostics.plots import (
    ood_figure,
    reliability_figure,
    save_figure,
    training_curves,
)


@pytest.fixture
def predictions():
    """A run's predictions: ``net`` a point estimate (S = 1) without OOD data, ``bnn`` sampled (S = 5) with."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 80)

    def probs(s, n, sharp):
        logits = sharp * np.eye(3)[labels[:n]][None] + rng.normal(size=(s, n, 3))
        return np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)

    return {
        "labels": labels,
        "net_test": probs(1, 80, 3.0),
        "bnn_test": probs(5, 80, 3.0),
        "bnn_ood": probs(5, 40, 0.0),
    }


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(p)).sum(-1)


def test_reliability_figure_draws_every_model(predictions):
    fig = reliability_figure(predictions, ["net", "bnn"])
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[0] == "perfect calibration"
    assert [t.split(" (ECE")[0] for t in legend[1:]] == ["net", "bnn"]
    plt.close(fig)
    with pytest.raises(KeyError, match="other_test"):
        reliability_figure(predictions, ["net", "other"])
    with pytest.raises(KeyError, match="labels"):
        reliability_figure({"net_test": predictions["net_test"]}, ["net"])


def test_ood_figure_panels_and_auroc(predictions):
    fig = ood_figure(predictions, ["net", "bnn"], title="in-distribution vs noise")
    titles = [ax.get_title() for ax in fig.axes]
    # net has no OOD predictions; bnn is sampled, so it gets a mutual-information panel too
    assert [t.split("\n")[0] for t in titles] == ["bnn: predictive entropy", "bnn: mutual information"]
    assert fig._suptitle.get_text() == "in-distribution vs noise"
    # independent: entropy of the mean probabilities and MI by hand, AUROC by scikit-learn
    p_in, p_out = predictions["bnn_test"], predictions["bnn_ood"]
    h_in, h_out = _entropy(p_in.mean(0)), _entropy(p_out.mean(0))
    mi_in, mi_out = h_in - _entropy(p_in).mean(0), h_out - _entropy(p_out).mean(0)
    for title, (a, b) in zip(titles, ((h_in, h_out), (mi_in, mi_out))):
        auroc = roc_auc_score(np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[a, b])
        assert title.endswith(f"AUROC {auroc:.3f}")
    plt.close(fig)
    assert ood_figure(predictions, ["net"]) is None
    assert ood_figure({"labels": predictions["labels"]}, []) is None


def test_save_figure_writes_a_png_atomically(tmp_path):
    fig = training_curves({"m": [{"step": i, "loss": 1.0 / (i + 1)} for i in range(30)]})
    path = save_figure(fig, tmp_path / "sub" / "curves.png")
    assert path == tmp_path / "sub" / "curves.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["curves.png"]  # no temporary file left
    assert not plt.fignum_exists(fig.number)  # closed
