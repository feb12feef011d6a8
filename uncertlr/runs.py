"""Run folders: where a demo, example or training run leaves its results.

A run folder holds ``metrics.json`` (schema below), plots (PNG), ``predictions.npz``
(posterior predictive samples) and ``history.json`` (training curves). Every file is
written atomically (temporary file in the same folder, then ``os.replace``), and
:func:`new_run_dir` never reuses an existing folder, so a crash or a second run
cannot destroy earlier results.

``metrics.json`` schema (``"schema": "uncertlr.metrics/1"``)::

    {"schema", "task", "created", "seed", "device", "versions": {package: version},
     "config": {...}, "models": {name: {"accuracy", "nll", "brier", "ece", "adaptive_ece",
     "entropy_in", "mi_in", "entropy_ood", "mi_ood", "auroc_mi", "auroc_entropy", "seconds", ...}}}

Regression runs (``examples/regression_1d.py``) use the same envelope with ``"models": {name:
{"rmse", "nll", "coverage_90", "width_90", "noise_std", "epistemic_std", ...}}``.

Example:
    >>> import tempfile
    >>> from uncertlr.runs import new_run_dir, write_json, read_json
    >>> run = new_run_dir(tempfile.mkdtemp(), "demo")
    >>> _ = write_json(run / "x.json", {"a": 1})
    >>> read_json(run / "x.json")
    {'a': 1}
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import tempfile
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import IO, Any

__all__ = [
    "METRICS_SCHEMA",
    "atomic_write",
    "environment",
    "new_run_dir",
    "read_json",
    "save_classification_run",
    "write_json",
    "write_report",
]

METRICS_SCHEMA = "uncertlr.metrics/1"

_PACKAGES = (
    "uncertlr",
    "torch",
    "pyro-ppl",
    "numpy",
    "jax",
    "numpyro",
    "optax",
    "arviz",
    "scikit-learn",
    "matplotlib",
)


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` by calling ``write(file)`` on a temporary file, then renaming it into place.

    If ``write`` raises, the previous content of ``path`` (if any) is left untouched. The file
    gets the usual permissions of a new file (``0o666`` minus the umask), not ``mkstemp``'s 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy / torch / jax scalars
        return _jsonable(obj.item())
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return repr(obj)


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Atomically write ``data`` as indented JSON (arrays become lists; NaN/inf become null)."""
    text = json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file written by :func:`write_json`."""
    return json.loads(Path(path).read_text())


def environment(packages: Iterable[str] = _PACKAGES) -> dict[str, Any]:
    """Versions of the installed packages that matter for reproducing a run, plus Python and the OS."""
    versions: dict[str, str] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"python": platform.python_version(), "platform": platform.platform(), "versions": versions}


def save_classification_run(
    run: str | os.PathLike[str],
    doc: Mapping[str, Any],
    *,
    predictions: Mapping[str, Any],
    histories: Mapping[str, Any],
    ood_label: str = "OOD",
) -> Path:
    """Write the standard files of a classification run into the folder ``run``.

    * ``metrics.json``: ``{"schema", "created", "device", "versions", "python", **doc}`` (``doc``
      holds ``task``, ``seed``, ``config``, ``ood``, ``models``... and may override ``device``);
    * ``history.json``: ``histories``;
    * ``predictions.npz``: ``predictions`` (``labels``, ``{name}_test``, ``{name}_ood`` ``[S, N, C]``);
    * ``reliability.png`` for every ``{name}_test``, and ``uncertainty.png``: predictive entropy
      (and mutual information for sampled models, ``S > 1``) in- vs out-of-distribution for every
      model with a ``{name}_ood`` entry.

    Returns:
        The run folder.
    """
    import numpy as np

    from uncertlr import metrics
    from uncertlr.plotting import reliability_diagram, save_figure, uncertainty_histograms

    run = Path(run)
    env = environment()
    head = {
        "schema": METRICS_SCHEMA,
        "created": _dt.datetime.now().strftime("%Y-%m-%dT%H:%M:%S"),
        "device": "cpu",
        "versions": env["versions"],
        "python": env["python"],
    }
    write_json(run / "metrics.json", {**head, **doc})
    write_json(run / "history.json", histories)
    arrays = {k: np.asarray(v) for k, v in predictions.items()}
    atomic_write(run / "predictions.npz", lambda f: np.savez_compressed(f, **arrays))
    names = [k.removesuffix("_test") for k in arrays if k.endswith("_test")]
    labels = arrays["labels"]
    save_figure(
        reliability_diagram({k: (arrays[f"{k}_test"], labels) for k in names}), run / "reliability.png"
    )
    scores = {}
    for k in names:
        if f"{k}_ood" not in arrays:
            continue
        d_in = metrics.uncertainty_decomposition(arrays[f"{k}_test"])
        d_out = metrics.uncertainty_decomposition(arrays[f"{k}_ood"])
        scores[f"{k}: predictive entropy"] = (d_in.total, d_out.total)
        if arrays[f"{k}_test"].ndim == 3 and arrays[f"{k}_test"].shape[0] > 1:
            scores[f"{k}: mutual information"] = (d_in.epistemic, d_out.epistemic)
    if scores:
        save_figure(
            uncertainty_histograms(scores, title=f"in-distribution vs {ood_label}"), run / "uncertainty.png"
        )
    return run


def write_report(
    run: str | os.PathLike[str],
    posteriors: Mapping[str, Any],
    x: Any,
    y: Any,
    *,
    num_samples: int,
    seed: int,
    console: Any = None,
) -> Path | None:
    """Posterior draws of every Bayesian model in ``posteriors`` (name -> BNN), then ``report.html``.

    Writes ``posterior-<name>.nc``, ``summary.json`` and ``report.html`` into the run folder
    (see :func:`uncertlr.diagnostics.report`); ``uncertlr report RUN_DIR`` rebuilds them later.
    Without the ``report`` extra (ArviZ) it prints why and returns ``None``.
    """
    try:
        from uncertlr.diagnostics import report, to_inference_data
    except ImportError as exc:  # the report extra is optional
        if console is not None:
            console.print(f"[yellow]no diagnostics report[/]: {exc}")
        return None
    inference = {
        name: to_inference_data(bnn, x=x, y=y, num_samples=num_samples, name=name, rng_seed=seed)
        for name, bnn in posteriors.items()
    }
    return report(run, inference=inference)
