"""The run-folder contract: what a demo, training run or example leaves behind, and how to read it back.

A run folder (``new_run_dir(root, name)``, never an existing one) holds:

* ``metrics.json`` — schema ``uncertlr.metrics/1``::

      {"schema", "task", "created", "seed", "device", "versions": {package: version}, "python",
       "config": {...}, "ood": "...", "models": {name: {"accuracy", "nll", "brier", "ece",
       "adaptive_ece", "entropy_in", "aleatoric_in", "mi_in", "entropy_ood", "aleatoric_ood",
       "mi_ood", "auroc_mi", "auroc_entropy", "seconds", ...}}}

  Regression runs use the same envelope with ``{"rmse", "nll", "coverage_90", "width_90",
  "noise_std", "epistemic_std", ...}`` per model (:func:`regression_summary`);
* ``predictions.npz`` — ``labels`` (or ``targets``), and per model ``{name}_test`` (and
  ``{name}_ood``): ``[S, N, C]`` probabilities (regression: ``{name}_mean``, ``{name}_var``);
* ``history.json`` — ``{name: [{step, loss, lr, signal?, scale?, ...}, ...]}``;
* figures and the diagnostics report (written by the layers above: :mod:`uncertlr.diagnostics`);
* ``.uncertlr-lock`` — held (:func:`lock_run_dir`) by the process training in or writing the
  folder, so a second ``uncertlr train --resume`` or ``uncertlr report`` of the same folder
  is refused instead of racing it; the operating system releases it when the process ends,
  however it ends.

Every file is written atomically (:func:`uncertlr._io.atomic_write`), so a crash or a second
run cannot destroy earlier results. The per-model summaries are computed here
(:func:`classification_summary`, :func:`regression_summary`) and displayed with
:data:`SUMMARY_ROWS` / :data:`REGRESSION_ROWS`, so every table and report shows the same rows.

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> from uncertlr import runfolder
    >>> run = runfolder.new_run_dir(tempfile.mkdtemp(), "demo")
    >>> probs = np.array([[[0.9, 0.1], [0.2, 0.8]]])
    >>> summary = runfolder.classification_summary(probs, np.array([0, 1]))
    >>> _ = runfolder.save_run(run, {"task": "toy", "models": {"net": summary}},
    ...                        predictions={"labels": np.array([0, 1]), "net_test": probs}, histories={})
    >>> runfolder.read_metrics(run)["models"]["net"]["accuracy"]
    1.0
"""

from __future__ import annotations

import datetime as _dt
import os
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from uncertlr import metrics
from uncertlr._arrays import host
from uncertlr._io import atomic_write, environment, read_json, write_json
from uncertlr._lock import LOCK_FILE, RunFolderBusy, lock_run_dir
from uncertlr.calibration import NEVER_SHARPEN, fit_temperature

__all__ = [
    "CALIBRATED_KEYS",
    "CLASSIFICATION_KEYS",
    "HISTORY_FILE",
    "LOCK_FILE",
    "METRICS_FILE",
    "METRICS_SCHEMA",
    "PREDICTIONS_FILE",
    "REGRESSION_ROWS",
    "SUMMARY_ROWS",
    "RunFolderBusy",
    "classification_summary",
    "interval_coverage",
    "lock_run_dir",
    "new_run_dir",
    "read_history",
    "read_metrics",
    "read_predictions",
    "read_shift",
    "regression_summary",
    "save_run",
    "write_history",
    "write_metrics",
    "write_predictions",
    "write_shift",
]

METRICS_SCHEMA = "uncertlr.metrics/1"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.npz"
HISTORY_FILE = "history.json"
SHIFT_FILE = "shift.json"
SHIFT_SCHEMA = "uncertlr.shift/1"

#: Keys of :func:`classification_summary` (the per-model entries of ``metrics.json``).
CLASSIFICATION_KEYS = (
    "accuracy",
    "nll",
    "brier",
    "ece",
    "adaptive_ece",
    "entropy_in",
    "aleatoric_in",
    "mi_in",
    "entropy_ood",
    "aleatoric_ood",
    "mi_ood",
    "auroc_mi",
    "auroc_entropy",
    "aurc",
    "fpr95_entropy",
)

#: Keys :func:`classification_summary` adds when given validation predictions (temperature scaling).
CALIBRATED_KEYS = ("temperature", "nll_ts", "ece_ts")

