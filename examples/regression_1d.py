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
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
from torch import nn

from uncertlr import likelihoods, metrics, priors
from uncertlr.likelihoods import NormalPrediction
from uncertlr.runs import METRICS_SCHEMA, atomic_write, environment, new_run_dir, write_json
from uncertlr.torch import bayesian
from uncertlr.torch.training import fit, progress_bar

Predict = Callable[[torch.Tensor], NormalPrediction]

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


class PointRegressor(nn.Module):
    """A deterministic network with a learned homoskedastic noise std, fitted by maximum likelihood."""

    def __init__(self, net: nn.Module, *, init_scale: float = 1.0):
        super().__init__()
        self.net = net
        self.log_noise = nn.Parameter(torch.tensor(math.log(init_scale)))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean Gaussian negative log-likelihood of ``y[B, D]`` (constant included)."""
        var = torch.exp(2 * self.log_noise)
        return (0.5 * (self.net(x) - y) ** 2 / var + self.log_noise + 0.5 * math.log(2 * math.pi)).mean()

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> NormalPrediction:
        """A one-sample :class:`NormalPrediction` ``[1, N, D]`` (no epistemic part)."""
        mean = self.net(x)[None]
        return NormalPrediction(mean, torch.exp(2 * self.log_noise).expand_as(mean))


def _net(cfg: RegressionConfig, in_features: int) -> nn.Module:
    from uncertlr_models import MLP

    return MLP(in_features, cfg.hidden, 1, activation=cfg.activation)


def train_models(
    cfg: RegressionConfig, x: torch.Tensor, y: torch.Tensor, *, bar: Any
) -> tuple[dict[str, Predict], dict[str, list[dict[str, float]]], dict[str, float]]:
    """Train the deterministic MLP and the BNN on ``(x[N, D], y[N, 1])``.

    Returns:
        ``predict`` functions (inputs → :class:`NormalPrediction` ``[S, N, 1]``), training
        histories, and training seconds per model.
    """
    n = len(x)
    steps = math.ceil(n / cfg.batch_size)
    predictors: dict[str, Predict] = {}
    histories: dict[str, list[dict[str, float]]] = {}
    seconds: dict[str, float] = {}

    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    det = PointRegressor(_net(cfg, x.shape[1]))
    opt = torch.optim.AdamW(det.parameters(), lr=cfg.det_lr, weight_decay=cfg.det_weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.det_epochs * steps)
    histories["deterministic"] = fit(
        det.loss,
        opt,
        x,
        y,
        epochs=cfg.det_epochs,
        batch_size=cfg.batch_size,
        scheduler=sched,
        progress=bar,
        description="deterministic",
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    det.eval()
    predictors["deterministic"] = det.predict
    seconds["deterministic"] = time.perf_counter() - t0

    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    bnn = bayesian(
        _net(cfg, x.shape[1]),
        num_data=n,
        prior=priors.Normal(cfg.prior_scale),
        likelihood=likelihoods.Normal(),
        kl_weight=cfg.kl_weight,
        init_scale=cfg.init_scale,
    )
    opt = torch.optim.Adam(bnn.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs * steps)
    histories["bnn"] = fit(
        lambda a, b: bnn.elbo(a, b, num_particles=cfg.num_particles),
        opt,
        x,
        y,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        scheduler=sched,
        progress=bar,
        description="bnn",
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    predictors["bnn"] = lambda a: bnn.predict(a, num_samples=cfg.num_samples)  # type: ignore[return-value]
    seconds["bnn"] = time.perf_counter() - t0
    return predictors, histories, seconds


# --------------------------------------------------------------------------- evaluation


def _np(pred: NormalPrediction) -> NormalPrediction:
    """``[S, N, 1]`` tensors → ``[S, N]`` float64 numpy arrays."""
    return NormalPrediction(
        *(np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float64)[..., 0] for a in pred)
    )


def interval_coverage(pred: NormalPrediction, targets: np.ndarray, level: float) -> tuple[float, float]:
    """Coverage and mean width of the central ``level`` predictive interval.

    The interval is ``mean ± z·std`` of the predictive distribution's moments (posterior
    mean of the means; total variance = aleatoric + epistemic), ``z`` the standard normal
    quantile — exact for a deterministic Gaussian model, a moment-matched approximation of
    the BNN's mixture of Gaussians.
    """
    mu = pred.mean.mean(0)
    sd = np.sqrt(metrics.predictive_variance(pred.mean, pred.variance).total)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    return float(np.mean(np.abs(targets - mu) <= z * sd)), float(np.mean(2 * z * sd))


def regression_summary(pred: NormalPrediction, targets: np.ndarray) -> dict[str, float]:
    """RMSE, NLL, 90% coverage and width, and mean noise / epistemic std of ``pred`` (``[S, N]``)."""
    d = metrics.predictive_variance(pred.mean, pred.variance)
    cov, width = interval_coverage(pred, targets, 0.9)
    return {
        "rmse": float(metrics.rmse(pred.mean, targets)),
        "nll": float(metrics.gaussian_nll(pred.mean, pred.variance, targets)),
        "coverage_90": cov,
        "width_90": width,
        "noise_std": float(np.mean(np.sqrt(d.aleatoric))),
        "epistemic_std": float(np.mean(np.sqrt(d.epistemic))),
    }


#: Rows of the results table: (metrics.json key, label, format).
TABLE_ROWS = (
    ("rmse", "RMSE", ".3f"),
    ("nll", "NLL per test point", ".3f"),
    ("coverage_90", "90% interval coverage", ".3f"),
    ("width_90", "90% interval width", ".3f"),
    ("noise_std", "noise std (aleatoric)", ".3f"),
    ("epistemic_std", "epistemic std, test", ".3f"),
    ("epistemic_std_data", "epistemic std, on the data", ".3f"),
    ("epistemic_std_gap", "epistemic std, in the gap", ".3f"),
    ("gap_ratio", "gap / data epistemic std", ".2f"),
    ("seconds", "seconds", ".1f"),
)


def results_table(results: dict[str, dict[str, float]], *, title: str) -> Any:
    """A rich table: one column per model, one row per metric present in any model."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    for name in results:
        table.add_column(name, justify="right")
    for key, label, fmt in TABLE_ROWS:
        if any(key in r for r in results.values()):
            table.add_row(label, *(format(r[key], fmt) if key in r else "-" for r in results.values()))
    return table


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
        ax.plot(levels, [interval_coverage(pred, targets, lv)[0] for lv in levels], lw=1.6, label=name)
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

    from uncertlr.plotting import save_figure

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
    x, y, xt = _tensor(x_np), _tensor(y_np), _tensor(xt_np)
    targets = (yt_np[:, 0].astype(np.float64) * scale) + loc  # original units
    console.print(
        f"[bold]{cfg.data}[/]: {desc}; MLP {cfg.hidden} ({cfg.activation}); torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads" + ("; [yellow]quick mode[/]" if cfg.quick else "")
    )

    with progress_bar() as bar:
        predictors, histories, seconds = train_models(cfg, x, y, bar=bar)

    preds: dict[str, NormalPrediction] = {}
    if cfg.data == "diabetes":
        # predict the training mean with the training std (standardised units: N(0, 1))
        zero = np.zeros((1, len(xt_np)))
        preds["mean baseline"] = NormalPrediction(zero, np.ones_like(zero)).rescale(loc=loc, scale=scale)
    results: dict[str, dict[str, float]] = {}
    for name, predict in predictors.items():
        with torch.no_grad():
            preds[name] = _np(predict(xt)).rescale(loc=loc, scale=scale)
    for name, pred in preds.items():
        results[name] = regression_summary(pred, targets)
        if name in seconds:
            results[name]["seconds"] = seconds[name]

    grid_preds: dict[str, NormalPrediction] = {}
    grid = np.linspace(-6.0, 6.0, 241)
    if cfg.data == "toy":
        in_gap = (grid > TOY_GAP[0]) & (grid < TOY_GAP[1])
        on_data = np.zeros_like(in_gap)
        for a, b in TOY_RANGES:
            on_data |= (grid >= a) & (grid <= b)
        for name, predict in predictors.items():
            with torch.no_grad():
                grid_preds[name] = _np(predict(_tensor(grid[:, None])))
            epi = np.sqrt(metrics.predictive_variance(*grid_preds[name]).epistemic)
            results[name]["epistemic_std_data"] = float(epi[on_data].mean())
            results[name]["epistemic_std_gap"] = float(epi[in_gap].mean())
            if results[name]["epistemic_std_data"] > 0:
                results[name]["gap_ratio"] = (
                    results[name]["epistemic_std_gap"] / results[name]["epistemic_std_data"]
                )

    title = "toy: sin(x) with a gap in (-1, 1)" if cfg.data == "toy" else "diabetes (original units)"
    console.print(results_table(results, title=f"{title}, test set"))

    run_dir = new_run_dir(out, f"regression-{cfg.data}")
    env = environment()
    doc = {
        "schema": METRICS_SCHEMA,
        "task": f"regression-{cfg.data}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "device": "cpu",
        "versions": env["versions"],
        "python": env["python"],
        "seed": cfg.seed,
        "config": asdict(cfg),
        "data": desc,
        "target_units": {"loc": loc, "scale": scale},
        "total_seconds": time.perf_counter() - t_start,
        "models": results,
    }
    write_json(run_dir / "metrics.json", doc)
    write_json(run_dir / "history.json", histories)
    arrays: dict[str, np.ndarray] = {"targets": targets.astype(np.float32)}
    for name, pred in preds.items():
        key = name.replace(" ", "_")
        arrays[f"{key}_mean"] = pred.mean.astype(np.float32)
        arrays[f"{key}_variance"] = pred.variance.astype(np.float32)
    if cfg.data == "toy":
        arrays.update(x_train=x_np, y_train=y_np, x_test=xt_np, grid=grid.astype(np.float32))
        for name, pred in grid_preds.items():
            arrays[f"{name}_grid_mean"] = pred.mean.astype(np.float32)
            arrays[f"{name}_grid_variance"] = pred.variance.astype(np.float32)
    atomic_write(run_dir / "predictions.npz", lambda f: np.savez_compressed(f, **arrays))
    save_figure(coverage_figure(preds, targets, title=title), run_dir / "coverage.png", dpi=130)
    if cfg.data == "toy":
        plot = "regression_1d.png"
        save_figure(toy_figure(grid_preds, grid, x_np, y_np, results), run_dir / plot, dpi=130)
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
