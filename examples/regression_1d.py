"""Regression with uncertainty: a deterministic MLP vs the same MLP made Bayesian.

Two data sets (``--data``):

* ``toy`` (default): ``y = sin(x) + noise`` (homoskedastic noise, std 0.15) observed only for
  ``x`` in ``[-4, -1]`` and ``[1, 4]``, so there is a gap ``(-1, 1)`` with no data. A network
  should be *unsure* in the gap: the BNN's epistemic std (the spread of its posterior
  predictive means) is compared inside the gap with on the data (``gap_ratio``, > 1 when the
  BNN knows what it has not seen); a deterministic network has no epistemic part at all.
  ``regression_1d.png`` shows the data, the predictive mean and the epistemic and total 90%
  bands of both models.
* ``diabetes``: scikit-learn's diabetes data (442 patients, 10 features), features and target
  standardised on the training split, every number reported in the original units (disease
  progression score), against a baseline that predicts the training mean with the training std.

Both models use ``likelihoods.Normal()`` (a learned homoskedastic noise std): the
deterministic MLP is fitted by maximum likelihood (mean and noise), the BNN is
``uncertlr.torch.bayesian(net, likelihood=likelihoods.Normal(), num_data=N)`` trained on
the ELBO. Metrics per model (``metrics.json``, ``"models"``): test ``rmse``, ``nll`` (mean
negative log-likelihood of a test point under the predictive distribution; the test
log-likelihood per point is ``-nll``), ``coverage_90`` (fraction of test targets inside the
central 90% predictive interval, from the predictive mean and total std), ``width_90``,
``noise_std`` (aleatoric) and ``epistemic_std`` (mean over the test set).

Writes a run folder: ``metrics.json`` (``uncertlr.metrics/1`` envelope, regression fields),
``history.json``, ``predictions.npz`` (targets and every model's ``[S, N]`` means and
variances), ``coverage.png`` (observed vs nominal interval coverage) and
``regression_1d.png`` (toy) or ``predictions.png`` (diabetes).

Usage::

    python examples/regression_1d.py                    # toy, ~15 s on one core
    python examples/regression_1d.py --data diabetes    # ~15 s
    python examples/regression_1d.py --quick            # a few seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import torch

from uncertlr import metrics, runfolder
from uncertlr.app.pipeline import Method, NetFactory, Task, compare, results_table, save
from uncertlr.diagnostics.plots import save_figure
from uncertlr.likelihoods import NormalPrediction

#: The toy data's input ranges; the gap between them has no training data.
TOY_RANGES = ((-4.0, -1.0), (1.0, 4.0))
TOY_GAP = (-1.0, 1.0)


@dataclass(frozen=True)
class RegressionConfig:
    """Settings of the regression example (all recorded in ``metrics.json``)."""

    data: str = "toy"  # "toy" or "diabetes"
    seed: int = 0
    hidden: tuple[int, ...] = (50, 50)
    activation: str = "tanh"
    epochs: int = 2000
    det_epochs: int = 2000
    batch_size: int = 64
    lr: float = 1e-2
    det_lr: float = 1e-2
    det_weight_decay: float = 0.0
    kl_weight: float = 1.0
    prior_scale: float = 1.0
    init_scale: float = 1e-2
    num_samples: int = 100
    num_particles: int = 1
    toy_train: int = 160
    toy_test: int = 500
    toy_noise: float = 0.15
    quick: bool = False


#: Per-data-set defaults. toy: a tempered posterior (``kl_weight=0.1``; with the full ELBO the
#: mean-field posterior of this 2,700-weight tanh net on 160 points underfits: RMSE 0.68, noise
#: std 0.84 for a true 0.15). diabetes: the full ELBO, a one-hidden-layer ReLU net, and a
#: deterministic net stopped after 100 epochs at lr 1e-3 (it overfits 331 patients when trained
#: as long as the BNN: RMSE 67 and 69% coverage of its 90% intervals).
DATA_DEFAULTS: dict[str, dict[str, Any]] = {
    "toy": dict(kl_weight=0.1),
    "diabetes": dict(hidden=(50,), activation="relu", epochs=1000, det_epochs=100, det_lr=1e-3),
}
QUICK: dict[str, dict[str, Any]] = {
    "toy": dict(epochs=500, det_epochs=300, num_samples=50, quick=True),
    "diabetes": dict(epochs=250, det_epochs=100, num_samples=50, quick=True),
}


# --------------------------------------------------------------------------- data


def toy_data(n: int, *, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points ``x[N, 1]`` uniform on ``[-4, -1] ∪ [1, 4]`` and ``y[N, 1] = sin(x) + N(0, noise²)``."""
    rng = np.random.default_rng(seed)
    side = rng.integers(0, 2, n)
    lo, hi = np.array([r[0] for r in TOY_RANGES])[side], np.array([r[1] for r in TOY_RANGES])[side]
    x = rng.uniform(lo, hi)
    y = np.sin(x) + noise * rng.standard_normal(n)
    return x[:, None].astype(np.float32), y[:, None].astype(np.float32)