#: How tables show a classification run's ``metrics.json`` entries: (key, label, format), in order.
SUMMARY_ROWS = (
    ("accuracy", "accuracy", ".3f"),
    ("nll", "NLL", ".3f"),
    ("brier", "Brier", ".3f"),
    ("ece", "ECE (15 bins)", ".3f"),
    ("temperature", "temperature (fitted on validation)", ".2f"),
    ("nll_ts", "NLL, temperature-scaled", ".3f"),
    ("ece_ts", "ECE, temperature-scaled", ".3f"),
    ("aurc", "AURC (1 - max p)", ".4f"),
    ("entropy_in", "entropy, test", ".3f"),
    ("mi_in", "mutual information, test", ".3f"),
    ("entropy_ood", "entropy, OOD", ".3f"),
    ("mi_ood", "mutual information, OOD", ".3f"),
    ("auroc_mi", "OOD AUROC of MI", ".3f"),
    ("auroc_entropy", "OOD AUROC of entropy", ".3f"),
    ("fpr95_entropy", "FPR at 95% TPR, entropy", ".3f"),
    ("seconds", "seconds", ".1f"),
)

#: How tables show a regression run's entries (:func:`regression_summary` plus extras), in order.
REGRESSION_ROWS = (
    ("rmse", "RMSE", ".3f"),
    ("nll", "NLL per test point", ".3f"),
    ("coverage_90", "90% interval coverage", ".3f"),
    ("width_90", "90% interval width", ".3f"),
    ("noise_std", "noise std (aleatoric)", ".3f"),
    ("epistemic_std", "epistemic std, test", ".3f"),
    ("epistemic_std_data", "epistemic std, on the data", ".3f"),
    ("epistemic_std_gap", "epistemic std, in the gap", ".3f"),
    ("gap_ratio", "gap / data epistemic std", ".2f"),
    ("seconds", "seconds", ".1f"),
)


# --------------------------------------------------------------------------- folders


def new_run_dir(root: str | os.PathLike[str], name: str) -> Path:
    """Create and return a fresh folder ``root/name-YYYYmmdd-HHMMSS[-k]`` (never an existing one)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for k in range(1000):
        path = root / (f"{name}-{stamp}" + (f"-{k}" if k else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run folder under {root}")


# --------------------------------------------------------------------------- per-model summaries


def classification_summary(
    probs: Any,
    labels: Any,
    probs_ood: Any | None = None,
    *,
    num_bins: int = 15,
    probs_val: Any | None = None,
    labels_val: Any | None = None,
) -> dict[str, float]:
    """Accuracy, NLL, Brier, ECE, adaptive ECE, mean uncertainties and OOD AUROCs as Python floats.

    Works on the ``[S, N, C]`` probabilities of either backend and on ``[N, C]`` point predictions.

    Args:
        probs: in-distribution test predictions ``[S, N, C]`` (or ``[N, C]``).
        labels: ``[N]`` integer labels.
        probs_ood: predictions on out-of-distribution inputs ``[S, M, C]``; when given, adds
            ``entropy_ood``, ``mi_ood`` and the AUROC of telling the two sets apart by mutual
            information (``auroc_mi``; 0.5 for point predictions, which have none) and by
            predictive entropy (``auroc_entropy``), and the false-positive rate at 95% true-positive
            rate of the latter (``fpr95_entropy``).
        probs_val, labels_val: validation predictions and labels; when given, a temperature is
            fitted on them (:func:`uncertlr.calibration.fit_temperature`) and applied to ``probs``:
            ``temperature``, ``nll_ts``, ``ece_ts``. The temperature of a model average (``probs_val``
            with more than one sample: a BNN, an ensemble, MC dropout) is searched in
            :data:`uncertlr.calibration.NEVER_SHARPEN`, ``T >= 1``: tempering each sample and averaging,
            ``T < 1`` makes every sample near one-hot, which a validation set with few errors rewards and
            data under shift punishes (``benchmarks/shift.py``: corrupted-input NLL 21.5 instead of 2.8).
            A point prediction's temperature may sharpen or soften.

    ``aurc`` is the area under the risk-coverage curve of rejecting by ``1 - max p̄``.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> p_in = rng.dirichlet(np.ones(3) * 0.2, size=(8, 40)); y = p_in.mean(0).argmax(1)
        >>> p_out = rng.dirichlet(np.ones(3) * 5, size=(8, 40))
        >>> s = classification_summary(p_in, y, p_out)
        >>> s["accuracy"], s["auroc_entropy"] > 0.9
        (1.0, True)
    """
    d_in = metrics.uncertainty_decomposition(probs)
    out: dict[str, float] = {
        "accuracy": float(metrics.accuracy(probs, labels)),
        "nll": float(metrics.nll(probs, labels)),
        "brier": float(metrics.brier(probs, labels)),
        "ece": float(metrics.ece(probs, labels, num_bins=num_bins)),
        "adaptive_ece": float(metrics.adaptive_ece(probs, labels, num_bins=num_bins)),
        "entropy_in": float(d_in.total.mean()),
        "aleatoric_in": float(d_in.aleatoric.mean()),
        "mi_in": float(d_in.epistemic.mean()),
    }
    pbar = _host(metrics.mean_probs(probs))
    out["aurc"] = float(metrics.aurc(1 - pbar.max(-1), pbar.argmax(-1) == _host(labels)))
    if probs_val is not None:
        pv = _host(probs_val)
        model_average = pv.ndim == 3 and pv.shape[0] > 1
        t = fit_temperature(pv, labels_val, **({"bounds": NEVER_SHARPEN} if model_average else {}))
        tempered = t(probs)
        out.update(
            temperature=t.value,
            nll_ts=float(metrics.nll(tempered, labels)),
            ece_ts=float(metrics.ece(tempered, labels, num_bins=num_bins)),
        )
    if probs_ood is not None:
        d_out = metrics.uncertainty_decomposition(probs_ood)
        out.update(
            entropy_ood=float(d_out.total.mean()),
            aleatoric_ood=float(d_out.aleatoric.mean()),
            mi_ood=float(d_out.epistemic.mean()),
            auroc_mi=float(metrics.ood_auroc(d_in.epistemic, d_out.epistemic)),
            auroc_entropy=float(metrics.ood_auroc(d_in.total, d_out.total)),
            fpr95_entropy=float(metrics.fpr_at_tpr(d_in.total, d_out.total)),
        )
    return out


def _host(a: Any) -> np.ndarray:
    return host(a, np.float64)


def interval_coverage(mean: Any, variance: Any, targets: Any, level: float) -> tuple[float, float]:
    """Coverage and mean width of the central ``level`` predictive interval of a regressor.

    The interval is ``mean ± z·std`` of the predictive distribution's moments (posterior
    mean of the means; total variance = aleatoric + epistemic), ``z`` the standard normal
    quantile — exact for a deterministic Gaussian model, a moment-matched approximation of
    a BNN's mixture of Gaussians.

    Args:
        mean, variance: per-sample predictive means and noise variances ``[S, N, ...]``.
        targets: ``[N, ...]``.
        level: in (0, 1), e.g. 0.9.

    Example:
        >>> import numpy as np
        >>> cov, width = interval_coverage(np.zeros((1, 4)), np.ones((1, 4)), np.arange(4.0), 0.9)
        >>> cov, round(width, 4)
        (0.5, 3.2897)
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1); got {level!r}")
    mean, variance, targets = _host(mean), _host(variance), _host(targets)
    mu = mean.mean(0)
    sd = np.sqrt(metrics.predictive_variance(mean, variance).total)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    return float(np.mean(np.abs(targets - mu) <= z * sd)), float(np.mean(2 * z * sd))


