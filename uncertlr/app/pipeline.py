"""The one pipeline: data → network → BNN → optimizer/schedule → modulator → fit → evaluate → save → report.

``uncertlr demo``, ``uncertlr train`` and the examples are configurations of it:

* a :class:`Task` holds the tensors (train, test, an optional out-of-distribution set);
* a :class:`Method` says how one model is trained (deterministic or Bayesian, epochs, LR,
  KL weight, an optional LR-modulator rule...);
* :func:`setup` builds the model, its loss, optimizer, cosine schedule and modulator
  (for loops that need the pieces, such as ``uncertlr train`` with checkpoints and DDP);
  :func:`train` runs :func:`uncertlr.torch.fit` on them; :func:`evaluate` scores the
  predictions with :mod:`uncertlr.runfolder`'s summaries;
* :func:`compare` trains and evaluates several methods on one task, in order, with one
  progress display; :func:`save` writes the run folder (``metrics.json``, ``history.json``,
  ``predictions.npz``, ``reliability.png``, ``uncertainty.png``) and the diagnostics report.

The network comes from a factory ``net()`` called right after ``torch.manual_seed(seed)``,
so every method of a comparison starts from the same weights and a run is reproducible.

Example:
    >>> import torch
    >>> from uncertlr.app.pipeline import Method, Task, compare
    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    >>> task = Task("toy", x, y, x[:16], y[:16])
    >>> methods = [Method("deterministic", bayesian=False, epochs=2), Method("bnn", epochs=2, num_samples=4)]
    >>> result = compare(task, methods, lambda: torch.nn.Linear(4, 3), seed=0, progress=False)
    >>> sorted(result.results), 0.0 <= result.results["bnn"]["ece"] <= 1.0
    (['bnn', 'deterministic'], True)
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from rich.markup import escape
from torch import Tensor, nn

from uncertlr import runfolder
from uncertlr._progress import progress_bar
from uncertlr.app import _methods
from uncertlr.app._methods import PointRegressor
from uncertlr.diagnostics.plots import ood_figure, reliability_figure, save_figure
from uncertlr.likelihoods import NormalPrediction
from uncertlr.torch import BNN, Modulator, batch_entropy, elbo_signal, fit, keep_freed_memory

__all__ = [
    "Comparison",
    "Method",
    "NetFactory",
    "PointRegressor",
    "Results",
    "Setup",
    "Task",
    "Trained",
    "compare",
    "evaluate",
    "merge_modulator_history",
    "predictor",
    "results_table",
    "save",
    "setup",
    "train",
]

#: ``net()`` returns a fresh network; called right after ``torch.manual_seed(seed)``.
NetFactory = Callable[[], nn.Module]
Predict = Callable[[Tensor], "Tensor | NormalPrediction"]


@dataclass(frozen=True)
class Task:
    """The tensors of one comparison; ``y`` integer labels (classification) or float targets ``[N, D]``.

    Regression targets may be standardised for training: ``y_loc``/``y_scale`` map them back
    (``y * y_scale + y_loc``), and every regression metric is reported in the original units.
    A classification task with a validation split (``x_val``/``y_val``, carved from the training
    data) gets a temperature fitted on it for every model (``temperature``, ``nll_ts``, ``ece_ts``).
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    x_ood: Tensor | None = None
    ood: str = ""
    y_loc: float = 0.0
    y_scale: float = 1.0
    x_val: Tensor | None = None
    y_val: Tensor | None = None

    def test_targets(self) -> np.ndarray:
        """The test labels, or the test targets in original units (a trailing output axis of 1 dropped)."""
        y = self.y_test.numpy()
        if not self.regression:
            return y
        return _squeeze(y.astype(np.float64) * self.y_scale + self.y_loc)

    @property
    def regression(self) -> bool:
        return bool(self.y_train.dtype.is_floating_point)

    @property
    def num_classes(self) -> int:
        """Classes seen in the train and test labels (classification tasks)."""
        return int(max(self.y_train.max(), self.y_test.max())) + 1


