"""Image classification with uncertainty: a deterministic CNN vs the same CNN made Bayesian.

Data sets: sklearn's 8x8 ``digits`` (default, always available), ``mnist`` and
``fashion-mnist`` when their IDX files are in the data folder (``--data-dir`` /
``$UNCERTLR_DATA``: ``mnist/`` and ``fashion-mnist/``; ``--download`` fetches them, MD5-verified).

Out-of-distribution pair (scored by the AUROC of mutual information, ``auroc_mi``):

* digits: the test images with their pixels shuffled (``--ood shuffled``) or rotated by
  90 degrees (``--ood rotated``);
* MNIST: Fashion-MNIST test images when those files are present (and the other way round),
  else shuffled pixels.

A configuration of the pipeline behind ``uncertlr demo`` (:mod:`uncertlr.app.pipeline`):
it writes the same run folder (``metrics.json``, ``history.json``, ``predictions.npz``,
``reliability.png``, ``uncertainty.png``, and the diagnostics report ``report.html``).

Usage::

    python examples/classify_images.py                       # digits, ~1 min on 2 cores
    python examples/classify_images.py --quick               # a few epochs
    python examples/classify_images.py --dataset mnist --ood rotated --max-train 10000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uncertlr import runfolder
from uncertlr.app.pipeline import Method, NetFactory, Task, compare, results_table, save
from uncertlr.data import Split, load_digits, load_mnist, shuffle_pixels


@dataclass(frozen=True)
class ImageConfig:
    """Settings of the image example (all recorded in ``metrics.json``)."""

    dataset: str = "digits"
    ood: str = "auto"  # "auto", "shuffled", "rotated" or "fashion-mnist"/"mnist"
    model: str = "cnn"  # "cnn" or "mlp"
    seed: int = 0
    epochs: int = 150
    det_epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-2
    det_lr: float = 3e-3
    kl_weight: float = 0.1
    prior_scale: float = 1.0
    init_scale: float = 1e-3
    num_samples: int = 32
    max_train: int | None = None  # use the first N training images (MNIST is 60,000)
    quick: bool = False


QUICK = dict(epochs=5, det_epochs=5, num_samples=8, quick=True, max_train=5000)


def _load(cfg: ImageConfig, data_dir: str | None, download: bool) -> Split:
    if cfg.dataset == "digits":
        return load_digits(seed=cfg.seed, flat=False)
    if cfg.dataset in ("mnist", "fashion-mnist"):
        return load_mnist(data_dir, dataset=cfg.dataset, download=download)  # type: ignore[arg-type]
    raise ValueError(f"dataset must be digits, mnist or fashion-mnist; got {cfg.dataset!r}")


def _ood(cfg: ImageConfig, split: Split, data_dir: str | None) -> tuple[np.ndarray, str]:
    kind = cfg.ood
    other = {"mnist": "fashion-mnist", "fashion-mnist": "mnist"}.get(cfg.dataset)
    if kind == "auto":
        kind = "shuffled"
        if other is not None:
            try:
                return load_mnist(data_dir, dataset=other).x_test, f"{other} test images"  # type: ignore[arg-type]
            except FileNotFoundError:
                pass
    if kind == "shuffled":
        return shuffle_pixels(split.x_test, seed=cfg.seed + 1), "test images with shuffled pixels"
    if kind == "rotated":
        return np.ascontiguousarray(
            np.rot90(split.x_test, k=1, axes=(-2, -1))
        ), "test images rotated by 90 degrees"
    if kind in ("mnist", "fashion-mnist") and cfg.dataset != "digits":
        return load_mnist(data_dir, dataset=kind).x_test, f"{kind} test images"  # type: ignore[arg-type]
    raise ValueError(f"--ood {kind!r} does not apply to {cfg.dataset}")


def _net(cfg: ImageConfig, shape: tuple[int, ...]) -> NetFactory:
    from uncertlr_models import MLP, ImageCNN

    if cfg.model == "cnn":
        return lambda: ImageCNN(shape[0], 10, channels=(16, 32) if shape[-1] <= 8 else (16, 32, 32))
    if cfg.model == "mlp":
        return lambda: MLP(int(np.prod(shape)), (128, 128), 10)
    raise ValueError(f"model must be cnn or mlp; got {cfg.model!r}")


def methods(cfg: ImageConfig) -> list[Method]:
    """The deterministic net and the BNN, as the pipeline trains them."""
    return [
        Method(
            "deterministic", bayesian=False, epochs=cfg.det_epochs, lr=cfg.det_lr, batch_size=cfg.batch_size
        ),
        Method(
            "bnn",
            epochs=cfg.epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            kl_weight=cfg.kl_weight,
            prior_scale=cfg.prior_scale,
            init_scale=cfg.init_scale,
            num_samples=cfg.num_samples,
        ),
    ]


def run(
    cfg: ImageConfig,
    *,
    out: str | Path = "runs",
    data_dir: str | None = None,
    download: bool = False,
    console: Any = None,
) -> Path:
    """Run the example; returns the run folder."""
    from rich.console import Console

    console = console or Console()
    t_start = time.perf_counter()
    split = _load(cfg, data_dir, download)
    x_ood, ood_desc = _ood(cfg, split, data_dir)
    n = len(split.x_train) if cfg.max_train is None else min(cfg.max_train, len(split.x_train))
    t = torch.from_numpy
    task = Task(
        cfg.dataset,
        t(split.x_train[:n]),
        t(split.y_train[:n]),
        t(split.x_test),
        t(split.y_test),
        t(np.asarray(x_ood, dtype=np.float32)),
        ood_desc,
    )
    run_dir = runfolder.new_run_dir(out, f"images-{cfg.dataset}")
    console.print(
        f"[bold]{cfg.dataset}[/]: {n} train / {len(task.x_test)} test images {tuple(task.x_train.shape[1:])}, "
        f"OOD = {ood_desc}; model {cfg.model}; torch {torch.__version__}, {torch.get_num_threads()} threads"
        + ("; [yellow]quick mode[/]" if cfg.quick else "")
    )
    result = compare(task, methods(cfg), _net(cfg, tuple(task.x_train.shape[1:])), seed=cfg.seed)
    console.print(results_table(result.results, title=f"{cfg.dataset}: test set and OOD = {ood_desc}"))
    doc = {
        "task": cfg.dataset,
        "seed": cfg.seed,
        "config": asdict(cfg),
        "ood": ood_desc,
        "total_seconds": time.perf_counter() - t_start,
    }
    save(
        result,
        run_dir,
        doc=doc,
        inference=result.inference(num_samples=cfg.num_samples, seed=cfg.seed),
        console=console,
    )
    console.print(
        f"run folder: [bold]{run_dir}[/] (metrics.json, history.json, predictions.npz, reliability.png, "
        f"uncertainty.png, report.html); {time.perf_counter() - t_start:.0f} s in all"
    )
    return run_dir


def _parser() -> argparse.ArgumentParser:
    d = ImageConfig()
    p = argparse.ArgumentParser(
        prog="classify_images.py",
        description="Deterministic vs Bayesian CNN on digits / MNIST / Fashion-MNIST, "
        "with calibration and an out-of-distribution set.",
    )
    p.add_argument("--dataset", choices=("digits", "mnist", "fashion-mnist"), default=d.dataset)
    p.add_argument(
        "--ood",
        choices=("auto", "shuffled", "rotated", "mnist", "fashion-mnist"),
        default=d.ood,
        help="OOD set (auto: the other MNIST-format set when present, else shuffled pixels)",
    )
    p.add_argument("--model", choices=("cnn", "mlp"), default=d.model)
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder holding mnist/ and fashion-mnist/ (default: "
        "$UNCERTLR_DATA, ../shared/data, ~/.cache/uncertlr/data)",
    )
    p.add_argument("--download", action="store_true", help="download MNIST / Fashion-MNIST if missing")
    p.add_argument("--out", default="runs", help="folder for run folders (default: runs)")
    p.add_argument("--quick", action="store_true", help="a few epochs (and at most 5,000 training images)")
    p.add_argument("--epochs", type=int, default=None, help=f"epochs of both models (default {d.epochs})")
    p.add_argument("--max-train", type=int, default=None, help="use only the first N training images")
    p.add_argument(
        "--num-samples", type=int, default=None, help=f"posterior samples (default {d.num_samples})"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    return p


def main(argv: Sequence[str] | None = None) -> Path:
    """Command-line entry point; returns the run folder."""
    args = _parser().parse_args(argv)
    cfg = ImageConfig(dataset=args.dataset, ood=args.ood, model=args.model, seed=args.seed)
    if args.quick:
        cfg = replace(cfg, **QUICK)
    for key, val in (("max_train", args.max_train), ("num_samples", args.num_samples)):
        if val is not None:
            cfg = replace(cfg, **{key: val})
    if args.epochs is not None:
        cfg = replace(cfg, epochs=args.epochs, det_epochs=args.epochs)
    return run(cfg, out=args.out, data_dir=args.data_dir, download=args.download)


if __name__ == "__main__":
    main(sys.argv[1:])
