"""``uncertlr demo``: a Bayesian MLP beside the same deterministic MLP on sklearn's digits.

Four models: ``deterministic``, ``bnn``, and the same BNN with the LR modulator —
``bnn+g1`` (global G1 ratio rule on the batch's predictive entropy, κ = −0.5) and
``bnn+p2`` (per-weight gradient × posterior-std rule, κ = −0.5, mean-1 per tensor).
Trains each with a progress bar, then scores them on the test set and on an
out-of-distribution set (the test images with their pixels shuffled), prints a
table and writes a run folder with ``metrics.json``, a reliability diagram,
uncertainty histograms, the predictive samples, the training histories and the
diagnostics report.

The BNN uses the default ``N(0, 1)`` prior and a tempered ELBO (``kl_weight=0.1``):
with the full KL weight the converged mean-field posterior on 1,347 images is
under-confident (ECE ~0.1, see README "Why the demo tempers the KL").
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from rich.markup import escape

from uncertlr import runfolder
from uncertlr.app.config import BNNConfig, DemoConfig, UserError
from uncertlr.app.pipeline import Method, NetFactory, Task, compare, results_table, save
from uncertlr.data import load_digits, shuffle_pixels
from uncertlr.modulation import GradSigmaRatio, Ratio

__all__ = [
    "MODULATED",
    "BNNConfig",
    "DemoConfig",
    "demo_methods",
    "digits_task",
    "method_for",
    "mlp_factory",
    "run_demo",
]

#: The modulated BNNs the demo trains after ``deterministic`` and ``bnn``: name -> rule.
MODULATED = {"bnn+g1": Ratio(kappa=-0.5), "bnn+p2": GradSigmaRatio(kappa=-0.5)}


def method_for(cfg: BNNConfig, name: str = "bnn", rule: Any = None) -> Method:
    """The pipeline :class:`~uncertlr.app.pipeline.Method` for the BNN of ``cfg`` (optionally modulated)."""
    return Method(
        name,
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        kl_weight=cfg.kl_weight,
        prior_scale=cfg.prior_scale,
        init_scale=cfg.init_scale,
        num_samples=cfg.num_samples,
        rule=rule,
    )


def demo_methods(cfg: DemoConfig) -> list[Method]:
    """``deterministic``, ``bnn`` and the modulated BNNs of :data:`MODULATED`, in that order."""
    det = Method(
        "deterministic", bayesian=False, epochs=cfg.det_epochs, lr=cfg.det_lr, batch_size=cfg.batch_size
    )
    return [det, method_for(cfg)] + [method_for(cfg, name, rule) for name, rule in MODULATED.items()]


#: Fraction of the training split held out for fitting the temperature (post-hoc calibration).
VALIDATION_FRACTION = 0.2


def digits_task(seed: int, *, validation: bool = False) -> Task:
    """sklearn's digits (75/25 split by ``seed``); OOD = the test images with shuffled pixels.

    With ``validation``, the last :data:`VALIDATION_FRACTION` of the (already shuffled) training
    split is held out: the models never train on it, and each model's temperature is fitted on it.
    """
    s = load_digits(seed=seed)
    t = torch.from_numpy
    ood = t(shuffle_pixels(s.x_test, seed=seed + 1))
    n_fit = len(s.x_train) - (round(VALIDATION_FRACTION * len(s.x_train)) if validation else 0)
    return Task(
        "digits",
        t(s.x_train[:n_fit]),
        t(s.y_train[:n_fit]),
        t(s.x_test),
        t(s.y_test),
        ood,
        "test images with shuffled pixels",
        x_val=t(s.x_train[n_fit:]) if validation else None,
        y_val=t(s.y_train[n_fit:]) if validation else None,
    )


def mlp_factory(in_features: int, hidden: tuple[int, ...], out_features: int) -> NetFactory:
    """The reference MLP (``uncertlr_models.MLP``) as a network factory."""
    from uncertlr_models import MLP

    return lambda: MLP(in_features, hidden, out_features)


def run_demo(
    out: str | Path = "runs",
    config: DemoConfig | None = None,
    *,
    net: NetFactory | None = None,
    console: Any = None,
) -> Path:
    """Run the demo and return its run folder (created fresh under ``out``, before any training).

    The folder is locked while the demo writes it; if the demo is interrupted before it saved
    anything, the empty folder is removed again.

    Args:
        net: the network factory (default: the reference MLP with ``config.hidden``).

    Raises:
        UserError: no run folder can be created under ``out``.
    """
    from rich.console import Console

    cfg = config or DemoConfig()
    console = console or Console(highlight=False)
    try:
        run = runfolder.new_run_dir(out, "demo")  # before training: an unwritable --out fails at once
    except OSError as exc:
        raise UserError(f"cannot create a run folder under {out}: {exc}") from exc
    try:
        with runfolder.lock_run_dir(run):
            _run(run, cfg, net, console)
    except BaseException:
        if {p.name for p in run.iterdir()} <= {runfolder.LOCK_FILE}:  # nothing saved yet: leave no trace
            with contextlib.suppress(OSError):
                shutil.rmtree(run)
        raise
    files = sorted(p.name for p in run.iterdir() if not p.name.startswith("."))
    console.print(f"run folder: [bold]{escape(str(run))}[/] ({escape(', '.join(files))})")
    return run


def _run(run: Path, cfg: DemoConfig, net: NetFactory | None, console: Any) -> None:
    task = digits_task(cfg.seed, validation=True)
    net = net or mlp_factory(task.x_train.shape[1], cfg.hidden, 10)
    console.print(
        f"[bold]uncertlr demo[/]: digits, {len(task.x_train)} train / {len(task.x_test)} test images, "
        f"OOD = test images with shuffled pixels; torch {escape(torch.__version__)}, "
        f"{torch.get_num_threads()} threads"
    )
    result = compare(task, demo_methods(cfg), net, seed=cfg.seed)
    console.print(results_table(result.results, title="digits: test set and shuffled-pixel OOD set"))
    doc = {"task": "digits", "seed": cfg.seed, "config": asdict(cfg), "ood": task.ood}
    save(
        result,
        run,
        doc=doc,
        inference=result.inference(num_samples=cfg.num_samples, seed=cfg.seed),
        console=console,
    )
