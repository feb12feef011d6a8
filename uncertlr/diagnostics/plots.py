"""Every figure of uncertlr (matplotlib, Agg backend): calibration, uncertainty, training, spread, MCMC.

Figures of plain arrays (numpy, torch or jax), which need only matplotlib:

* :func:`reliability_diagram`, :func:`uncertainty_histograms`, :func:`training_curves`,
  :func:`layer_spread_plot`;
* :func:`reliability_figure` and :func:`ood_figure`: the same two figures drawn from a run's
  predictions (``labels``, ``{name}_test``, ``{name}_ood``; see :mod:`uncertlr.runfolder`),
  the ``reliability.png`` / ``uncertainty.png`` of a run folder and the report's sections.

Figures of an ``InferenceData`` (:func:`rank_plot`, :func:`energy_plot`) need ArviZ, the
``report`` extra; it is imported when they are called, so the others work without it.
Every function returns a ``matplotlib.figure.Figure``; :func:`figure_png` renders one to PNG
bytes and :func:`save_figure` writes it atomically.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> preds = {"labels": rng.integers(0, 3, 50),
    ...          "net_test": rng.dirichlet(np.ones(3), size=(1, 50)),
    ...          "bnn_test": rng.dirichlet(np.ones(3), size=(4, 50)),
    ...          "bnn_ood": rng.dirichlet(np.ones(3), size=(4, 20))}
    >>> png = figure_png(reliability_figure(preds, ["net", "bnn"]))
    >>> [ax.get_title().split("\\n")[0] for ax in ood_figure(preds, ["net", "bnn"]).axes]
    ['bnn: predictive entropy', 'bnn: mutual information']
    >>> ood_figure(preds, ["net"]) is None  # no out-of-distribution predictions for "net"
    True
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from uncertlr import metrics  # noqa: E402
from uncertlr._io import atomic_write  # noqa: E402
from uncertlr.diagnostics._predictions import PredictionSummary  # noqa: E402

__all__ = [
    "CURVES",
    "energy_plot",
    "figure_png",
    "layer_spread_plot",
    "ood_figure",
    "plain_text",
    "rank_plot",
    "reliability_diagram",
    "reliability_figure",
    "save_figure",
    "select_series",
    "shift_figure",
    "training_curves",
    "uncertainty_histograms",
]


def _np(x: Any) -> np.ndarray:
    if isinstance(x, PredictionSummary):
        return x.mean
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(x)


def plain_text(label: Any) -> str:
    r"""``label`` as literal matplotlib text: ``$`` would start mathtext (and a broken formula such as
    ``$\undefinedmacro$`` fails when the figure is drawn), so it is escaped.

    Example:
        >>> plain_text("net $x$")
        'net \\$x\\$'
    """
    return str(label).replace("$", r"\$")


def _decomposition(p: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """(predictive entropy, mutual information, number of draws) of ``[S, N, C]``/``[N, C]`` or a summary."""
    if isinstance(p, PredictionSummary):
        return p.total, p.epistemic, p.num_samples
    d = metrics.uncertainty_decomposition(p)
    return _np(d.total), _np(d.epistemic), int(np.shape(p)[0]) if np.ndim(p) == 3 else 1


# --------------------------------------------------------------------------- calibration and uncertainty


def reliability_diagram(models: Mapping[str, tuple[Any, Any]], *, num_bins: int = 15) -> Figure:
    """Accuracy against confidence per model, with bin counts underneath.

    Each legend entry gives the model's ECE and the ECE a perfectly calibrated model with the same
    confidences scores on as many inputs (:func:`uncertlr.metrics.ece_consistency`): an ECE near
    that floor is test-set noise, not miscalibration.

    Args:
        models: name -> ``(probs[S, N, C] or [N, C], labels[N])``.
        num_bins: equal-width confidence bins.
    """
    # the legend gets a row of its own under the counts: inside the diagram it would hide points
    legend_h = 0.22 * (len(models) + 1) + 0.1
    fig = plt.figure(figsize=(5.5, 6 + legend_h))
    ax, axc, axl = fig.subplots(3, 1, gridspec_kw={"height_ratios": [3, 1, legend_h / 1.5]})
    axc.sharex(ax)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
    width = 1.0 / num_bins
    for i, (name, (probs, labels)) in enumerate(models.items()):
        p, y = _np(probs), _np(labels)
        b = metrics.reliability_bins(p, y, num_bins=num_bins)
        mid = (b.lower + b.upper) / 2
        keep = b.count > 0
        c = metrics.ece_consistency(p, y, num_bins=num_bins, num_draws=500)
        label = f"{name} (ECE {c.ece:.3f}; calibrated ≈ {c.expected:.3f})"
        ax.plot(mid[keep], b.accuracy[keep], marker="o", ms=4, label=plain_text(label))
        off = (i - (len(models) - 1) / 2) * width / max(len(models), 1)
        axc.bar(mid + off, b.count, width=width / max(len(models), 1), alpha=0.8)
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.tick_params(labelbottom=False)
    axl.axis("off")
    axl.legend(*ax.get_legend_handles_labels(), loc="upper center", fontsize=8, frameon=False)
    ax.set_title("Reliability diagram")
    axc.set_xlabel("confidence (top-class probability of the model average)")
    axc.set_ylabel("count")
    axc.set_yscale("symlog")
    fig.tight_layout()
    return fig


def _histogram_panel(ax: Any, label: str, s_in: Any, s_out: Any) -> None:
    """One panel: a score's histograms in- vs out-of-distribution, titled with its OOD AUROC."""
    a, b = _np(s_in).ravel(), _np(s_out).ravel()
    hi = float(max(a.max(initial=0), b.max(initial=0))) or 1.0
    bins = np.linspace(0, hi, 31)
    ax.hist(a, bins=bins, alpha=0.6, label="in-distribution", density=True)
    ax.hist(b, bins=bins, alpha=0.6, label="out-of-distribution", density=True)
    auroc = float(metrics.ood_auroc(a, b))
    ax.set_title(plain_text(f"{label}\nAUROC {auroc:.3f}"), fontsize=9)
    ax.set_xlabel("nats")


