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

import torch

from uncertlr import runfolder
from uncertlr._io import read_json, write_json
from uncertlr.app.demo import BNNConfig, digits_task, mlp_factory
from uncertlr.app.pipeline import (
    Comparison,
    Task,
    Trained,
    evaluate,
    merge_modulator_history,
    predictor,
    save,
    setup,
)
from uncertlr.modulation import GradSigmaRatio, Ratio
from uncertlr.torch import LoopState, fit, load_checkpoint, save_checkpoint
from uncertlr.torch.distributed import ELBOLoss, init_from_env

__all__ = ["DATASETS", "MODULATORS", "TrainConfig", "TrainResult", "run_training"]

#: ``--modulator`` choices: name -> rule (the same rules as the demo's ``bnn+g1`` / ``bnn+p2``).
MODULATORS: dict[str, Any] = {"none": None, "g1": Ratio(kappa=-0.5), "p2": GradSigmaRatio(kappa=-0.5)}

#: Datasets ``uncertlr train --data NAME`` knows: name -> task(seed).
DATASETS: dict[str, Callable[[int], Task]] = {"digits": digits_task}


@dataclass(frozen=True)
class TrainConfig(BNNConfig):
    """Settings of a training run (saved as ``config.json`` in the run folder)."""

    data: str = "digits"
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

    @property
    def model_name(self) -> str:
        return "bnn" if self.modulator == "none" else f"bnn+{self.modulator}"


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


def _config(
    config: TrainConfig | None, resume: str | Path | None, console: Any
) -> tuple[TrainConfig, Path | None]:
    if resume is None:
        return config or TrainConfig(), None
    run_dir = Path(resume)
    if not (run_dir / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"cannot resume: {run_dir / 'checkpoint.pt'} does not exist")
    cfg = TrainConfig.from_dict(read_json(run_dir / "config.json"))
    if config is not None and config != cfg:
        console.print("[yellow]--resume uses the run's saved configuration; other options are ignored[/]")
    return cfg, run_dir


def run_training(
    out: str | Path = "runs",
    config: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    console: Any = None,
) -> TrainResult:
    """Train (or resume) a Bayesian MLP; returns the run folder, the step reached and the exit code."""
    from rich.console import Console

    info = init_from_env()
    main_proc = info.rank == 0
    console = console or Console(quiet=not main_proc)
    cfg, run_dir = _config(config, resume, console)
    if cfg.data not in DATASETS:
        raise ValueError(f"unknown dataset {cfg.data!r}; known: {sorted(DATASETS)}")

    task = DATASETS[cfg.data](cfg.seed)
    method = cfg.method(cfg.model_name, MODULATORS[cfg.modulator])
    # the same seed on every process: identical weight noise everywhere
    net = mlp_factory(task.x_train.shape[1], cfg.hidden, task.num_classes)
    s = setup(task, method, net, seed=cfg.seed, device=info.device)
    bnn, opt, sched, mod = s.model, s.optimizer, s.scheduler, s.modulator
    loss_fn: Any = ELBOLoss(bnn)
    if info.world_size > 1:
        loss_fn = torch.nn.parallel.DistributedDataParallel(loss_fn, broadcast_buffers=False)
    total = cfg.epochs * -(-len(task.x_train) // cfg.batch_size)
    gen = torch.Generator().manual_seed(cfg.seed)
    start, history = 0, []
    if run_dir is not None:
        ckpt = load_checkpoint(
            run_dir / "checkpoint.pt", model=bnn, optimizer=opt, scheduler=sched, modulator=mod, generator=gen
        )
        start, history = ckpt.step, ckpt.history
        console.print(f"resuming {run_dir} at step {start} of {total}")
    elif main_proc:
        run_dir = runfolder.new_run_dir(out, "train")
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

    x, y = task.x_train.to(info.device), task.y_train.to(info.device)
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
            before_step=s.before_step,
            generator=gen,
            progress=main_proc,
            description=method.name,
            start_step=start,
            history=history,
            on_step=on_step,
            max_consecutive_skips=cfg.max_consecutive_skips,
            shard=(info.rank, info.world_size) if info.world_size > 1 else None,
        )
    step = len(history)
    if stopper.signum is not None and step < total:
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
        if mod is not None:
            merge_modulator_history(history, mod)
        _write_results(
            run_dir, cfg, task, Trained(method, bnn, predictor(bnn, method), history), seconds, info, console
        )
    return TrainResult(run_dir, step, 0)


def _write_results(
    run_dir: Path, cfg: TrainConfig, task: Task, trained: Trained, seconds: float, info: Any, console: Any
) -> None:
    device = trained.model.posterior.loc.device
    on_device = Task(
        task.name,
        task.x_train,
        task.y_train,
        task.x_test.to(device),
        task.y_test,
        task.x_ood.to(device),
        task.ood,
    )
    summary, arrays = evaluate(trained, on_device)
    summary.update(seconds=seconds, skipped_steps=sum(h.get("skipped", 0.0) for h in trained.history))
    name = trained.method.name
    result = Comparison(
        results={name: summary},
        predictions={"labels": task.y_test.numpy(), **arrays},
        histories={name: trained.history},
        ood=task.ood,
        task=task,
        trained={name: trained},
    )
    doc = {
        "task": cfg.data,
        "seed": cfg.seed,
        "device": str(device),
        "world_size": info.world_size,
        "config": asdict(cfg),
        "ood": task.ood,
    }
    inference = result.inference(num_samples=cfg.num_samples, seed=cfg.seed)
    save(result, run_dir, doc=doc, inference=inference, console=console)
    console.print(json.dumps({k: round(v, 4) for k, v in summary.items()}))
    console.print(f"run folder: [bold]{run_dir}[/]")
