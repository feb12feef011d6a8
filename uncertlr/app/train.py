"""``uncertlr train``: train a Bayesian network with checkpoints, clean interruption and resume.

* Every ``checkpoint_every`` steps the run folder's ``checkpoint.pt`` is replaced atomically
  (see :mod:`uncertlr.torch.checkpoint`).
* SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption) finishes the current step, writes a
  final checkpoint and exits with ``128 + signal number`` and a message saying how to resume.
* ``uncertlr train --resume RUN_DIR`` continues from the checkpoint with the saved
  configuration; the result is bit-identical to an uninterrupted run on the CPU, and the
  recorded ``seconds`` are the training time of all parts together. Settings that do not
  change the trajectory (:attr:`TrainConfig.RESUMABLE_OVERRIDES`) may be changed on resume.
* The run folder is locked (:func:`uncertlr.runfolder.lock_run_dir`) while a process trains
  in it: a second ``--resume`` of the same folder is refused at once.
* A damaged checkpoint or ``config.json``, or a run folder that cannot be created, raises
  :class:`~uncertlr.app.config.UserError` (a ``ValueError``) naming the file, before training.
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
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from rich.markup import escape

from uncertlr import runfolder
from uncertlr._io import read_json, write_json
from uncertlr.app.config import DATASET_NAMES, TrainConfig, UserError
from uncertlr.app.demo import digits_task, method_for, mlp_factory
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

#: Datasets ``uncertlr train --data NAME`` knows: name -> task(seed) (names: ``config.DATASET_NAMES``).
DATASETS: dict[str, Callable[[int], Task]] = {"digits": digits_task}
assert tuple(DATASETS) == DATASET_NAMES


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
    config: TrainConfig | None, resume: Path | None, overrides: Mapping[str, Any] | None, console: Any
) -> tuple[TrainConfig, Path | None]:
    if resume is None:
        return config or TrainConfig(**(overrides or {})), None
    run_dir = Path(resume)
    if not (run_dir / "checkpoint.pt").is_file():
        raise UserError(f"cannot resume: {run_dir / 'checkpoint.pt'} does not exist")
    path = run_dir / "config.json"
    try:
        cfg = TrainConfig.from_dict(read_json(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError, TypeError) as exc:
        raise UserError(f"cannot resume {run_dir}: {path} is damaged: {exc}") from exc
    asked = dict(overrides or {}) if config is None else asdict(config)
    allowed = {k: v for k, v in asked.items() if k in TrainConfig.RESUMABLE_OVERRIDES}
    ignored = sorted(k for k, v in asked.items() if k not in allowed and getattr(cfg, k) != v)
    if ignored:
        console.print(
            f"[yellow]--resume keeps the run's saved settings; ignoring {escape(', '.join(ignored))}[/]"
        )
    return replace(cfg, **allowed), run_dir


def _saved_seconds(extra: Mapping[str, Any]) -> float:
    s = extra.get("seconds", 0.0)
    return float(s) if isinstance(s, (int, float)) and not isinstance(s, bool) and s >= 0 else 0.0


def run_training(
    out: str | Path = "runs",
    config: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    console: Any = None,
) -> TrainResult:
    """Train (or resume) a Bayesian MLP; returns the run folder, the step reached and the exit code.

    Args:
        out: the folder that gets a new run folder (not used with ``resume``).
        config: the settings of a new run (default :class:`TrainConfig`).
        resume: a run folder to continue from its checkpoint, with its saved settings.
        overrides: settings asked for by name (the command line's options); on resume only
            :attr:`TrainConfig.RESUMABLE_OVERRIDES` are applied, the others are reported and ignored.

    Raises:
        UserError: the run folder cannot be created or is damaged (checkpoint, config.json).
        RunFolderBusy: another process trains in the run folder.
    """
    from rich.console import Console

    info = init_from_env()
    main_proc = info.rank == 0
    console = console or Console(quiet=not main_proc, highlight=False)
    cfg, run_dir = _config(config, Path(resume) if resume is not None else None, overrides, console)
    fresh = False
    try:
        with contextlib.ExitStack() as stack:
            if main_proc:
                if run_dir is None:
                    try:  # before any work: an unwritable --out fails now
                        run_dir, fresh = runfolder.new_run_dir(out, "train"), True
                    except OSError as exc:
                        raise UserError(f"cannot create a run folder under {out}: {exc}") from exc
                    stack.enter_context(runfolder.lock_run_dir(run_dir))
                    write_json(run_dir / "config.json", asdict(cfg))
                else:
                    stack.enter_context(runfolder.lock_run_dir(run_dir))
            return _train(cfg, run_dir, resume is not None, info, console)
    except BaseException:
        # stopped before the first checkpoint: a folder that cannot be resumed is not left behind
        if (
            fresh
            and run_dir is not None
            and {p.name for p in run_dir.iterdir()} <= {"config.json", runfolder.LOCK_FILE}
        ):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _train(cfg: TrainConfig, run_dir: Path | None, resuming: bool, info: Any, console: Any) -> TrainResult:
    main_proc = info.rank == 0
    task = DATASETS[cfg.data](cfg.seed)
    method = method_for(cfg, cfg.model_name, MODULATORS[cfg.modulator])
    # the same seed on every process: identical weight noise everywhere
    net = mlp_factory(task.x_train.shape[1], cfg.hidden, task.num_classes)
    s = setup(task, method, net, seed=cfg.seed, device=info.device)
    bnn, opt, sched, mod = s.model, s.optimizer, s.scheduler, s.modulator
    loss_fn: Any = ELBOLoss(bnn)
    if info.world_size > 1:
        loss_fn = torch.nn.parallel.DistributedDataParallel(loss_fn, broadcast_buffers=False)
    total = cfg.epochs * -(-len(task.x_train) // cfg.batch_size)
    gen = torch.Generator().manual_seed(cfg.seed)
    start, history, seconds_before = 0, [], 0.0
    if resuming:
        assert run_dir is not None
        try:
            ckpt = load_checkpoint(
                run_dir / "checkpoint.pt",
                model=bnn,
                optimizer=opt,
                scheduler=sched,
                modulator=mod,
                generator=gen,
            )
        except (ValueError, FileNotFoundError) as exc:
            raise UserError(f"cannot resume {run_dir}: {exc}") from exc
        start, history, seconds_before = ckpt.step, ckpt.history, _saved_seconds(ckpt.extra)
        if start > total:
            raise UserError(
                f"cannot resume {run_dir}: its checkpoint is at step {start}, past the run's {total} steps"
            )
        console.print(f"resuming {escape(str(run_dir))} at step {start} of {total}")
    t0 = time.perf_counter()

    def seconds() -> float:
        return seconds_before + (time.perf_counter() - t0)

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
                extra={"config": asdict(cfg), "seconds": seconds()},
            )

    stopper = _StopOnSignal()

    def on_step(state: LoopState) -> bool:
        stop = _any_rank(stopper.signum is not None, info.world_size)
        if stop or state.step % cfg.checkpoint_every == 0:
            checkpoint(state)
        return stop

    x, y = task.x_train.to(info.device), task.y_train.to(info.device)
    with stopper.installed():
        console.print(
            f"training started: {escape(cfg.data)}, {info.world_size} process(es), "
            f"run folder {escape(str(run_dir))}"
        )
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
            f"[bold yellow]{name}[/] at step {step}: checkpoint written to "
            f"{escape(str(run_dir / 'checkpoint.pt'))}; continue with: uncertlr train --resume {escape(str(run_dir))}"
        )
        return TrainResult(run_dir, step, 128 + stopper.signum)
    if main_proc:
        assert run_dir is not None
        checkpoint(LoopState(step, cfg.epochs - 1, gen.get_state(), history, None))  # type: ignore[arg-type]
        if mod is not None:
            merge_modulator_history(history, mod)
        trained = Trained(method, bnn, predictor(bnn, method), history)
        _write_results(run_dir, cfg, task, trained, seconds(), info, console)
    return TrainResult(run_dir, step, 0)


def _write_results(
    run_dir: Path, cfg: TrainConfig, task: Task, trained: Trained, seconds: float, info: Any, console: Any
) -> None:
    device = trained.model.posterior.loc.device
    on_device = replace(  # the inputs where the model is; labels and the rest of the task as they are
        task,
        x_test=task.x_test.to(device),
        x_ood=None if task.x_ood is None else task.x_ood.to(device),
        x_val=None if task.x_val is None else task.x_val.to(device),
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
    console.print(escape(json.dumps({k: round(v, 4) for k, v in summary.items()})))
    console.print(f"run folder: [bold]{escape(str(run_dir))}[/]")
