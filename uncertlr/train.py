"""``uncertlr train``: train a Bayesian network with checkpoints, clean interruption and resume.

* Every ``checkpoint_every`` steps the run folder's ``checkpoint.pt`` is replaced atomically
  (see :mod:`uncertlr.torch.checkpoint`).
* SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption) finishes the current step, writes a
  final checkpoint and exits with ``128 + signal number`` and a message saying how to resume.
* ``uncertlr train --resume RUN_DIR`` continues from the checkpoint with the saved
  configuration; the result is bit-identical to an uninterrupted run on the CPU.
* Under ``torchrun --nproc_per_node=N`` the same command trains data-parallel
  (``DistributedDataParallel``; gloo on CPU, NCCL on GPU): ``--batch-size`` is the global
  batch, every process draws the same weight noise, and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from uncertlr import metrics, priors
from uncertlr.data import load_digits, shuffle_pixels
from uncertlr.evaluation import classification_summary
from uncertlr.plotting import reliability_diagram, save_figure, uncertainty_histograms
from uncertlr.runs import METRICS_SCHEMA, atomic_write, environment, new_run_dir, read_json, write_json
from uncertlr.torch import bayesian
from uncertlr.torch.checkpoint import load_checkpoint, save_checkpoint
from uncertlr.torch.distributed import ELBOLoss, init_from_env
from uncertlr.torch.training import LoopState, fit

__all__ = ["DATASETS", "TrainConfig", "TrainResult", "run_training"]


class Dataset(NamedTuple):
    """Tensors for a classification run: train, test and an out-of-distribution set."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_ood: torch.Tensor
    num_classes: int
    ood: str


def _digits(seed: int) -> Dataset:
    s = load_digits(seed=seed)
    t = torch.from_numpy
    return Dataset(
        t(s.x_train),
        t(s.y_train),
        t(s.x_test),
        t(s.y_test),
        t(shuffle_pixels(s.x_test, seed=seed + 1)),
        s.num_classes,
        "test images with shuffled pixels",
    )


#: Datasets ``uncertlr train --data NAME`` knows: name -> loader(seed) -> Dataset.
DATASETS: dict[str, Callable[[int], Dataset]] = {"digits": _digits}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run (saved as ``config.json`` in the run folder)."""

    data: str = "digits"
    hidden: tuple[int, ...] = (128, 128)
    epochs: int = 150
    batch_size: int = 64
    lr: float = 1e-2
    kl_weight: float = 0.1
    prior_scale: float = 1.0
    init_scale: float = 1e-3
    num_samples: int = 64
    seed: int = 0
    checkpoint_every: int = 500
    max_consecutive_skips: int = 5

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training settings in config: {sorted(unknown)}")
        d = dict(d)
        if "hidden" in d:
            d["hidden"] = tuple(d["hidden"])
        return cls(**d)


class TrainResult(NamedTuple):
    """Where the run lives, the step it reached, and the process exit code (0, or 128 + signal)."""

    run_dir: Path | None
    step: int
    exit_code: int


class _StopOnSignal:
    """Turn SIGINT/SIGTERM into a flag checked between steps (restores the old handlers on exit)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[_StopOnSignal]:
        old = {}
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum


