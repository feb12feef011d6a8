"""``report(run_dir)``: a self-contained HTML report of a run folder, beside ``posterior-*.nc`` and ``summary.json``.

Reads what a run leaves in its folder (through :mod:`uncertlr.runfolder`) — ``metrics.json``
(required), ``history.json``, the arrays it plots from ``predictions.npz`` and one
``posterior-<model>.nc`` per Bayesian model (an ArviZ ``InferenceData``, see
:func:`~uncertlr.diagnostics.to_inference_data`) — and writes

* ``report.html``: every image embedded as a ``data:`` URI, no external resource, every
  user-supplied string escaped; sections :data:`SECTIONS`;
* ``posterior-<model>.nc`` per Bayesian model, with the training history added as its own
  group (reload with ``arviz.from_netcdf``);
* ``summary.json``: per model, ``arviz.summary`` numbers, divergences, per-layer spread and
  the plain-language warnings.

Each section fails alone: a damaged optional file (``history.json``, ``predictions.npz``, a
``posterior-*.nc``) or a figure that cannot be drawn puts a warning naming the file and the
field in its section, and the rest renders. Only ``metrics.json`` is required. The report
reads just the arrays it plots from ``predictions.npz``, one draw at a time
(:mod:`uncertlr.diagnostics._predictions`).

Everything is rendered in memory first, then each file is written atomically
(temporary file + rename), so an interrupted report leaves the previous one intact.

Example:
    $ uncertlr report runs/demo-20260101-120000
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from uncertlr import __version__
from uncertlr._io import atomic_write, write_json
from uncertlr._progress import progress_task
from uncertlr.diagnostics import _html
from uncertlr.diagnostics._arviz import az
from uncertlr.diagnostics._predictions import read_prediction_summaries
from uncertlr.diagnostics._sections import Context, render_sections
from uncertlr.diagnostics.convert import add_history, inference_kind, model_name, to_inference_data
from uncertlr.diagnostics.plots import (
    energy_plot,
    figure_png,
    layer_spread_plot,
    ood_figure,
    rank_plot,
    reliability_figure,
    training_curves,
)
from uncertlr.diagnostics.summary import RHAT_THRESHOLD, summarize
from uncertlr.runfolder import HISTORY_FILE, PREDICTIONS_FILE, read_history, read_metrics

__all__ = ["SECTIONS", "SUMMARY_SCHEMA", "load_posteriors", "posterior_filename", "report"]

#: ``(id, title)`` of the report's sections, in order.
SECTIONS = (
    ("metadata", "Run metadata"),
    ("metrics", "Metrics"),
    ("reliability", "Reliability diagram"),
    ("uncertainty", "Uncertainty in- vs out-of-distribution"),
    ("spread", "Posterior spread per layer"),
    ("mcmc", "MCMC diagnostics"),
    ("training", "Training curves"),
    ("shift", "Under distribution shift"),
)
SUMMARY_SCHEMA = "uncertlr.summary/1"

T = TypeVar("T")


def posterior_filename(name: str) -> str:
    """File name of a model's InferenceData: ``posterior-<name>.nc``, the name made file-safe.

    Example:
        >>> posterior_filename("bnn+g1"), posterior_filename("a/b")[:14]
        ('posterior-bnn+g1.nc', 'posterior-a_b-')
    """
    slug = re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._") or "model"
    if slug != name:  # keep distinct names distinct after cleaning
        slug = f"{slug[:60]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return f"posterior-{slug}.nc"


def load_posteriors(
    run_dir: str | Path, *, on_error: Callable[[Path, Exception], None] | None = None
) -> dict[str, Any]:
    """``{model name: InferenceData}`` from the ``posterior-*.nc`` files of a run folder (loaded into memory).

    Args:
        on_error: called with the file and the error for a file that cannot be read, which is
            then skipped; without it such a file raises ``ValueError`` naming it.
    """
    out = {}
    for path in sorted(Path(run_dir).glob("posterior-*.nc")):
        try:
            with az.rc_context({"data.load": "eager"}):
                idata = az.from_netcdf(path)
            name = model_name(idata) or path.stem.removeprefix("posterior-")
        except Exception as exc:  # noqa: BLE001 - netCDF/HDF5 readers fail in many ways on a damaged file
            err = ValueError(
                f"{path} is not a readable ArviZ InferenceData file: {type(exc).__name__}: {exc}"
            )
            if on_error is None:
                raise err from exc
            on_error(path, err)
            continue
        out[name] = idata
    return out


def _write_bytes(data: bytes, f: Any) -> None:
    f.write(data)


def _netcdf_bytes(idata: Any) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "posterior.nc"
        idata.to_netcdf(str(path))
        return path.read_bytes()


def _said(what: str, exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
    return text if what in text else f"{what}: {text}"


def _attempt(
    notes: dict[str, list[str]], sections: tuple[str, ...], what: str, fn: Callable[[], T], default: T
) -> T:
    """``fn()``, or ``default`` with a note naming ``what`` in each of ``sections`` when it raises."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - one damaged optional input must not abort the report
        for sid in sections:
            text = _said(what, exc)
            if text not in notes.setdefault(sid, []):
                notes[sid].append(text)
        return default


