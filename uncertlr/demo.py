"""``uncertlr demo``: a Bayesian MLP beside the same deterministic MLP on sklearn's digits.

Four models: ``deterministic``, ``bnn``, and the same BNN with the LR modulator —
``bnn+g1`` (global G1 ratio rule on the batch's predictive entropy, κ = −0.5) and
``bnn+p2`` (per-weight gradient × posterior-std rule, κ = −0.5, mean-1 per tensor).
Trains each with a progress bar, then scores them on the test set and on an
out-of-distribution set (the test images with their pixels shuffled), prints a
table and writes a run folder with ``metrics.json``, a reliability diagram,
uncertainty histograms, the predictive samples and the training histories.

The BNN uses the default ``N(0, 1)`` prior and a tempered ELBO (``kl_weight=0.1``):
with the full KL weight the converged mean-field posterior on 1,347 images is
under-confident (ECE ~0.1, see README "Why the demo tempers the KL").
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from uncertlr import priors
from uncertlr.data import load_digits, shuffle_pixels
from uncertlr.evaluation import SUMMARY_ROWS, classification_summary
from uncertlr.modulation import GradSigmaRatio, Ratio
from uncertlr.runs import new_run_dir, save_classification_run, write_report
from uncertlr.torch import Modulator, batch_entropy, bayesian
from uncertlr.torch.training import fit, progress_bar

__all__ = ["DemoConfig", "results_table", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the digits demo (all recorded in ``metrics.json``)."""

    seed: int = 0
    hidden: tuple[int, ...] = (128, 128)
    epochs: int = 150
    batch_size: int = 64
    lr: float = 1e-2
    det_lr: float = 3e-3
    det_epochs: int = 60
    kl_weight: float = 0.1
    prior_scale: float = 1.0
    init_scale: float = 1e-3
    num_samples: int = 64


def _train_deterministic(cfg: DemoConfig, x: torch.Tensor, y: torch.Tensor, bar: Any):
    from uncertlr_models import MLP

    torch.manual_seed(cfg.seed)
    net = MLP(x.shape[1], cfg.hidden, 10)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.det_lr)
    total = cfg.det_epochs * -(-len(x) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    hist = fit(
        lambda xb, yb: F.cross_entropy(net(xb), yb),
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
    net.eval()
    return (lambda xx: torch.softmax(net(xx), -1)[None]), hist


def _train_bnn(
    cfg: DemoConfig, x: torch.Tensor, y: torch.Tensor, bar: Any, *, rule: Any = None, name: str = "bnn"
):
    """Train the BNN; with ``rule``, an LR modulator scales every Adam step (G1: by the batch's
    predictive entropy from the ELBO's own outputs; P2: per weight, by gradient × posterior std)."""
    from uncertlr_models import MLP

    torch.manual_seed(cfg.seed)
    bnn = bayesian(
        MLP(x.shape[1], cfg.hidden, 10),
        num_data=len(x),
        prior=priors.Normal(cfg.prior_scale),
        kl_weight=cfg.kl_weight,
        init_scale=cfg.init_scale,
    )
    opt = torch.optim.Adam(bnn.parameters(), lr=cfg.lr)
    total = cfg.epochs * -(-len(x) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    before_step = None
    mod = None
    if rule is not None:
        per_param = bool(getattr(rule, "per_parameter", False))
        mod = Modulator(rule, sigma=bnn if per_param else None).attach(opt)
        before_step = lambda terms: mod.observe(batch_entropy(terms.outputs))  # noqa: E731
    hist = fit(
        bnn.elbo,
        opt,
        x,
        y,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        scheduler=sched,
        progress=bar,
        description=name,
        generator=torch.Generator().manual_seed(cfg.seed),
        before_step=before_step,
    )
    if mod is not None:  # history.json: the modulator's signal and factor beside each step's loss and lr
        for rec, m in zip(hist, mod.history):
            rec.update({k: m[k] for k in ("signal", "scale", "scale_min", "scale_max") if k in m})
    return (lambda xx: bnn.predict(xx, num_samples=cfg.num_samples)), hist, bnn


#: The modulated BNNs the demo trains after `deterministic` and `bnn`: name -> rule.
MODULATED = {"bnn+g1": Ratio(kappa=-0.5), "bnn+p2": GradSigmaRatio(kappa=-0.5)}


#: Rows of the results table: (metrics.json key, label, format).
TABLE_ROWS = SUMMARY_ROWS


def results_table(
    results: dict[str, dict[str, float]], *, title: str, rows: Sequence[tuple[str, str, str]] = TABLE_ROWS
) -> Any:
    """A rich table with one column per model and one row per ``(key, label, format)`` of ``rows``."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    for name in results:
        table.add_column(name, justify="right")
    for key, label, fmt in rows:
        table.add_row(label, *(format(r[key], fmt) if key in r else "-" for r in results.values()))
    return table


def run_demo(out: str | Path = "runs", config: DemoConfig | None = None, *, console: Any = None) -> Path:
    """Run the demo and return its run folder (created fresh under ``out``)."""
    from rich.console import Console

    cfg = config or DemoConfig()
    console = console or Console()
    split = load_digits(seed=cfg.seed)
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    xt, yt = torch.from_numpy(split.x_test), torch.from_numpy(split.y_test)
    xo = torch.from_numpy(shuffle_pixels(split.x_test, seed=cfg.seed + 1))
    console.print(
        f"[bold]uncertlr demo[/]: digits, {len(x)} train / {len(xt)} test images, "
        f"OOD = test images with shuffled pixels; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )

    results: dict[str, dict[str, float]] = {}
    preds: dict[str, np.ndarray] = {"labels": split.y_test}
    histories: dict[str, list[dict[str, float]]] = {}
    posteriors: dict[str, Any] = {}  # Bayesian models, for the diagnostics report
    with progress_bar() as bar:
        trainers = {"deterministic": _train_deterministic, "bnn": _train_bnn}
        for mod_name, rule in MODULATED.items():
            trainers[mod_name] = lambda c, a, b, bb, r=rule, n=mod_name: _train_bnn(
                c, a, b, bb, rule=r, name=n
            )
        for name, train in trainers.items():
            t0 = time.perf_counter()
            predict, hist, *posterior = train(cfg, x, y, bar)
            posteriors.update({name: posterior[0]} if posterior else {})
            with torch.no_grad():
                p_in, p_out = predict(xt), predict(xo)
            seconds = time.perf_counter() - t0
            results[name] = {**classification_summary(p_in, yt, p_out), "seconds": seconds}
            preds[f"{name}_test"] = p_in.numpy().astype(np.float32)
            preds[f"{name}_ood"] = p_out.numpy().astype(np.float32)
            histories[name] = hist

    console.print(results_table(results, title="digits: test set and shuffled-pixel OOD set"))

    run = new_run_dir(out, "demo")
    save_classification_run(
        run,
        {
            "task": "digits",
            "seed": cfg.seed,
            "config": asdict(cfg),
            "ood": "test images with shuffled pixels",
            "models": results,
        },
        predictions=preds,
        histories=histories,
        ood_label="shuffled pixels",
    )
    write_report(run, posteriors, xt, yt, num_samples=cfg.num_samples, seed=cfg.seed, console=console)
    console.print(
        f"run folder: [bold]{run}[/] (metrics.json, reliability.png, uncertainty.png, predictions.npz, "
        "history.json, posterior-*.nc, summary.json, report.html)"
    )
    return run
