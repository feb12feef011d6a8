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
* ``--modulator g1`` scales every Adam step by the batch's predictive entropy (G1 ratio
  rule, κ = −0.5; under DDP the signal is all-reduced so every replica takes the same
  step); ``--modulator p2`` scales each weight's step by |gradient| × posterior std. The
  modulator's state is part of the checkpoint.
* A finished run leaves the files ``uncertlr report`` reads (``metrics.json``,
  ``history.json``, ``predictions.npz``) and the report itself.
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

from uncertlr import priors
from uncertlr.data import load_digits, shuffle_pixels
from uncertlr.evaluation import classification_summary
from uncertlr.modulation import GradSigmaRatio, Ratio
from uncertlr.runs import new_run_dir, read_json, save_classification_run, write_json, write_report
from uncertlr.torch import Modulator, batch_entropy, bayesian
from uncertlr.torch.checkpoint import load_checkpoint, save_checkpoint
from uncertlr.torch.distributed import ELBOLoss, init_from_env
from uncertlr.torch.training import LoopState, fit

__all__ = ["DATASETS", "MODULATORS", "TrainConfig", "TrainResult", "run_training"]

#: ``--modulator`` choices: name -> rule (the same rules as the demo's ``bnn+g1`` / ``bnn+p2``).
MODULATORS: dict[str, Any] = {"none": None, "g1": Ratio(kappa=-0.5), "p2": GradSigmaRatio(kappa=-0.5)}


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
    modulator: str = "none"

    def __post_init__(self) -> None:
        if self.modulator not in MODULATORS:
            raise ValueError(f"unknown modulator {self.modulator!r}; choose one of {sorted(MODULATORS)}")

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
    rule = MODULATORS[cfg.modulator]
    mod: Modulator | None = None
    before_step = None
    if rule is not None:
        # each process observes its own shard's entropy; the modulator all-reduces it (mean)
        mod = Modulator(rule, sigma=bnn if rule.per_parameter else None).attach(opt)
        before_step = lambda terms: mod.observe(batch_entropy(terms.outputs))  # noqa: E731
    steps_per_epoch = -(-len(data.x_train) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.epochs * steps_per_epoch))
    gen = torch.Generator().manual_seed(cfg.seed)
    start, history = 0, []
    if resume is not None:
        assert run_dir is not None
        ckpt = load_checkpoint(
            run_dir / "checkpoint.pt", model=bnn, optimizer=opt, scheduler=sched, modulator=mod, generator=gen
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
                modulator=mod,
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
            before_step=before_step,
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
        _write_results(run_dir, cfg, bnn, mod, data, history, seconds, info.world_size, console)
    return TrainResult(run_dir, step, 0)


def _write_results(
    run_dir: Path,
    cfg: TrainConfig,
    bnn: Any,
    mod: Modulator | None,
    data: Dataset,
    history: list[dict[str, float]],
    seconds: float,
    world_size: int,
    console: Any,
) -> None:
    name = "bnn" if mod is None else f"bnn+{cfg.modulator}"
    device = bnn.posterior.loc.device
    with torch.no_grad():
        p_in = bnn.predict(data.x_test.to(device), num_samples=cfg.num_samples).cpu()
        p_out = bnn.predict(data.x_ood.to(device), num_samples=cfg.num_samples).cpu()
    summary = {
        **classification_summary(p_in, data.y_test, p_out),
        "seconds": seconds,
        "skipped_steps": sum(h.get("skipped", 0.0) for h in history),
    }
    if mod is not None:  # the modulator's signal and factor beside each applied step's loss and lr
        applied = (rec for rec in history if not rec.get("skipped"))
        for rec, m in zip(applied, mod.history):
            rec.update({k: m[k] for k in ("signal", "scale", "scale_min", "scale_max") if k in m})
    save_classification_run(
        run_dir,
        {
            "task": cfg.data,
            "seed": cfg.seed,
            "device": str(device),
            "world_size": world_size,
            "config": asdict(cfg),
            "ood": data.ood,
            "models": {name: summary},
        },
        predictions={
            "labels": data.y_test.numpy(),
            f"{name}_test": p_in.numpy().astype(np.float32),
            f"{name}_ood": p_out.numpy().astype(np.float32),
        },
        histories={name: history},
        ood_label=data.ood,
    )
    write_report(
        run_dir,
        {name: bnn},
        data.x_test,
        data.y_test,
        num_samples=cfg.num_samples,
        seed=cfg.seed,
        console=console,
    )
    console.print(json.dumps({k: round(v, 4) for k, v in summary.items()}))
    console.print(f"run folder: [bold]{run_dir}[/]")