# --------------------------------------------------------------------------- report


def report(
    run_dir: str | Path,
    *,
    inference: Mapping[str, Any] | None = None,
    progress: Any = True,
) -> Path:
    """(Re)build ``report.html``, ``posterior-<model>.nc`` and ``summary.json`` in a run folder.

    Args:
        run_dir: a run folder holding ``metrics.json`` (``history.json``,
            ``predictions.npz`` and ``posterior-*.nc`` are used when present).
        inference: extra or newer posteriors, ``{model name: InferenceData or anything
            to_inference_data accepts}``; they replace stored ones of the same name.
        progress: True for a progress bar, False for none, or a ``rich.progress.Progress``
            to add the report's task to (:func:`uncertlr._progress.progress_task`).

    Returns:
        The path of ``report.html``.

    Raises:
        FileNotFoundError: ``run_dir`` or its ``metrics.json`` is missing.
        ValueError: ``metrics.json`` is damaged or does not follow the ``uncertlr.metrics/1``
            schema (the message names the file). Any other damaged file costs only its section.
    """
    run = Path(run_dir)
    meta = read_metrics(run)
    models = meta.get("models", {})
    names = [str(n) for n in models]
    notes: dict[str, list[str]] = {}
    history = _attempt(notes, ("training",), HISTORY_FILE, lambda: read_history(run), {})
    preds: dict[str, Any] = {}
    for key in ["labels", *(f"{n}{part}" for n in names for part in ("_test", "_ood"))]:
        needs = ("uncertainty",) if key.endswith("_ood") else ("reliability", "uncertainty")
        preds.update(
            _attempt(
                notes, needs, PREDICTIONS_FILE, functools.partial(read_prediction_summaries, run, [key]), {}
            )
        )

    def unreadable(path: Path, exc: Exception) -> None:
        for sid in ("spread", "mcmc"):
            notes.setdefault(sid, []).append(str(exc))

    posteriors = load_posteriors(run, on_error=unreadable)
    for name, obj in (inference or {}).items():
        name = str(name)
        idata = _attempt(
            notes,
            ("spread", "mcmc"),
            f"the posterior of {name!r}",
            lambda obj=obj: _as_idata(obj, name),
            None,
        )
        if idata is not None:
            posteriors[name] = idata
    # in the run's model order (the metrics table's columns), not the files' alphabetical order
    rank = {n: i for i, n in enumerate(names)}
    posteriors = dict(sorted(posteriors.items(), key=lambda item: rank.get(item[0], len(rank))))
    summaries: dict[str, dict[str, Any]] = {}
    for name, idata in list(posteriors.items()):
        if history.get(name):
            _attempt(
                notes,
                ("training",),
                f"{HISTORY_FILE}[{name!r}]",
                functools.partial(add_history, idata, history[name]),
                None,
            )
        what = f"{posterior_filename(name)} (model {name!r})"
        summary = _attempt(notes, ("spread", "mcmc"), what, functools.partial(summarize, idata), None)
        if summary is None:
            del posteriors[name]  # neither summarised nor rewritten: its file stays as it was
        else:
            summaries[name] = summary
    mcmc = [n for n in posteriors if inference_kind(posteriors[n]) == "mcmc"]
    jobs = _figure_jobs(preds, names, history, posteriors, summaries, mcmc)

    figures: dict[str, bytes] = {}
    with progress_task(progress, "report", len(jobs) + 1) as advance:
        for key, section, what, make in jobs:
            png = _attempt(notes, (section,), what, lambda make=make: figure_png(make()), None)
            if png is not None:
                figures[key] = png
            advance(description=f"report: {key}")
        ctx = Context(run, meta, history, posteriors, summaries, mcmc, figures, posterior_filename, notes)
        html = _render(ctx)
        files = {posterior_filename(n): _netcdf_bytes(idata) for n, idata in posteriors.items()}
        summary = {
            "schema": SUMMARY_SCHEMA,
            "run": run.name,
            "created": _dt.datetime.now().isoformat(timespec="seconds"),
            "arviz": az.__version__,
            "rhat_threshold": RHAT_THRESHOLD,
            "models": {n: {**s, "posterior_file": posterior_filename(n)} for n, s in summaries.items()},
            "warnings": [{"model": n, "message": w} for n, s in summaries.items() for w in s["warnings"]],
            "skipped": {sid: list(texts) for sid, texts in notes.items() if texts},
        }
        advance(description="report: writing")
    # everything is rendered: now write, each file atomically, the page last
    for fname, data in files.items():
        atomic_write(run / fname, functools.partial(_write_bytes, data))
    write_json(run / "summary.json", summary)
    return atomic_write(run / "report.html", lambda f: f.write(html.encode("utf-8")))