#: Panels per row of :func:`uncertainty_histograms` (by default) and models per row of :func:`ood_figure`.
_MAX_COLUMNS = 4


def _grid(rows: int, cols: int) -> tuple[Figure, np.ndarray]:
    return plt.subplots(rows, cols, figsize=(3.8 * cols, 3.0 * rows + 0.4), squeeze=False)


def _finish(fig: Figure, axes: Sequence[Any], title: str) -> Figure:
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(plain_text(title))
    fig.tight_layout()
    return fig


def uncertainty_histograms(
    scores: Mapping[str, tuple[Any, Any]], *, title: str = "", ncols: int | None = None
) -> Figure:
    """Histograms of an uncertainty score in- vs out-of-distribution, one panel per entry.

    Args:
        scores: panel label -> ``(score_in[N_in], score_out[N_out])``.
        title: the figure's title (none when empty).
        ncols: panels per row (default: all in one row up to 4 panels, else rows of 4).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> fig = uncertainty_histograms({f"score {i}": (rng.random(50), 1 + rng.random(50)) for i in range(6)})
        >>> fig.axes[0].get_subplotspec().get_geometry()[:2]  # 6 panels: two rows of 4
        (2, 4)
    """
    n = len(scores)
    if n == 0:
        raise ValueError("scores is empty: nothing to draw")
    cols = min(n, _MAX_COLUMNS) if ncols is None else ncols
    if cols < 1:
        raise ValueError(f"ncols must be >= 1; got {ncols}")
    fig, grid = _grid(math.ceil(n / cols), cols)
    axes = list(grid.ravel())
    for ax, (label, (s_in, s_out)) in zip(axes, scores.items()):
        _histogram_panel(ax, label, s_in, s_out)
    for ax in axes[n:]:
        ax.remove()
    return _finish(fig, axes, title)


def _require(predictions: Mapping[str, Any], keys: Sequence[str]) -> None:
    missing = [k for k in keys if k not in predictions]
    if missing:
        raise KeyError(
            f"the predictions lack {missing}: a run's predictions hold 'labels' and, per model, "
            "'{name}_test' (and '{name}_ood') probabilities [S, N, C]"
        )