def regression_summary(prediction: Any, targets: Any) -> dict[str, float]:
    """RMSE, NLL, 90% interval coverage and width, mean noise and epistemic std, as Python floats.

    Args:
        prediction: a :class:`~uncertlr.likelihoods.NormalPrediction` (``mean``, ``variance``
            ``[S, N, ...]``) from either backend or from numpy.
        targets: ``[N, ...]``.

    Example:
        >>> import numpy as np
        >>> from uncertlr.likelihoods import NormalPrediction
        >>> s = regression_summary(NormalPrediction(np.zeros((2, 3)), np.ones((2, 3))), np.zeros(3))
        >>> s["rmse"], s["coverage_90"], s["epistemic_std"]
        (0.0, 1.0, 0.0)
    """
    mean, variance, y = _host(prediction.mean), _host(prediction.variance), _host(targets)
    d = metrics.predictive_variance(mean, variance)
    cov, width = interval_coverage(mean, variance, y, 0.9)
    return {
        "rmse": float(metrics.rmse(mean, y)),
        "nll": float(metrics.gaussian_nll(mean, variance, y)),
        "coverage_90": cov,
        "width_90": width,
        "noise_std": float(np.mean(np.sqrt(d.aleatoric))),
        "epistemic_std": float(np.mean(np.sqrt(d.epistemic))),
    }


# --------------------------------------------------------------------------- files


def _read_json(path: Path) -> Any:
    """``read_json`` with every way a damaged file fails as a ValueError naming it."""
    try:
        return read_json(path)
    except RecursionError as exc:
        raise ValueError(f"{path} is nested too deeply to read") from exc
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError, so are huge ints
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc


