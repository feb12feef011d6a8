"""Command line: ``uncertlr demo``, ``uncertlr train`` and ``uncertlr report``.

A user's mistake never shows a Python traceback: every number and path is checked by the
parser before any work starts, and a problem found later (a damaged checkpoint, a run
folder in use, a folder that cannot be written) ends the command with one line on stderr
and exit status 2. Ctrl-C ends it with one line and status 130 (``uncertlr train`` first
writes a checkpoint, see :mod:`uncertlr.app.train`). Everything printed is plain text to
rich: brackets in paths and model names are shown, never read as markup. Building the
parser imports neither torch nor JAX, so ``uncertlr --version`` and ``--help`` are quick.

Example:
    $ uncertlr demo --out runs          # digits: deterministic MLP vs Bayesian MLP
    $ uncertlr train --epochs 50        # checkpoints; Ctrl-C, then: uncertlr train --resume RUN_DIR
    $ uncertlr report runs/digits-...   # (re)build report.html, posterior-*.nc, summary.json
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

import uncertlr
from uncertlr.app.config import (
    DATASET_NAMES,
    MAX_SEED,
    MODULATOR_NAMES,
    DemoConfig,
    TrainConfig,
    UserError,
)

__all__ = ["UserError", "main"]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (and which every subcommand parser inherits)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------- argument types


def _int(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            span = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be an integer {span}; got {text!r}")
        return value

    parse.__name__ = "integer"
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0; got {text!r}")
    return value


def _hidden(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise argparse.ArgumentTypeError(
            f"must be comma-separated layer widths >= 1, e.g. 128,128 (empty for none); got {text!r}"
        )
    return tuple(int(p) for p in parts)


def _nearest_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path(".")


def _out_dir(text: str) -> Path:
    """A folder that exists or can be created, and that this process can write into."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder")
    base = _nearest_existing(path.absolute())
    if not base.is_dir():
        raise argparse.ArgumentTypeError(f"cannot create {text!r}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write into {base} (permission denied)")
    return path


def _run_dir(*required: str) -> Callable[[str], Path]:
    def parse(text: str) -> Path:
        path = Path(text).expanduser()
        if not path.exists():
            raise argparse.ArgumentTypeError(f"{text!r} does not exist")
        if not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} is not a folder")
        missing = [f for f in required if not (path / f).is_file()]
        if missing:
            raise argparse.ArgumentTypeError(f"{text!r} has no {' or '.join(missing)}: is it a run folder?")
        return path

    parse.__name__ = "run folder"
    return parse


#: Options of ``uncertlr train`` named after TrainConfig fields, with their argument types.
_TRAIN_TYPES: dict[str, Callable[[str], Any]] = {
    "seed": _int(0, MAX_SEED),
    "epochs": _int(1),
    "batch_size": _int(1),
    "num_samples": _int(1),
    "checkpoint_every": _int(1),
    "max_consecutive_skips": _int(1),
    "lr": _positive_float,
    "kl_weight": _positive_float,
    "prior_scale": _positive_float,
    "init_scale": _positive_float,
}


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="uncertlr", description="Bayesian, uncertainty-aware training for existing models.")
    p.add_argument("--version", action="version", version=f"uncertlr {uncertlr.__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{demo,train,report}")
    d = sub.add_parser("demo", help="train a Bayesian MLP beside a deterministic one on sklearn digits")
    d.add_argument(
        "--out", type=_out_dir, default=Path("runs"), help="folder for run folders (default: runs)"
    )
    d.add_argument("--seed", type=_int(0, MAX_SEED), default=DemoConfig.seed)
    d.add_argument("--epochs", type=_int(1), default=None, help=f"BNN epochs (default {DemoConfig.epochs})")
    d.add_argument(
        "--num-samples",
        type=_int(1),
        default=None,
        help=f"posterior samples for prediction (default {DemoConfig.num_samples})",
    )
    t = sub.add_parser(
        "train",
        help="train a Bayesian MLP with checkpoints; Ctrl-C/SIGTERM checkpoint and exit, --resume continues",
        description="Train a Bayesian MLP. Data-parallel: torchrun --standalone --nproc_per_node=N "
        "$(which uncertlr) train ... (gloo on CPU, NCCL on GPU; --batch-size is the global batch).",
    )
    t.add_argument(
        "--out", type=_out_dir, default=Path("runs"), help="folder for run folders (default: runs)"
    )
    t.add_argument(
        "--resume",
        type=_run_dir("checkpoint.pt", "config.json"),
        default=None,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its checkpoint, with its saved settings "
        f"(only {', '.join('--' + n.replace('_', '-') for n in TrainConfig.RESUMABLE_OVERRIDES)} may change)",
    )
    t.add_argument("--data", default=None, choices=DATASET_NAMES, help=f"default {TrainConfig.data}")
    t.add_argument(
        "--hidden",
        type=_hidden,
        default=None,
        help=f"hidden widths (default {','.join(map(str, TrainConfig.hidden))})",
    )
    for name, parse in _TRAIN_TYPES.items():
        t.add_argument(
            "--" + name.replace("_", "-"),
            type=parse,
            default=None,
            help=f"default {getattr(TrainConfig, name)}",
        )
    t.add_argument(
        "--modulator",
        default=None,
        choices=MODULATOR_NAMES,
        help="LR modulator: g1 = global, by the batch's predictive entropy; p2 = per weight, by |grad| x "
        f"posterior std (default {TrainConfig.modulator})",
    )
    r = sub.add_parser(
        "report", help="(re)build report.html, posterior-*.nc and summary.json of a run folder"
    )
    r.add_argument("run_dir", type=_run_dir("metrics.json"), help="a run folder written by uncertlr")
    return p