def reliability_figure(predictions: Mapping[str, Any], names: Sequence[str]) -> Figure:
    """:func:`reliability_diagram` of the models ``names`` from a run's predictions.

    Args:
        predictions: ``labels[N]`` and, per model, ``{name}_test`` probabilities ``[S, N, C]``
            (or ``[N, C]``), as :func:`uncertlr.runfolder.read_predictions` returns them, or
            their :class:`~uncertlr.diagnostics._predictions.PredictionSummary` (what the report streams).
        names: the models to draw, in legend order.

    Raises:
        KeyError: ``labels`` or a model's ``{name}_test`` is missing (the message names them).
    """
    _require(predictions, ["labels", *(f"{n}_test" for n in names)])
    return reliability_diagram({n: (predictions[f"{n}_test"], predictions["labels"]) for n in names})


def ood_figure(predictions: Mapping[str, Any], names: Sequence[str], *, title: str = "") -> Figure | None:
    """Uncertainty in- vs out-of-distribution from a run's predictions, or None when there is none.

    One column per model of ``names`` with ``{name}_ood`` predictions: its predictive entropy
    (total uncertainty) on top and, for sampled models (``S > 1``), its mutual information (the
    epistemic part) below; each panel's title gives the OOD AUROC of that score.

    Args:
        predictions: per model ``{name}_test`` and ``{name}_ood`` probabilities ``[S, N, C]``
            (or ``[N, C]``), as :func:`uncertlr.runfolder.read_predictions` returns them.
        names: the models to draw; those without ``{name}_ood`` are left out.
        title: the figure's title, e.g. ``"in-distribution vs rotated digits"``.

    Returns:
        The figure, or None when no model of ``names`` has ``{name}_ood``.
    """
    ood = [n for n in names if f"{n}_ood" in predictions]
    _require(predictions, [f"{n}_test" for n in ood])
    if not ood:
        return None
    entropy, mi = {}, {}
    for n in ood:
        total_in, mi_in, draws = _decomposition(predictions[f"{n}_test"])
        total_out, mi_out, _ = _decomposition(predictions[f"{n}_ood"])
        entropy[n] = (total_in, total_out)
        if draws > 1:
            mi[n] = (mi_in, mi_out)
    # one column per model (at most 4 per band of rows): predictive entropy above, mutual information
    # (sampled models only) below
    rows, cols = (2 if mi else 1), min(len(ood), _MAX_COLUMNS)
    bands = math.ceil(len(ood) / cols)
    fig, grid = _grid(rows * bands, cols)
    for i, n in enumerate(ood):
        band, j = divmod(i, cols)
        _histogram_panel(grid[band * rows, j], f"{n}: predictive entropy", *entropy[n])
        if n in mi:
            _histogram_panel(grid[band * rows + 1, j], f"{n}: mutual information", *mi[n])
        elif mi:  # a point estimate: one set of weights, no epistemic part to draw
            grid[band * rows + 1, j].remove()
    for j in range(len(ood) - (bands - 1) * cols, cols):  # the last band's unused columns
        for r in range(rows):
            grid[-rows + r, j].remove()
    return _finish(fig, [grid[0, 0]], title)


# --------------------------------------------------------------------------- training and spread

#: Quantities :func:`training_curves` draws, in panel order, with their axis labels.
CURVES = (
    ("loss", "loss"),
    ("signal", "uncertainty signal"),
    ("scale", "step scale"),
    ("lr", "learning rate"),
)