@dataclass(frozen=True)
class Method:
    """How one model of a comparison is trained (every field is recorded in ``metrics.json``).

    Attributes:
        name: the model's name in tables and files (``deterministic``, ``bnn``, ``bnn+g1``...).
        bayesian: wrap the network with :func:`uncertlr.torch.bayesian` (else train it as is,
            by cross-entropy, or by Gaussian likelihood with a learned noise for regression).
        epochs, lr, batch_size: Adam (or AdamW) with a cosine schedule over all steps.
        optimizer: ``"adam"`` or ``"adamw"`` (torch's fused kernel, ``fused=True``, where it runs: floating-point
            parameters on a CPU or CUDA device); ``weight_decay`` for AdamW.
        kl_weight, prior_scale, init_scale, num_particles: the BNN (``priors.Normal(prior_scale)``).
        num_samples: posterior samples per prediction.
        rule: an :mod:`uncertlr.modulation` rule; the step is then modulated by the batch's
            predictive entropy (global rules on a classifier) or predictive variance (global
            rules on a regressor), both from the ELBO's own outputs, or per weight by
            ``|grad| × posterior std`` (per-parameter rules).
        guide, rank: the BNN's posterior family (``bayesian(guide=, rank=)``).
        wrapper: ``""``, ``"ensemble"`` (``members`` independently initialised copies of the
            network, or of the BNN when ``bayesian``), ``"mc-dropout"`` (rate ``dropout``) or
            ``"laplace"`` (last-layer Laplace fitted on the trained deterministic network).
    """

    name: str
    bayesian: bool = True
    epochs: int = 100
    lr: float = 1e-2
    batch_size: int = 64
    optimizer: str = "adam"
    weight_decay: float = 0.0
    kl_weight: float = 0.1
    prior_scale: float = 1.0
    init_scale: float = 1e-3
    num_particles: int = 1
    num_samples: int = 32
    rule: Any = None
    guide: str = "meanfield"
    rank: int | None = None
    wrapper: str = ""
    members: int = 5
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw'; got {self.optimizer!r}")
        _methods.check(self)


class Setup(NamedTuple):
    """The pieces :func:`train` runs: the model, the loss ``fit`` steps, optimizer, schedule, modulator."""

    model: nn.Module
    loss: Callable[..., Any]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    modulator: Modulator | None
    before_step: Callable[[Any], None] | None


