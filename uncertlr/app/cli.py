"""Command line: ``uncertlr demo`` and ``uncertlr report``.

Example:
    $ uncertlr demo --out runs          # digits: deterministic MLP vs Bayesian MLP
    $ uncertlr report runs/digits-...   # (re)build report.html, posterior-*.nc, summary.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import uncertlr

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="uncertlr", description="Bayesian, uncertainty-aware training for existing models."
    )
    p.add_argument("--version", action="version", version=f"uncertlr {uncertlr.__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train a Bayesian MLP beside a deterministic one on sklearn digits")
    d.add_argument("--out", default="runs", help="folder for run folders (default: runs)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--epochs", type=int, default=None, help="BNN epochs (default 150)")
    d.add_argument(
        "--num-samples", type=int, default=None, help="posterior samples for prediction (default 64)"
    )
    t = sub.add_parser(
        "train",
        help="train a Bayesian MLP with checkpoints; Ctrl-C/SIGTERM checkpoint and exit, --resume continues",
        description="Train a Bayesian MLP. Data-parallel: torchrun --standalone --nproc_per_node=N "
        "$(which uncertlr) train ... (gloo on CPU, NCCL on GPU; --batch-size is the global batch).",
    )
    t.add_argument("--out", default="runs", help="folder for run folders (default: runs)")
    t.add_argument(
        "--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint"
    )
    from uncertlr.app.train import DATASETS, TrainConfig

    defaults = TrainConfig()
    t.add_argument("--data", default=defaults.data, choices=sorted(DATASETS))
    t.add_argument(
        "--hidden", default=",".join(map(str, defaults.hidden)), help="hidden widths, e.g. 128,128"
    )
    for name in ("epochs", "batch_size", "num_samples", "seed", "checkpoint_every", "max_consecutive_skips"):
        t.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    for name in ("lr", "kl_weight", "prior_scale", "init_scale"):
        t.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name))
    t.add_argument(
        "--modulator",
        default=defaults.modulator,
        choices=["none", "g1", "p2"],
        help="LR modulator: g1 = global, by the batch's predictive entropy; p2 = per weight, by |grad| x posterior std",
    )
    r = sub.add_parser(
        "report", help="(re)build report.html, posterior-*.nc and summary.json of a run folder"
    )
    r.add_argument("run_dir", help="a run folder written by `uncertlr demo`")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``uncertlr`` command."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from dataclasses import replace

        import torch

        from uncertlr.app.demo import DemoConfig, run_demo

        torch.set_num_threads(max(1, torch.get_num_threads()))
        cfg = DemoConfig(seed=args.seed)
        if args.epochs is not None:
            cfg = replace(cfg, epochs=args.epochs)
        if args.num_samples is not None:
            cfg = replace(cfg, num_samples=args.num_samples)
        run_demo(args.out, cfg)
        return 0
    if args.command == "train":
        from dataclasses import fields

        from uncertlr.app.train import TrainConfig, run_training

        values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name != "hidden"}
        cfg = TrainConfig(hidden=tuple(int(h) for h in args.hidden.split(",") if h), **values)
        return run_training(args.out, cfg, resume=args.resume).exit_code
    if args.command == "report":
        return _report(args.run_dir)
    return 2  # pragma: no cover - argparse enforces a command


def _report(run_dir: str) -> int:
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True, soft_wrap=True)
    try:
        from uncertlr.diagnostics import report
    except ImportError as exc:
        console.print(f"[red]error[/]: {escape(str(exc))}")
        return 1
    try:
        path = report(run_dir, progress=True)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error[/]: {escape(str(exc))}")
        return 1
    console.print(f"report: [bold]{escape(str(path))}[/]")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
