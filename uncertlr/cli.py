"""Command line: ``uncertlr demo``.

Example:
    $ uncertlr demo --out runs          # digits: deterministic MLP vs Bayesian MLP
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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``uncertlr`` command."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from dataclasses import replace

        import torch

        from uncertlr.demo import DemoConfig, run_demo

        torch.set_num_threads(max(1, torch.get_num_threads()))
        cfg = DemoConfig(seed=args.seed)
        if args.epochs is not None:
            cfg = replace(cfg, epochs=args.epochs)
        if args.num_samples is not None:
            cfg = replace(cfg, num_samples=args.num_samples)
        run_demo(args.out, cfg)
        return 0
    return 2  # pragma: no cover - argparse enforces a command


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