def _smooth(v: np.ndarray, window: int) -> np.ndarray:
    """Moving average that ignores NaN (same length; NaN where the window holds no finite value)."""
    ok = np.isfinite(v)
    kernel = np.ones(window)
    num = np.convolve(np.where(ok, v, 0.0), kernel, mode="same")
    den = np.convolve(ok.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


#: Per-step quantities drawn faintly with a moving average on top.
_NOISY = ("loss", "signal", "scale")


def training_curves(histories: Mapping[str, Any], *, keys: tuple[tuple[str, str], ...] = CURVES) -> Figure:
    """Training curves: one panel per quantity that any history holds (loss, signal, scale, lr).

    Args:
        histories: model name -> records ``[{step, loss, lr, signal?, scale?, ...}]``.
            Noisy curves (loss, signal, step scale) are drawn faintly with a moving average on top; a
            per-weight rule's ``scale_min``/``scale_max`` are drawn as a band around its mean step scale
            (log axis: the factors are multiplicative).
        keys: ``(record key, axis label)`` pairs to draw, in panel order.

    Example:
        >>> fig = training_curves({"bnn": [{"step": i, "loss": 1 / (i + 1), "lr": 0.01} for i in range(50)]})
        >>> [ax.get_ylabel() for ax in fig.axes]
        ['loss', 'learning rate']
    """
    present = [
        (k, label)
        for k, label in keys
        if any(isinstance(r, Mapping) and _finite_number(r.get(k)) for h in histories.values() for r in h)
    ]
    if not present:
        raise ValueError(f"no history holds any of {[k for k, _ in keys]}")
    fig, axes = plt.subplots(len(present), 1, figsize=(7.5, 2.3 * len(present)), sharex=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, label) in zip(axes[:, 0], present):
        for i, (name, records) in enumerate(histories.items()):
            recs = [r for r in records if isinstance(r, Mapping)]
            v = _series(recs, key)
            if not np.isfinite(v).any():
                continue
            steps = np.array(
                [
                    float(r.get("step", j)) if _finite_number(r.get("step", j)) else j
                    for j, r in enumerate(recs)
                ]
            )
            c = colors[i % len(colors)]
            window = max(5, len(v) // 50)
            if key in _NOISY and len(v) > 20:
                ax.plot(steps, v, color=c, alpha=0.25, lw=0.6)
                ax.plot(steps, _smooth(v, window), color=c, lw=1.4, label=plain_text(name))
            else:
                ax.plot(steps, v, color=c, lw=1.2, label=plain_text(name))
            if key == "scale":  # a per-weight rule: the range of its factors over the weights, as a band
                lo, hi = _series(recs, "scale_min"), _series(recs, "scale_max")
                spread = hi - lo
                if np.isfinite(spread).any() and np.nanmax(spread) > 0:
                    if len(v) > 20:
                        lo, hi = _smooth(lo, window), _smooth(hi, window)
                    ax.fill_between(
                        steps,
                        lo,
                        hi,
                        color=c,
                        alpha=0.15,
                        lw=0,
                        label=plain_text(f"{name}: min-max over weights"),
                    )
        ax.set_ylabel(label)
        finite = [
            float(r[key])
            for h in histories.values()
            for r in h
            if isinstance(r, Mapping) and _finite_number(r.get(key))
        ]
        if key == "loss" and finite and min(finite) > 0 and max(finite) / min(finite) > 50:
            ax.set_yscale("log")
        if key == "scale" and finite and min(finite) > 0:
            ax.set_yscale("log")  # step factors are multiplicative: 0.5 and 2 lie as far from 1
        ax.legend(fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("optimizer step")
    fig.tight_layout()
    return fig


def _series(records: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    """``records[i][key]`` as floats, NaN where it is missing or not a finite number."""
    return np.array([float(r[key]) if _finite_number(r.get(key)) else np.nan for r in records])


def _finite_number(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:  # an int too large for a float (JSON allows 10**400)
        return False


def layer_spread_plot(spreads: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Per-layer posterior spread: mean σ and mean ``|μ|/σ`` per layer, one bar per model.

    Args:
        spreads: model name -> layer -> :class:`~uncertlr.metrics.LayerSpread` (or a dict with
            ``mean_scale`` and ``mean_snr``), e.g. ``{"bnn": bnn.posterior_spread()}``.

    Example:
        >>> fig = layer_spread_plot({"bnn": {"fc1": {"mean_scale": 0.1, "mean_snr": 3.0}}})
        >>> [ax.get_title() for ax in fig.axes]
        ['mean posterior std σ', 'mean |μ| / σ (signal-to-noise)']
    """
    layers: list[str] = []
    for s in spreads.values():
        layers += [k for k in s if k not in layers]
    if not layers:
        raise ValueError("no layer spreads to plot")
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.6 + 0.45 * len(layers) * max(1, len(spreads)) ** 0.5 + 1.4))
    height = 0.8 / max(len(spreads), 1)
    y = np.arange(len(layers))
    for ax, field, title in (
        (axes[0], "mean_scale", "mean posterior std σ"),
        (axes[1], "mean_snr", "mean |μ| / σ (signal-to-noise)"),
    ):
        for i, (name, s) in enumerate(spreads.items()):
            vals = [_field(s.get(k), field) for k in layers]
            ax.barh(y + (i - (len(spreads) - 1) / 2) * height, vals, height=height, label=plain_text(name))
        ax.set_yticks(y, [plain_text(layer) for layer in layers], fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_title(title, fontsize=10)
    axes[0].set_ylabel("layer")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _field(entry: Any, field: str) -> float:
    if entry is None:
        return np.nan
    v = entry[field] if isinstance(entry, Mapping) else getattr(entry, field)
    return np.nan if v is None else float(v)


# --------------------------------------------------------------------------- MCMC (ArviZ)


def select_series(idata: Any, labels: Sequence[str]) -> dict[str, np.ndarray]:
    """``{label: draws[chain, draw]}`` for ``arviz.summary`` labels such as ``"w[0]"`` or ``"0.weight[17]"``.

    Labels are looked up in ``posterior`` and then ``posterior_predictive``; a label's
    bracket holds the coordinate values of the variable's non-sample dimensions.
    """
    out = {}
    for label in labels:
        name, _, rest = label.partition("[")
        for group in ("posterior", "posterior_predictive"):
            if group in idata.groups() and name in getattr(idata, group):
                da = getattr(idata, group)[name]
                break
        else:
            raise KeyError(f"{label!r} is in neither posterior nor posterior_predictive")
        extra = [d for d in da.dims if d not in ("chain", "draw")]
        if extra:
            values = [v.strip() for v in rest.rstrip("]").split(",")]
            if len(values) != len(extra):
                raise KeyError(f"{label!r} needs {len(extra)} coordinates ({extra})")
            sel = {}
            for d, v in zip(extra, values):
                coord = da[d].values
                match = [c for c in coord if str(c) == v]
                if not match:
                    raise KeyError(f"{label!r}: {v!r} is not a coordinate of {d}")
                sel[d] = match[0]
            da = da.sel(sel)
        out[label] = np.asarray(da.transpose("chain", "draw").values, dtype=np.float64)
    return out


def rank_plot(idata: Any, labels: Sequence[str], *, columns: int = 3) -> Figure:
    """Rank plots (``arviz.plot_rank``) of the scalar quantities named by ``labels``.

    Each panel shows, per chain, the histogram of the ranks of its draws among all
    chains' draws: flat and alike when the chains agree. Needs ArviZ (the report extra).

    Example:
        >>> import numpy as np
        >>> from uncertlr.diagnostics._arviz import az
        >>> idata = az.from_dict(posterior={"w": np.random.default_rng(0).normal(size=(2, 100, 3))})
        >>> fig = rank_plot(idata, ["w[0]", "w[2]"])
        >>> len(fig.axes)
        2
    """
    from uncertlr.diagnostics._arviz import az, quiet_plots  # the optional report extra

    series = {plain_text(k): v for k, v in select_series(idata, labels).items()}
    data = az.from_dict(posterior=series)
    n = len(series)
    cols = min(columns, n)
    rows = -(-n // cols)
    with quiet_plots():
        axes = az.plot_rank(
            data,
            var_names=list(series),
            kind="bars",
            grid=(rows, cols),
            figsize=(3.6 * cols, 2.6 * rows),
            show=False,
        )
    fig = np.atleast_1d(axes).ravel()[0].figure
    for ax in fig.axes:
        ax.title.set_fontsize(9)
        ax.xaxis.label.set_fontsize(8)
        ax.yaxis.label.set_fontsize(8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def energy_plot(idata: Any) -> Figure:
    """``arviz.plot_energy``: marginal energy vs energy transitions (needs ``sample_stats.energy`` and ArviZ)."""
    from uncertlr.diagnostics._arviz import az, quiet_plots  # the optional report extra

    if "sample_stats" not in idata.groups() or "energy" not in idata.sample_stats:
        raise ValueError("no energy in sample_stats: run NumPyro's MCMC with extra_fields=('energy',)")
    with quiet_plots():
        ax = az.plot_energy(idata, figsize=(6, 3.4), show=False)
    fig = np.atleast_1d(ax).ravel()[0].figure
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- output


#: legend entries that fit beside one row of :func:`shift_figure`'s panels (3.6 inches, 7-point text)
_LEGEND_ROWS_PER_PANEL = 22
#: line styles of temperature-scaled variants in :func:`shift_figure` (longest suffix first)
_TS_STYLES = (("+ts-soften", ":"), ("+ts", "--"))


def _ts_base(method: str) -> tuple[str, str]:
    """``(the method a temperature-scaled variant belongs to, its line style)``; ``"-"`` for the method itself."""
    for suffix, ls in _TS_STYLES:
        if method.endswith(suffix):
            return method.removesuffix(suffix), ls
    return method, "-"


def shift_figure(curves: Mapping[str, Mapping[str, Mapping[Any, Mapping[str, float]]]]) -> Figure:
    """ECE and NLL against corruption severity, one row of panels per task, one line per method.

    Args:
        curves: ``{task: {method: {severity: {"ece": ..., "nll": ...}}}}``; severity 0 is the
            clean test set (keys may be ints or their strings, as read back from JSON).
            Temperature-scaled variants are drawn in their method's colour: ``"<method>+ts"``
            dashed, ``"<method>+ts-soften"`` (a temperature kept at ``T >= 1``) dotted.

    Example:
        >>> fig = shift_figure({"digits": {"net": {0: {"ece": 0.02, "nll": 0.1}, 1: {"ece": 0.05, "nll": 0.3}}}})
        >>> [ax.get_title() for ax in fig.axes]
        ['digits: ECE', 'digits: NLL']
    """
    if not curves:
        raise ValueError("shift_figure needs at least one task with severity curves")
    bases = list(dict.fromkeys(_ts_base(m)[0] for methods in curves.values() for m in methods))
    # tab20's ten dark shades (matplotlib's default colours), then their ten light shades for more methods
    tab20 = list(plt.get_cmap("tab20").colors)
    palette = tab20[0::2] + tab20[1::2]
    colours = {b: palette[i % len(palette)] for i, b in enumerate(bases)}
    # the legend beside the panels, in as many columns as it needs to fit their height (~22 entries per row)
    entries = len({m for methods in curves.values() for m in methods})
    ncol = max(1, math.ceil(entries / (_LEGEND_ROWS_PER_PANEL * len(curves))))
    legend_w = 2.8 * ncol  # inches
    fig, axes = plt.subplots(len(curves), 2, figsize=(11 + legend_w, 3.6 * len(curves)), squeeze=False)
    for row, (task, methods) in zip(axes, curves.items()):
        for method, by_sev in methods.items():
            sev = sorted(by_sev, key=float)
            base, ls = _ts_base(method)
            for ax, key in zip(row, ("ece", "nll")):
                ax.plot(
                    [float(s) for s in sev],
                    [by_sev[s][key] for s in sev],
                    marker="o",
                    ms=3,
                    color=colours[base],
                    ls=ls,
                    alpha=1.0 if ls == "-" else 0.7,
                    label=plain_text(method),
                )
        for ax, key in zip(row, ("ECE", "NLL")):
            ax.set_title(f"{task}: {key}")
            ax.set_xlabel("corruption severity (0 = clean)")
            ax.grid(alpha=0.3)
        nll = [by_sev[s]["nll"] for by_sev in methods.values() for s in by_sev]
        if nll and min(nll) > 0 and max(nll) / min(nll) > 50:
            row[1].set_yscale("log")  # one over-confident method's NLL would flatten every other curve
    # the legend beside the panels, not over the curves
    right = 11 / (11 + legend_w)
    handles, labels = axes[0][1].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="center left", bbox_to_anchor=(right, 0.5), fontsize=7, frameon=False, ncol=ncol
    )
    fig.tight_layout(rect=(0, 0, right, 1))
    return fig


def figure_png(fig: Figure, *, dpi: int = 110) -> bytes:
    """Render ``fig`` to PNG bytes and close it (for embedding in HTML)."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return buf.getvalue()


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 110) -> Path:
    """Save ``fig`` as PNG atomically (:func:`uncertlr._io.atomic_write`) and close it; returns the path."""
    png = figure_png(fig, dpi=dpi)
    return atomic_write(path, lambda f: f.write(png))