# --------------------------------------------------------------------------- main


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True, highlight=False)


def _fail(command: str, message: str, code: int) -> int:
    text = " ".join(str(message).split())  # one line, whatever the exception's text held
    print(f"uncertlr {command}: error: {text}", file=sys.stderr, flush=True)
    return code


def _interrupted(exc: BaseException) -> bool:
    """Whether Ctrl-C caused ``exc``: Python wraps a KeyboardInterrupt raised while a class body is set up.

    Ctrl-C during a lazy import (e.g. ``torch._dynamo``, imported by the first optimizer) can land in
    ``__set_name__``, which re-raises it as ``RuntimeError(...) from KeyboardInterrupt``.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``uncertlr`` command; returns the exit status.

    0 on success; 2 for a mistake in the command (one line on stderr, no traceback); 130 after
    Ctrl-C (``train``: 128 + the signal, after writing a checkpoint); 1 when training fails
    (its diagnosis in one line).
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version and parse errors (already printed, one line)
        return exc.code if isinstance(exc.code, int) else 2
    from uncertlr.runfolder import RunFolderBusy

    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "train":
            return _train(args)
        return _report(args.run_dir)
    except KeyboardInterrupt:
        return _fail(args.command, "interrupted (Ctrl-C)", 130)
    except (UserError, RunFolderBusy) as exc:
        return _fail(args.command, str(exc), 2)
    except FloatingPointError as exc:  # the training guard's diagnosis (training diverged)
        return _fail(args.command, f"training failed: {exc}", 1)
    except Exception as exc:
        if _interrupted(exc):
            return _fail(args.command, "interrupted (Ctrl-C)", 130)
        raise


def _demo(args: argparse.Namespace) -> int:
    from uncertlr.app.demo import run_demo

    given = {"seed": args.seed, "epochs": args.epochs, "num_samples": args.num_samples}
    cfg = DemoConfig(**{k: v for k, v in given.items() if v is not None})
    run_demo(args.out, cfg)
    return 0


def _train(args: argparse.Namespace) -> int:
    from uncertlr.app.train import run_training

    names = [f.name for f in fields(TrainConfig)]
    given = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if args.resume is not None:
        return run_training(args.out, overrides=given, resume=args.resume).exit_code
    return run_training(args.out, TrainConfig(**given)).exit_code


def _report(run_dir: Path) -> int:
    from rich.markup import escape

    from uncertlr.runfolder import lock_run_dir

    console = _console()
    try:
        from uncertlr.diagnostics import report
    except ImportError as exc:  # the report extra is optional
        raise UserError(str(exc)) from exc
    with lock_run_dir(run_dir):
        try:
            path = report(run_dir, progress=True)
        except (FileNotFoundError, ValueError) as exc:  # metrics.json missing or unreadable
            raise UserError(str(exc)) from exc
    console.print(f"report: [bold]{escape(str(path))}[/]")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