def write_metrics(run: str | os.PathLike[str], doc: Mapping[str, Any]) -> Path:
    """Write ``metrics.json``: the envelope (schema, created, device, versions, python) and ``doc``.

    ``doc`` holds ``task``, ``seed``, ``config``, ``models``... and may override ``device``.
    """
    env = environment()
    head = {
        "schema": METRICS_SCHEMA,
        "created": _dt.datetime.now().strftime("%Y-%m-%dT%H:%M:%S"),
        "device": "cpu",
        "versions": env["versions"],
        "python": env["python"],
    }
    return write_json(Path(run) / METRICS_FILE, {**head, **doc})


def read_metrics(run: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``metrics.json`` of a run folder.

    Raises:
        FileNotFoundError: the folder or its ``metrics.json`` is missing.
        ValueError: the file is not valid ``uncertlr.metrics/1`` JSON (the message names the file).
    """
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist")
    path = run / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run} has no {METRICS_FILE}: is it a run folder written by uncertlr?")
    meta = _read_json(path)
    if not isinstance(meta, dict) or meta.get("schema") != METRICS_SCHEMA:
        schema = meta.get("schema") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{path} is not an {METRICS_SCHEMA} file (schema {schema!r})")
    if not isinstance(meta.get("models", {}), dict):
        raise ValueError(f"{path}: 'models' must map model names to their metrics")
    return meta


def write_history(run: str | os.PathLike[str], histories: Mapping[str, Any]) -> Path:
    """Write ``history.json``: ``{model name: [record, ...]}``."""
    return write_json(Path(run) / HISTORY_FILE, histories)


def read_history(run: str | os.PathLike[str]) -> dict[str, list[Any]]:
    """``history.json`` as ``{model name: [record, ...]}`` (empty when the file is absent).

    Raises:
        ValueError: the file does not map model names to lists (the message names the file).
    """
    path = Path(run) / HISTORY_FILE
    if not path.is_file():
        return {}
    history = _read_json(path)
    if not isinstance(history, dict):
        raise ValueError(f"{path} must map model names to lists of records")
    return {str(k): v for k, v in history.items() if isinstance(v, list)}


def write_predictions(run: str | os.PathLike[str], arrays: Mapping[str, Any]) -> Path:
    """Write ``predictions.npz`` (compressed): ``labels`` and ``{name}_test`` / ``{name}_ood`` arrays."""
    data = {k: np.asarray(v) for k, v in arrays.items()}
    return atomic_write(Path(run) / PREDICTIONS_FILE, lambda f: np.savez_compressed(f, **data))


def read_predictions(run: str | os.PathLike[str], keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Arrays of ``predictions.npz`` (only ``keys`` when given: the others are never decompressed).

    Returns an empty dict when the file is absent.

    Raises:
        ValueError: the file is not a readable ``.npz`` (the message names it).
    """
    path = Path(run) / PREDICTIONS_FILE
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as f:
            wanted = f.files if keys is None else [k for k in keys if k in f.files]
            return {k: f[k] for k in wanted}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path} is not a readable predictions file: {exc}") from exc


def save_run(
    run: str | os.PathLike[str],
    doc: Mapping[str, Any],
    *,
    predictions: Mapping[str, Any],
    histories: Mapping[str, Any],
) -> Path:
    """Write ``metrics.json``, ``history.json`` and ``predictions.npz`` into the folder ``run``; returns it."""
    run = Path(run)
    write_metrics(run, doc)
    write_history(run, histories)
    write_predictions(run, predictions)
    return run


# --------------------------------------------------------------------------- distribution-shift results


def write_shift(
    run: str | os.PathLike[str], summary: Iterable[Mapping[str, Any]], curves: Mapping[str, Any]
) -> Path:
    """Write ``shift.json``: results under distribution shift (``benchmarks/shift.py --run-dir``).

    Args:
        summary: rows ``{"condition", "method", "accuracy", "nll", "ece", "auroc", ...}``.
        curves: ``{task: {method: {severity: {"ece", "nll", "accuracy"}}}}`` (severity 0 = clean).
    """
    return write_json(
        Path(run) / SHIFT_FILE, {"schema": SHIFT_SCHEMA, "summary": list(summary), "curves": curves}
    )


def read_shift(run: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``shift.json`` of a run folder (``{"summary": [...], "curves": {...}}``), or None when absent.

    Raises:
        ValueError: the file is not ``uncertlr.shift/1`` JSON with a summary list and a curves
            mapping (the message names the file).
    """
    path = Path(run) / SHIFT_FILE
    if not path.is_file():
        return None
    doc = read_json(path)
    if (
        not isinstance(doc, dict)
        or doc.get("schema") != SHIFT_SCHEMA
        or not isinstance(doc.get("summary"), list)
        or not isinstance(doc.get("curves"), dict)
    ):
        raise ValueError(f"{path} is not an {SHIFT_SCHEMA} file with 'summary' rows and 'curves'")
    return doc