# --------------------------------------------------------------------------- models


def _net(cfg: RegressionConfig, in_features: int) -> NetFactory:
    from uncertlr_models import MLP

    return lambda: MLP(in_features, cfg.hidden, 1, activation=cfg.activation)


def methods(cfg: RegressionConfig) -> list[Method]:
    """The deterministic MLP (Gaussian likelihood with a learned noise, AdamW) and the BNN."""
    det = Method(
        "deterministic",
        bayesian=False,
        epochs=cfg.det_epochs,
        lr=cfg.det_lr,
        batch_size=cfg.batch_size,
        optimizer="adamw",
        weight_decay=cfg.det_weight_decay,
    )
    bnn = Method(
        "bnn",
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        kl_weight=cfg.kl_weight,
        prior_scale=cfg.prior_scale,
        init_scale=cfg.init_scale,
        num_particles=cfg.num_particles,
        num_samples=cfg.num_samples,
    )
    return [det, bnn]


def _np(pred: NormalPrediction) -> NormalPrediction:
    """``[S, N, 1]`` tensors → ``[S, N]`` float64 numpy arrays."""
    return NormalPrediction(*(np.asarray(a.detach().cpu(), dtype=np.float64)[..., 0] for a in pred))


# --------------------------------------------------------------------------- plots


def _band(ax: Any, x: np.ndarray, mu: np.ndarray, sd: np.ndarray, z: float, **kw: Any) -> None:
    ax.fill_between(x, mu - z * sd, mu + z * sd, linewidth=0, **kw)


