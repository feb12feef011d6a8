"""Figures: the run-folder figures against independent computations, atomic PNGs, and plots without ArviZ."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from uncertlr import metrics
from uncertlr.diagnostics.plots import (
    ood_figure,
    reliability_figure,
    save_figure,
    training_curves,
    uncertainty_histograms,
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
    (box,) = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    legend = [t.get_text() for t in box.get_texts()]
    assert legend[0] == "perfect calibration"
    assert [t.split(" (ECE")[0] for t in legend[1:]] == ["net", "bnn"]
    # the ECE and what a calibrated model with the same confidences scores on this many inputs
    c = metrics.ece_consistency(predictions["net_test"], predictions["labels"], num_draws=500)
    assert legend[1] == f"net (ECE {c.ece:.3f}; calibrated ≈ {c.expected:.3f})"
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


def _cell(ax) -> tuple[int, int]:
    """(row, column) of a subplot in its grid."""
    spec = ax.get_subplotspec()
    return spec.rowspan.start, spec.colspan.start


def test_ood_figure_is_one_column_per_model_with_mutual_information_below(predictions):
    # a point estimate with OOD predictions (S = 1) beside two sampled models
    preds = {**predictions, "net_ood": predictions["bnn_ood"][:1], "bnn2_test": predictions["bnn_test"][::-1]}
    preds["bnn2_ood"] = predictions["bnn_ood"][::-1]
    fig = ood_figure(preds, ["net", "bnn", "bnn2"])
    cells = {ax.get_title().split("\n")[0]: _cell(ax) for ax in fig.axes}
    assert cells == {
        "net: predictive entropy": (0, 0),
        "bnn: predictive entropy": (0, 1),
        "bnn2: predictive entropy": (0, 2),
        "bnn: mutual information": (1, 1),
        "bnn2: mutual information": (1, 2),
    }  # the point estimate has no mutual-information panel, not an empty one
    plt.close(fig)
    fig = ood_figure({**preds, "bnn_ood": preds["net_ood"], "bnn_test": preds["net_test"]}, ["net", "bnn"])
    assert [_cell(ax) for ax in fig.axes] == [(0, 0), (0, 1)]  # no sampled model: one row
    plt.close(fig)


def test_ood_figure_wraps_after_four_models(predictions):
    names = [f"m{i}" for i in range(6)]
    preds = {"labels": predictions["labels"]}
    for n in names:
        preds[f"{n}_test"], preds[f"{n}_ood"] = predictions["bnn_test"], predictions["bnn_ood"]
    preds["m5_test"], preds["m5_ood"] = (
        predictions["net_test"],
        predictions["bnn_ood"][:1],
    )  # a point estimate
    fig = ood_figure(preds, names)
    cells = {ax.get_title().split("\n")[0]: _cell(ax) for ax in fig.axes}
    expect = {}
    for i, n in enumerate(names):
        band, col = divmod(i, 4)
        expect[f"{n}: predictive entropy"] = (2 * band, col)
        if n != "m5":
            expect[f"{n}: mutual information"] = (2 * band + 1, col)
    assert cells == expect  # two bands of (entropy, MI) rows; the last band's empty columns are removed
    assert fig.axes[0].get_subplotspec().get_geometry()[:2] == (4, 4)
    plt.close(fig)


@pytest.mark.parametrize(("n", "ncols", "grid"), [(3, None, (1, 3)), (6, None, (2, 4)), (5, 2, (3, 2))])
def test_uncertainty_histograms_wrap_into_rows(n, ncols, grid):
    rng = np.random.default_rng(1)
    fig = uncertainty_histograms(
        {f"s{i}": (rng.random(30), 1 + rng.random(30)) for i in range(n)}, ncols=ncols
    )
    assert len(fig.axes) == n  # the grid's unused cells are removed
    assert fig.axes[0].get_subplotspec().get_geometry()[:2] == grid
    assert [_cell(ax) for ax in fig.axes] == [divmod(i, grid[1]) for i in range(n)]
    assert [ax.get_title().split("\n")[0] for ax in fig.axes] == [f"s{i}" for i in range(n)]
    plt.close(fig)
    with pytest.raises(ValueError, match="empty"):
        uncertainty_histograms({})
    with pytest.raises(ValueError, match="ncols"):
        uncertainty_histograms({"s": (rng.random(3), rng.random(3))}, ncols=0)


def test_training_curves_smooth_the_step_scale_and_band_a_per_weight_rule():
    from matplotlib.collections import PolyCollection

    n = 200
    # a global rule at its bounds, step by step
    g1 = [{"step": i, "loss": 1.0, "scale": (0.5, 2.0)[i % 2]} for i in range(n)]
    p2 = [
        {"step": i, "loss": 1.0, "scale": 1.0, "scale_min": 0.2 + i / 1000, "scale_max": 3.0}
        for i in range(n)
    ]
    fig = training_curves({"g1": g1, "p2": p2})
    ax = next(a for a in fig.axes if a.get_ylabel() == "step scale")
    assert ax.get_yscale() == "log"  # 0.5 and 2 lie as far from 1
    g1_lines = [ln for ln in ax.get_lines() if ln.get_color() == ax.get_lines()[0].get_color()]
    raw, smooth = g1_lines[:2]
    assert raw.get_alpha() == 0.25 and smooth.get_label() == "g1"  # faint raw steps, then the moving average
    window = max(5, n // 50)
    inner = np.asarray(smooth.get_ydata())[window : n - window]
    assert inner.min() > 0.5 and inner.max() < 2.0  # averaged between the two clamp bounds
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert band.get_label() == "p2: min-max over weights"
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(0.2, abs=0.01) and ys.max() == pytest.approx(3.0)
    plt.close(fig)
    # a global rule alone (no scale_min/scale_max): no band
    fig = training_curves({"g1": g1})
    ax = next(a for a in fig.axes if a.get_ylabel() == "step scale")
    assert not [c for c in ax.collections if isinstance(c, PolyCollection)]
    plt.close(fig)


def test_save_figure_writes_a_png_atomically(tmp_path):
    fig = training_curves({"m": [{"step": i, "loss": 1.0 / (i + 1)} for i in range(30)]})
    path = save_figure(fig, tmp_path / "sub" / "curves.png")
    assert path == tmp_path / "sub" / "curves.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["curves.png"]  # no temporary file left
    assert not plt.fignum_exists(fig.number)  # closed


def test_figures_work_without_arviz():
    """The matplotlib figures need no ArviZ; the ArviZ-backed names fail with the actionable message."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["arviz"] = None  # as if the report extra were not installed
        import numpy as np
        import uncertlr.diagnostics.plots as plots
        import uncertlr.diagnostics as diagnostics

        p = np.full((2, 4, 3), 1 / 3)
        preds = {"labels": np.zeros(4, dtype=int), "m_test": p, "m_ood": p}
        plots.figure_png(plots.reliability_figure(preds, ["m"]))
        plots.figure_png(diagnostics.ood_figure(preds, ["m"]))
        for name in ("to_inference_data", "report", "SECTIONS"):
            try:
                getattr(diagnostics, name)
            except ImportError as exc:
                print(name, exc)
            else:
                raise SystemExit(name + " did not raise")
        try:
            from uncertlr.diagnostics import report
        except ImportError as exc:
            print("from-import", exc)
        try:
            plots.rank_plot(None, ["w"])
        except ImportError as exc:
            print("rank_plot", exc)
        assert "uncertlr.diagnostics.convert" not in sys.modules
        """
    )
    env = {**os.environ, "MPLBACKEND": "Agg"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [
        "to_inference_data",
        "report",
        "SECTIONS",
        "from-import",
        "rank_plot",
    ]
    assert all("pip install 'uncertlr[report]'" in line for line in lines)