def _any_rank(flag: bool, world_size: int) -> bool:
    if world_size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def run_training(
    out: str | Path = "runs",
    config: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    console: Any = None,
) -> TrainResult:
    """Train (or resume) a Bayesian MLP; returns the run folder, the step reached and the exit code."""
    from rich.console import Console

    from uncertlr_models import MLP

    info = init_from_env()
    main_proc = info.rank == 0
    console = console or Console(quiet=not main_proc)
    run_dir: Path | None
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "checkpoint.pt").is_file():
            raise FileNotFoundError(f"cannot resume: {run_dir / 'checkpoint.pt'} does not exist")
        cfg = TrainConfig.from_dict(read_json(run_dir / "config.json"))
        if config is not None and config != cfg:
            console.print("[yellow]--resume uses the run's saved configuration; other options are ignored[/]")
    else:
        cfg = config or TrainConfig()
        run_dir = None
    if cfg.data not in DATASETS:
        raise ValueError(f"unknown dataset {cfg.data!r}; known: {sorted(DATASETS)}")

    data = DATASETS[cfg.data](cfg.seed)
    torch.manual_seed(cfg.seed)  # the same seed on every process: identical weight noise everywhere
    bnn = bayesian(
        MLP(data.x_train.shape[1], cfg.hidden, data.num_classes),
        num_data=len(data.x_train),
        prior=priors.Normal(cfg.prior_scale),
        kl_weight=cfg.kl_weight,
        init_scale=cfg.init_scale,
    )
    bnn.to(info.device)
    loss_fn: Any = ELBOLoss(bnn)
    if info.world_size > 1:
        loss_fn = torch.nn.parallel.DistributedDataParallel(loss_fn, broadcast_buffers=False)
    opt = torch.optim.Adam(bnn.parameters(), lr=cfg.lr)
    steps_per_epoch = -(-len(data.x_train) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.epochs * steps_per_epoch))
    gen = torch.Generator().manual_seed(cfg.seed)
    start, history = 0, []
    if resume is not None:
        assert run_dir is not None
        ckpt = load_checkpoint(
            run_dir / "checkpoint.pt", model=bnn, optimizer=opt, scheduler=sched, generator=gen
        )
        start, history = ckpt.step, ckpt.history
        console.print(f"resuming {run_dir} at step {start} of {cfg.epochs * steps_per_epoch}")
    elif main_proc:
        run_dir = new_run_dir(out, "train")
        write_json(run_dir / "config.json", asdict(cfg))

    def checkpoint(state: LoopState) -> None:
        if main_proc:
            assert run_dir is not None
            save_checkpoint(
                run_dir / "checkpoint.pt",
                model=bnn,
                optimizer=opt,
                scheduler=sched,
                generator=state.resume_generator_state,
                step=state.step,
                history=state.history,
                extra={"config": asdict(cfg)},
            )

    stopper = _StopOnSignal()

    def on_step(state: LoopState) -> bool:
        stop = _any_rank(stopper.signum is not None, info.world_size)
        if stop or state.step % cfg.checkpoint_every == 0:
            checkpoint(state)
        return stop

    x, y = data.x_train.to(info.device), data.y_train.to(info.device)
    t0 = time.perf_counter()
    with stopper.installed():
        console.print(f"training started: {cfg.data}, {info.world_size} process(es), run folder {run_dir}")
        history = fit(
            loss_fn,
            opt,
            x,
            y,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            scheduler=sched,
            generator=gen,
            progress=main_proc,
            description="bnn",
            start_step=start,
            history=history,
            on_step=on_step,
            max_consecutive_skips=cfg.max_consecutive_skips,
            shard=(info.rank, info.world_size) if info.world_size > 1 else None,
        )
    step = len(history)
    if stopper.signum is not None and step < cfg.epochs * steps_per_epoch:
        name = signal.Signals(stopper.signum).name
        console.print(
            f"[bold yellow]{name}[/] at step {step}: checkpoint written to {run_dir}/checkpoint.pt; "
            f"continue with: uncertlr train --resume {run_dir}"
        )
        return TrainResult(run_dir, step, 128 + stopper.signum)
    seconds = time.perf_counter() - t0
    if main_proc:
        assert run_dir is not None
        checkpoint(LoopState(step, cfg.epochs - 1, gen.get_state(), history, None))  # type: ignore[arg-type]
        _write_results(run_dir, cfg, bnn, data, history, seconds, info.world_size, console)
    return TrainResult(run_dir, step, 0)


def _write_results(
    run_dir: Path,
    cfg: TrainConfig,
    bnn: Any,
    data: Dataset,
    history: list[dict[str, float]],
    seconds: float,
    world_size: int,
    console: Any,
) -> None:
    with torch.no_grad():
        p_in = bnn.predict(data.x_test.to(bnn.posterior.loc.device), num_samples=cfg.num_samples).cpu()
        p_out = bnn.predict(data.x_ood.to(bnn.posterior.loc.device), num_samples=cfg.num_samples).cpu()
    summary = {
        **classification_summary(p_in, data.y_test, p_out),
        "seconds": seconds,
        "skipped_steps": sum(h.get("skipped", 0.0) for h in history),
    }
    env = environment()
    write_json(
        run_dir / "metrics.json",
        {
            "schema": METRICS_SCHEMA,
            "task": cfg.data,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "seed": cfg.seed,
            "device": str(bnn.posterior.loc.device),
            "world_size": world_size,
            "versions": env["versions"],
            "python": env["python"],
            "config": asdict(cfg),
            "ood": data.ood,
            "models": {"bnn": summary},
        },
    )
    write_json(run_dir / "history.json", {"bnn": history})
    preds = {
        "labels": data.y_test.numpy(),
        "bnn_test": p_in.numpy().astype(np.float32),
        "bnn_ood": p_out.numpy().astype(np.float32),
    }
    atomic_write(run_dir / "predictions.npz", lambda f: np.savez_compressed(f, **preds))
    save_figure(reliability_diagram({"bnn": (p_in, data.y_test)}), run_dir / "reliability.png")
    d_in, d_out = metrics.uncertainty_decomposition(p_in), metrics.uncertainty_decomposition(p_out)
    save_figure(
        uncertainty_histograms(
            {
                "bnn: predictive entropy": (d_in.total, d_out.total),
                "bnn: mutual information": (d_in.epistemic, d_out.epistemic),
            }
        ),
        run_dir / "uncertainty.png",
    )
    console.print(json.dumps({k: round(v, 4) for k, v in summary.items()}))
    console.print(f"run folder: [bold]{run_dir}[/]")