def toy_figure(
    preds: dict[str, NormalPrediction],
    grid: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    results: dict[str, dict[str, float]],
) -> Any:
    """One panel per model: data, sin(x), predictive mean, epistemic and total 90% bands."""
    import matplotlib.pyplot as plt

    z = NormalDist().inv_cdf(0.95)
    fig, axes = plt.subplots(1, len(preds), figsize=(5.2 * len(preds), 3.9), sharey=True, squeeze=False)
    for ax, (name, pred) in zip(axes[0], preds.items()):
        d = metrics.predictive_variance(pred.mean, pred.variance)
        mu = pred.mean.mean(0)
        ax.axvspan(*TOY_GAP, color="0.93", zorder=0, label="no training data")
        _band(
            ax, grid, mu, np.sqrt(d.total), z, color="C0", alpha=0.18, label="90% total (noise + epistemic)"
        )
        _band(ax, grid, mu, np.sqrt(d.epistemic), z, color="C1", alpha=0.55, label="90% epistemic")
        ax.plot(grid, np.sin(grid), "k--", lw=1, label="sin(x)")
        ax.plot(grid, mu, color="C0", lw=1.8, label="predictive mean")
        ax.scatter(x[:, 0], y[:, 0], s=6, color="k", alpha=0.45, linewidths=0, label="training data")
        r = results[name]
        extra = f", gap/data epistemic std {r['gap_ratio']:.1f}x" if r.get("gap_ratio") else ""
        ax.set_title(f"{name}: test RMSE {r['rmse']:.3f}, NLL {r['nll']:.2f}{extra}", fontsize=9.5)
        ax.set_xlabel("x")
        ax.set_xlim(grid[0], grid[-1])
        ax.set_ylim(-2.6, 2.6)
        ax.grid(alpha=0.25)
    axes[0, 0].set_ylabel("y")
    handles, labels = axes[0, -1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def coverage_figure(preds: dict[str, NormalPrediction], targets: np.ndarray, *, title: str) -> Any:
    """Observed coverage of central predictive intervals against their nominal level, per model."""
    import matplotlib.pyplot as plt

    levels = np.linspace(0.05, 0.99, 40)
    fig, ax = plt.subplots(figsize=(4.4, 4.0))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    for name, pred in preds.items():
        ax.plot(
            levels,
            [runfolder.interval_coverage(pred.mean, pred.variance, targets, lv)[0] for lv in levels],
            lw=1.6,
            label=name,
        )
    ax.set_xlabel("nominal interval level")
    ax.set_ylabel("observed coverage (test)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.25)
    fig.tight_layout()
    return fig


def predictions_figure(preds: dict[str, NormalPrediction], targets: np.ndarray, *, units: str) -> Any:
    """Predicted vs observed test targets with 90% predictive intervals, one panel per model."""
    import matplotlib.pyplot as plt

    z = NormalDist().inv_cdf(0.95)
    fig, axes = plt.subplots(1, len(preds), figsize=(4.2 * len(preds), 4.0), sharey=True, squeeze=False)
    lo, hi = float(targets.min()), float(targets.max())
    for ax, (name, pred) in zip(axes[0], preds.items()):
        mu = pred.mean.mean(0)
        sd = np.sqrt(metrics.predictive_variance(pred.mean, pred.variance).total)
        ax.errorbar(targets, mu, yerr=z * sd, fmt="o", ms=3, lw=0.6, alpha=0.6, color="C0")
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(f"observed {units}")
        ax.grid(alpha=0.25)
    axes[0, 0].set_ylabel(f"predicted {units} (90% interval)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- the run


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def run(cfg: RegressionConfig, *, out: str | Path = "runs", console: Any = None) -> Path:
    """Run the example; returns the run folder."""
    from rich.console import Console

    console = console or Console()
    t_start = time.perf_counter()
    if cfg.data == "toy":
        x_np, y_np = toy_data(cfg.toy_train, noise=cfg.toy_noise, seed=cfg.seed)
        xt_np, yt_np = toy_data(cfg.toy_test, noise=cfg.toy_noise, seed=cfg.seed + 1)
        loc, scale, units = 0.0, 1.0, ""
        desc = (
            f"y = sin(x) + N(0, {cfg.toy_noise}²), x in [-4, -1] ∪ [1, 4]: "
            f"{cfg.toy_train} train / {cfg.toy_test} test points"
        )
    elif cfg.data == "diabetes":
        from uncertlr.data import load_diabetes

        split = load_diabetes(seed=cfg.seed)
        x_np, y_np = split.x_train, split.y_train[:, None]
        xt_np, yt_np = split.x_test, split.y_test[:, None]
        loc, scale, units = split.y_mean, split.y_scale, "disease progression"
        desc = (
            f"sklearn diabetes: {len(x_np)} train / {len(xt_np)} test patients, {x_np.shape[1]} features; "
            f"target standardised on train (mean {loc:.1f}, std {scale:.1f}), metrics in original units"
        )
    else:
        raise ValueError(f"data must be toy or diabetes; got {cfg.data!r}")
    task = Task(
        f"regression-{cfg.data}",
        _tensor(x_np),
        _tensor(y_np),
        _tensor(xt_np),
        _tensor(yt_np),
        y_loc=float(loc),
        y_scale=float(scale),
    )
    targets = task.test_targets()  # original units
    run_dir = runfolder.new_run_dir(out, f"regression-{cfg.data}")
    console.print(
        f"[bold]{cfg.data}[/]: {desc}; MLP {cfg.hidden} ({cfg.activation}); torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads" + ("; [yellow]quick mode[/]" if cfg.quick else "")
    )
    result = compare(task, methods(cfg), _net(cfg, x_np.shape[1]), seed=cfg.seed)
    preds = {
        n: NormalPrediction(result.predictions[f"{n}_mean"], result.predictions[f"{n}_variance"])
        for n in result.results
    }
    if cfg.data == "diabetes":
        # predict the training mean with the training std (standardised units: N(0, 1))
        zero = np.zeros((1, len(xt_np)))
        base = NormalPrediction(zero, np.ones_like(zero)).rescale(loc=loc, scale=scale)
        preds = {"mean baseline": base, **preds}
        result.results = {"mean baseline": runfolder.regression_summary(base, targets), **result.results}
        result.predictions.update(mean_baseline_mean=base.mean.astype(np.float32))
        result.predictions.update(mean_baseline_variance=base.variance.astype(np.float32))
    grid_preds: dict[str, NormalPrediction] = {}
    grid = np.linspace(-6.0, 6.0, 241)
    if cfg.data == "toy":
        in_gap = (grid > TOY_GAP[0]) & (grid < TOY_GAP[1])
        on_data = np.zeros_like(in_gap)
        for a, b in TOY_RANGES:
            on_data |= (grid >= a) & (grid <= b)
        for name, trained in result.trained.items():
            grid_preds[name] = _np(trained.predict(_tensor(grid[:, None])))
            epi = np.sqrt(metrics.predictive_variance(*grid_preds[name]).epistemic)
            r = result.results[name]
            r["epistemic_std_data"] = float(epi[on_data].mean())
            r["epistemic_std_gap"] = float(epi[in_gap].mean())
            if r["epistemic_std_data"] > 0:
                r["gap_ratio"] = r["epistemic_std_gap"] / r["epistemic_std_data"]
        result.predictions.update(x_train=x_np, y_train=y_np, x_test=xt_np, grid=grid.astype(np.float32))
        for name, pred in grid_preds.items():
            result.predictions[f"{name}_grid_mean"] = pred.mean.astype(np.float32)
            result.predictions[f"{name}_grid_variance"] = pred.variance.astype(np.float32)

    title = "toy: sin(x) with a gap in (-1, 1)" if cfg.data == "toy" else "diabetes (original units)"
    console.print(results_table(result.results, title=f"{title}, test set", rows=runfolder.REGRESSION_ROWS))
    doc = {
        "task": f"regression-{cfg.data}",
        "seed": cfg.seed,
        "config": asdict(cfg),
        "data": desc,
        "target_units": {"loc": loc, "scale": scale},
        "total_seconds": time.perf_counter() - t_start,
    }
    save(result, run_dir, doc=doc, console=console)
    save_figure(coverage_figure(preds, targets, title=title), run_dir / "coverage.png", dpi=130)
    if cfg.data == "toy":
        plot = "regression_1d.png"
        save_figure(toy_figure(grid_preds, grid, x_np, y_np, result.results), run_dir / plot, dpi=130)
    else:
        plot = "predictions.png"
        save_figure(predictions_figure(preds, targets, units=units), run_dir / plot, dpi=130)
    console.print(
        f"run folder: [bold]{run_dir}[/] (metrics.json, history.json, predictions.npz, coverage.png, "
        f"{plot}); {time.perf_counter() - t_start:.0f} s in all"
    )
    return run_dir


def _parser() -> argparse.ArgumentParser:
    d = RegressionConfig()
    p = argparse.ArgumentParser(
        prog="regression_1d.py",
        description="Deterministic vs Bayesian MLP for regression: a 1-D sinusoid with a gap in the "
        "inputs (epistemic uncertainty where there is no data) or sklearn's diabetes data.",
    )
    p.add_argument("--data", choices=("toy", "diabetes"), default=d.data, help="data set (default: toy)")
    p.add_argument("--out", default="runs", help="folder for run folders (default: runs)")
    p.add_argument("--quick", action="store_true", help="fewer epochs and samples: a few seconds")
    p.add_argument("--epochs", type=int, default=None, help="epochs of the BNN (default: per data set)")
    p.add_argument(
        "--kl-weight",
        type=float,
        default=None,
        help="KL weight of the BNN ELBO (default: toy 0.1, diabetes 1)",
    )
    p.add_argument(
        "--num-samples", type=int, default=None, help=f"posterior samples (default {d.num_samples})"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return p


def main(argv: Sequence[str] | None = None) -> Path:
    """Command-line entry point; returns the run folder."""
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = replace(RegressionConfig(data=args.data, seed=args.seed), **DATA_DEFAULTS[args.data])
    if args.quick:
        cfg = replace(cfg, **QUICK[args.data])
    if args.epochs is not None:
        cfg = replace(cfg, epochs=args.epochs)
    if args.num_samples is not None:
        cfg = replace(cfg, num_samples=args.num_samples)
    if args.kl_weight is not None:
        cfg = replace(cfg, kl_weight=args.kl_weight)
    return run(cfg, out=args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