def setup(
    task: Task, method: Method, net: NetFactory, *, seed: int, device: torch.device | str = "cpu"
) -> Setup:
    """Seed torch, build the model (on ``device``), its loss, optimizer, cosine schedule and modulator.

    The process is about to train: glibc is asked to keep freed CPU memory for reuse
    (:func:`uncertlr.torch.keep_freed_memory`; a one-model CPU step 12-33% faster on the benchmark MLP).
    """
    keep_freed_memory()
    torch.manual_seed(seed)
    built = _methods.build(method, net, num_data=len(task.x_train), regression=task.regression, seed=seed)
    if built is not None:
        model: nn.Module = built
        loss = model.elbo if method.num_particles == 1 else _particles(model, method.num_particles)
    elif task.regression:
        model = PointRegressor(net())
        loss = model.loss
    else:
        model = net()
        loss = _cross_entropy(model)
    model.to(device)
    opt_cls = torch.optim.AdamW if method.optimizer == "adamw" else torch.optim.Adam
    kwargs: dict[str, Any] = {"weight_decay": method.weight_decay} if method.optimizer == "adamw" else {}
    params = list(model.parameters())
    opt = opt_cls(params, lr=method.lr, fused=_fused_adam(params), **kwargs)
    total = max(1, method.epochs * math.ceil(len(task.x_train) / method.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    mod, before_step = None, None
    if method.rule is not None:
        per_param = bool(getattr(method.rule, "per_parameter", False))
        sigma = model if isinstance(model, BNN) else getattr(model, "parameter_scale", None)
        mod = Modulator(method.rule, sigma=sigma if per_param else None).attach(opt)
        before_step = _observe_signal(mod, model, method.name, task.regression, needed=not per_param)
    return Setup(model, loss, opt, sched, mod, before_step)


def _fused_adam(params: list[Tensor]) -> bool:
    """Whether torch's fused Adam/AdamW kernel takes these parameters (floating point, on a CPU or CUDA device).

    The fused kernel updates each tensor in one vectorised pass instead of Adam's dozen elementwise ops: the
    same update up to float rounding, and a BNN step on the 784-400-400-10 MLP ~20% faster on one CPU thread
    (BENCHMARKS.md, "Fused Adam").
    """
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def _cross_entropy(net: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda x, y: F.cross_entropy(net(x), y)


def _particles(bnn: Any, k: int) -> Callable[[Tensor, Tensor], Any]:
    return lambda x, y: bnn.elbo(x, y, num_particles=k)


def _observe_signal(
    mod: Modulator, model: Any, name: str, regression: bool, *, needed: bool
) -> Callable[[Any], None] | None:
    """``before_step`` for ``fit``: the batch's predictive entropy (classifier) or predictive
    variance (regressor, Normal likelihood) from the ELBO's own outputs (:func:`elbo_signal`);
    for other models with ELBO-like terms (e.g. an ensemble of BNNs), the entropy of their outputs.
    A per-parameter rule (``needed=False``) only records the signal, where there is one."""
    if isinstance(model, BNN):
        signal = elbo_signal(model)
    elif regression:
        if not needed:
            return None
        raise ValueError(f"{name}: a global rule on a regressor needs a BNN (its predictive variance)")
    else:
        signal = lambda terms: batch_entropy(terms.outputs)  # noqa: E731
    return lambda terms: mod.observe(signal(terms))


def merge_modulator_history(history: list[dict[str, float]], mod: Modulator) -> None:
    """Put the modulator's ``signal`` and ``scale`` beside each applied step's loss and lr (in place)."""
    applied = (rec for rec in history if not rec.get("skipped"))
    for rec, m in zip(applied, mod.history):
        rec.update({k: m[k] for k in ("signal", "scale", "scale_min", "scale_max") if k in m})


class Trained(NamedTuple):
    """A trained model: ``predict(x)`` gives ``[S, N, C]`` probabilities or a ``NormalPrediction``."""

    method: Method
    model: nn.Module
    predict: Predict
    history: list[dict[str, float]]


def predictor(model: nn.Module, method: Method, chunk: int = 2000) -> Predict:
    """``predict(x)`` over row chunks of ``chunk`` inputs, without gradients, in eval mode."""

    def one(x: Tensor) -> Any:
        if isinstance(model, PointRegressor):
            return model.predict(x)
        if hasattr(model, "predict"):  # a BNN, ensemble, MC dropout, Laplace: [S, N, C] or NormalPrediction
            return model.predict(x, num_samples=method.num_samples)
        return torch.softmax(model(x), -1)[None]

    def predict(x: Tensor) -> Any:
        if not isinstance(model, BNN):  # a BNN's predict switches to eval mode by itself
            model.eval()
        with torch.no_grad():
            parts = [one(c) for c in x.split(chunk)]
        if isinstance(parts[0], NormalPrediction):
            return NormalPrediction(*(torch.cat(t, dim=1) for t in zip(*parts)))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    return predict


def train(
    task: Task,
    method: Method,
    net: NetFactory,
    *,
    seed: int,
    progress: Any = True,
    label: str = "",
    predict_chunk: int = 2000,
) -> Trained:
    """Train ``method`` on ``task`` from ``net()`` (seeded with ``seed``); see :func:`setup`.

    Args:
        progress: as :func:`uncertlr.torch.fit` (True, False, or a shared ``rich`` Progress).
        label: appended to the progress bar's description.
        predict_chunk: inputs per forward pass when predicting.
    """
    s = setup(task, method, net, seed=seed)
    history = fit(
        s.loss,
        s.optimizer,
        task.x_train,
        task.y_train,
        epochs=method.epochs,
        batch_size=method.batch_size,
        scheduler=s.scheduler,
        progress=progress,
        description=f"{method.name}{label}",
        generator=torch.Generator().manual_seed(seed),
        before_step=s.before_step,
    )
    if s.modulator is not None:
        merge_modulator_history(history, s.modulator)
    model = s.model
    if method.wrapper == "laplace":
        model = _methods.laplace(model, task.x_train, task.y_train)
    return Trained(method, model, predictor(model, method, predict_chunk), history)


def _squeeze(a: np.ndarray) -> np.ndarray:
    """Drop a trailing output axis of size 1 (``[..., N, 1]`` regression arrays are stored ``[..., N]``)."""
    return a[..., 0] if a.ndim >= 2 and a.shape[-1] == 1 else a


def evaluate(trained: Trained, task: Task) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Score ``trained`` on the task's test (and OOD) inputs.

    Returns:
        the summary (:func:`uncertlr.runfolder.classification_summary`, or
        :func:`~uncertlr.runfolder.regression_summary` in the targets' original units) and the
        arrays for ``predictions.npz``: ``{name}_test``/``{name}_ood`` probabilities ``[S, N, C]``,
        or ``{name}_mean``/``{name}_variance`` ``[S, N]`` (spaces in names become ``_``).
    """
    name = trained.method.name
    p_in = trained.predict(task.x_test)
    if task.regression:
        pred = NormalPrediction(*(t.cpu().double().numpy() for t in p_in)).rescale(
            loc=task.y_loc, scale=task.y_scale
        )
        pred = NormalPrediction(_squeeze(pred.mean), _squeeze(pred.variance))
        key = name.replace(" ", "_")
        arrays = {
            f"{key}_mean": pred.mean.astype(np.float32),
            f"{key}_variance": pred.variance.astype(np.float32),
        }
        return runfolder.regression_summary(pred, task.test_targets()), arrays
    # scored on the CPU, where the labels are (a model on a GPU predicts there)
    p_in = p_in.cpu()
    p_out = trained.predict(task.x_ood).cpu() if task.x_ood is not None else None
    arrays = {f"{name}_test": p_in.numpy().astype(np.float32)}
    if p_out is not None:
        arrays[f"{name}_ood"] = p_out.numpy().astype(np.float32)
    val = (
        {}
        if task.x_val is None or task.y_val is None
        else {"probs_val": trained.predict(task.x_val).cpu(), "labels_val": task.y_val.cpu()}
    )
    return runfolder.classification_summary(p_in, task.y_test.cpu(), p_out, **val), arrays


@dataclass
class Results:
    """Per model: its summary (``metrics.json``), prediction arrays (``predictions.npz``) and history.

    Any backend can fill one (the JAX examples do) and hand it to :func:`save`.
    """

    results: dict[str, dict[str, float]] = field(default_factory=dict)
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    histories: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    ood: str = ""


@dataclass
class Comparison(Results):
    """What :func:`compare` returns: :class:`Results`, the task and every trained model."""

    task: Task | None = None
    trained: dict[str, Trained] = field(default_factory=dict)

    @property
    def posteriors(self) -> dict[str, BNN]:
        """The Bayesian models, by name."""
        return {n: t.model for n, t in self.trained.items() if isinstance(t.model, BNN)}

    def inference(self, *, num_samples: int, seed: int) -> dict[str, Any]:
        """Every Bayesian model as ArviZ ``InferenceData`` on the test set (empty without ArviZ).

        Classification models only: a regression BNN's report needs no predictive entropy.
        """
        if self.task is None or self.task.regression or not self.posteriors:
            return {}
        try:
            from uncertlr.diagnostics import to_inference_data
        except ImportError:  # the report extra is optional; save() says so
            return {}
        x, y = self.task.x_test, self.task.y_test
        out = {}
        for name, bnn in self.posteriors.items():
            dev = bnn.posterior.loc.device  # a model trained on a GPU predicts there
            out[name] = to_inference_data(
                bnn, x=x.to(dev), y=y.to(dev), num_samples=num_samples, name=name, rng_seed=seed
            )
        return out


def compare(
    task: Task,
    methods: Sequence[Method],
    net: NetFactory,
    *,
    seed: int,
    progress: Any = True,
    after: Callable[[Trained, Any], dict[str, float]] | None = None,
) -> Comparison:
    """Train and evaluate ``methods`` on ``task`` in order; every one starts from ``net()`` seeded with ``seed``.

    Args:
        progress: True for one progress display shared by all methods, False for none, or a
            ``rich`` Progress.
        after: ``after(trained, progress) -> extra metrics`` run after each method is evaluated
            (e.g. a noise sweep); its numbers join the method's summary, its time ``seconds``.
    """
    out = Comparison(ood=task.ood, task=task)
    if task.regression:
        out.predictions["targets"] = task.test_targets().astype(np.float32)
    else:
        out.predictions["labels"] = task.test_targets()
    bar = progress_bar() if progress is True else (progress or None)
    with bar if progress is True else contextlib.nullcontext():
        for method in methods:
            t0 = time.perf_counter()
            trained = train(task, method, net, seed=seed, progress=bar or False)
            summary, arrays = evaluate(trained, task)
            if after is not None:
                summary.update(after(trained, bar))
            summary["seconds"] = time.perf_counter() - t0
            out.results[method.name] = summary
            out.predictions.update(arrays)
            out.histories[method.name] = trained.history
            out.trained[method.name] = trained
    return out


def results_table(
    results: Mapping[str, Mapping[str, Any]],
    *,
    title: str,
    rows: Sequence[tuple[str, str, str]] = runfolder.SUMMARY_ROWS,
) -> Any:
    """A rich table with one column per model and one row per ``(key, label, format)`` of ``rows``
    that any model has."""
    from rich.table import Table

    table = Table(title=escape(title))  # model names and titles are text, never rich markup
    table.add_column("metric")
    for name in results:
        table.add_column(escape(str(name)), justify="right")
    for key, label, fmt in rows:
        if any(key in r for r in results.values()):
            table.add_row(
                escape(label), *(format(r[key], fmt) if key in r else "-" for r in results.values())
            )
    return table


def save(
    results: Results,
    run: str | Path,
    *,
    doc: Mapping[str, Any],
    inference: Mapping[str, Any] | None = None,
    console: Any = None,
) -> Path:
    """Write the run-folder files, the figures and the diagnostics report into the folder ``run``.

    Create ``run`` with :func:`uncertlr.runfolder.new_run_dir` before training, so a folder
    that cannot be written fails before any work is done.

    Args:
        results: what to save (a :class:`Comparison`, or :class:`Results` from any backend).
        doc: what ``metrics.json`` records beside ``models`` (``task``, ``seed``, ``config``,
            ``ood``...).
        inference: ``{model: InferenceData or anything uncertlr.diagnostics.to_inference_data
            takes}`` for the report (``report.html``, ``posterior-<model>.nc``,
            ``summary.json``); ``None`` or empty writes no report. Without the ``report``
            extra (ArviZ) the report is skipped with a note on ``console``.

    Returns:
        The run folder.
    """
    run = Path(run)
    preds = results.predictions
    runfolder.save_run(
        run, {**doc, "models": results.results}, predictions=preds, histories=results.histories
    )
    if "labels" in preds:
        names = [n for n in results.results if f"{n}_test" in preds]
        save_figure(reliability_figure(preds, names), run / "reliability.png")
        fig = ood_figure(preds, names, title=f"in-distribution vs {results.ood}")
        if fig is not None:
            save_figure(fig, run / "uncertainty.png")
    if inference:
        try:
            from uncertlr.diagnostics import report
        except ImportError as exc:  # the report extra is optional
            if console is not None:
                console.print(f"[yellow]no diagnostics report[/]: {escape(str(exc))}")
            return run
        report(run, inference=inference, progress=console is not None)
    return run