def _as_idata(obj: Any, name: str) -> Any:
    idata = obj if isinstance(obj, az.InferenceData) else to_inference_data(obj)
    return to_inference_data(idata, name=name)


# --------------------------------------------------------------------------- figures


def _rank_labels(summary: Mapping[str, Any], num_weights: int = 4) -> list[str]:
    """Predictive quantities, then the weights with the largest R-hat."""
    labels = list(summary["predictive"])
    weights = sorted(summary["weights"].items(), key=lambda kv: -(kv[1].get("r_hat") or 0.0))
    return labels + [k for k, _ in weights[:num_weights]]


def _check_lengths(preds: Mapping[str, Any], keys: list[str]) -> None:
    """Every model's predictions must cover the ``labels`` (the message names the arrays)."""
    n = len(preds["labels"])
    for k in keys:
        if k in preds and preds[k].mean.shape[0] != n:
            raise ValueError(
                f"{PREDICTIONS_FILE}: {k!r} has {preds[k].mean.shape[0]} inputs but 'labels' has {n}"
            )


def _figure_jobs(
    preds: Mapping[str, Any],
    names: list[str],
    history: Mapping[str, list[Any]],
    posteriors: Mapping[str, Any],
    summaries: Mapping[str, Mapping[str, Any]],
    mcmc: list[str],
) -> list[tuple[str, str, str, Callable[[], Any]]]:
    """``(figure key, section, what it draws from, make)`` for every figure the run's files allow."""
    jobs: list[tuple[str, str, str, Callable[[], Any]]] = []
    tested = [n for n in names if f"{n}_test" in preds] if "labels" in preds else []
    if tested:
        test_keys = [f"{n}_test" for n in tested]

        def reliability() -> Any:
            _check_lengths(preds, test_keys)
            return reliability_figure(preds, tested)

        jobs.append(
            (
                "reliability",
                "reliability",
                f"{PREDICTIONS_FILE} ('labels', {', '.join(map(repr, test_keys))})",
                reliability,
            )
        )
        if any(f"{n}_ood" in preds for n in tested):
            ood_keys = [f"{n}_ood" for n in tested if f"{n}_ood" in preds]
            jobs.append(
                (
                    "uncertainty",
                    "uncertainty",
                    f"{PREDICTIONS_FILE} ({', '.join(map(repr, test_keys + ood_keys))})",
                    lambda: ood_figure(preds, tested),
                )
            )
    spreads = {n: s["layer_spread"] for n, s in summaries.items() if s.get("layer_spread")}
    if spreads:
        jobs.append(("spread", "spread", "the posteriors' layer spread", lambda: layer_spread_plot(spreads)))
    for n in mcmc:
        what = posterior_filename(n)
        jobs.append(
            (
                f"rank:{n}",
                "mcmc",
                what,
                functools.partial(rank_plot, posteriors[n], _rank_labels(summaries[n])),
            )
        )
        if summaries[n]["energy_recorded"]:
            jobs.append((f"energy:{n}", "mcmc", what, functools.partial(energy_plot, posteriors[n])))
    curves = {k: v for k, v in history.items() if v}
    if curves:
        jobs.append(("training", "training", HISTORY_FILE, lambda: training_curves(curves)))
    return jobs


# --------------------------------------------------------------------------- HTML


def _render(ctx: Context) -> str:
    esc = _html.esc
    sections = render_sections(ctx, [sid for sid, _ in SECTIONS])
    all_warnings = [(n, w) for n, s in ctx.summaries.items() for w in s["warnings"]]
    banner = ""
    if all_warnings:
        banner = (
            '<div class="warn" id="warnings"><strong>Warnings</strong><ul>'
            + "".join(f"<li><strong>{esc(n)}</strong>: {esc(w)}</li>" for n, w in all_warnings)
            + "</ul></div>"
        )
    meta = ctx.meta
    return _html.page(
        title=f"uncertlr report: {ctx.run.name}",
        subtitle=" · ".join(
            str(x) for x in (meta.get("task"), meta.get("created"), ", ".join(map(str, ctx.models))) if x
        ),
        sections=[(i, t, sections[i]) for i, t in SECTIONS],
        banner=banner,
        footer=f"uncertlr {__version__}, ArviZ {az.__version__}; generated {_dt.datetime.now():%Y-%m-%d %H:%M:%S}.",
    )
