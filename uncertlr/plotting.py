"""Plots for run folders: reliability diagrams and uncertainty histograms (matplotlib, Agg backend).

Every function takes plain arrays (numpy, torch or jax) and returns a
``matplotlib.figure.Figure``; :func:`save_figure` writes it atomically.

Example:
    >>> import numpy as np
    >>> from uncertlr.plotting import reliability_diagram
    >>> p = np.random.default_rng(0).dirichlet(np.ones(3), size=(4, 50))
    >>> fig = reliability_diagram({"model": (p, np.zeros(50, dtype=int))})
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from uncertlr import metrics  # noqa: E402
from uncertlr.runs import atomic_write  # noqa: E402

__all__ = ["reliability_diagram", "save_figure", "uncertainty_histograms"]


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(x)


def reliability_diagram(models: Mapping[str, tuple[Any, Any]], *, num_bins: int = 15) -> Figure:
    """Accuracy against confidence per model, with bin counts underneath.

    Args:
        models: name -> ``(probs[S, N, C] or [N, C], labels[N])``.
        num_bins: equal-width confidence bins.
    """
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5.5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
    width = 1.0 / num_bins
    for i, (name, (probs, labels)) in enumerate(models.items()):
        p, y = _np(probs), _np(labels)
        b = metrics.reliability_bins(p, y, num_bins=num_bins)
        mid = (b.lower + b.upper) / 2
        keep = b.count > 0
        e = float(metrics.ece(p, y, num_bins=num_bins))
        ax.plot(mid[keep], b.accuracy[keep], marker="o", ms=4, label=f"{name} (ECE {e:.3f})")
        off = (i - (len(models) - 1) / 2) * width / max(len(models), 1)
        axc.bar(mid + off, b.count, width=width / max(len(models), 1), alpha=0.8)
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Reliability diagram")
    axc.set_xlabel("confidence (top-class probability of the model average)")
    axc.set_ylabel("count")
    axc.set_yscale("symlog")
    fig.tight_layout()
    return fig


def uncertainty_histograms(scores: Mapping[str, tuple[Any, Any]], *, title: str = "") -> Figure:
    """Histograms of an uncertainty score in- vs out-of-distribution, one panel per entry.

    Args:
        scores: panel label -> ``(score_in[N_in], score_out[N_out])``.
    """
    n = len(scores)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2), squeeze=False)
    for ax, (label, (s_in, s_out)) in zip(axes[0], scores.items()):
        a, b = _np(s_in).ravel(), _np(s_out).ravel()
        hi = float(max(a.max(initial=0), b.max(initial=0))) or 1.0
        bins = np.linspace(0, hi, 31)
        ax.hist(a, bins=bins, alpha=0.6, label="in-distribution", density=True)
        ax.hist(b, bins=bins, alpha=0.6, label="out-of-distribution", density=True)
        auroc = float(metrics.ood_auroc(a, b))
        ax.set_title(f"{label}\nAUROC {auroc:.3f}", fontsize=9)
        ax.set_xlabel("nats")
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 110) -> Path:
    """Save ``fig`` as PNG atomically and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))
