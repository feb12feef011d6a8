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

Everything is rendered in memory first, then each file is written atomically
(temporary file + rename), so an interrupted report leaves the previous one intact.

Example:
    $ uncertlr report runs/demo-20260101-120000
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from uncertlr import __version__
from uncertlr._io import atomic_write, write_json
from uncertlr._progress import progress_task
from uncertlr.diagnostics import _html
from uncertlr.diagnostics._arviz import az
from uncertlr.diagnostics._shift import shift_section
from uncertlr.diagnostics.convert import (
    PREDICTIVE_QUANTITIES,
    add_history,
    inference_kind,
    model_name,
    to_inference_data,
)
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
from uncertlr.runfolder import SUMMARY_ROWS, read_history, read_metrics, read_predictions

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
#: Most weight rows shown per model in the HTML summary table (summary.json has them all).
MAX_TABLE_ROWS = 20
_EXTRA_ROWS = (("adaptive_ece", "adaptive ECE", ".3f"),)


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


def load_posteriors(run_dir: str | Path) -> dict[str, Any]:
    """``{model name: InferenceData}`` from the ``posterior-*.nc`` files of a run folder (loaded into memory)."""
    out = {}
    for path in sorted(Path(run_dir).glob("posterior-*.nc")):
        with az.rc_context({"data.load": "eager"}):
            idata = az.from_netcdf(path)
        out[model_name(idata) or path.stem.removeprefix("posterior-")] = idata
    return out


def _write_bytes(data: bytes, f: Any) -> None:
    f.write(data)


def _netcdf_bytes(idata: Any) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "posterior.nc"
        idata.to_netcdf(str(path))
        return path.read_bytes()


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
        ValueError: ``metrics.json`` does not follow the ``uncertlr.metrics/1`` schema, or
            ``history.json`` / ``predictions.npz`` cannot be read (the message names the file).
    """
    run = Path(run_dir)
    meta = read_metrics(run)
    history = read_history(run)
    plotted = [f"{n}{part}" for n in meta.get("models", {}) for part in ("_test", "_ood")]
    preds = read_predictions(run, ["labels", *plotted])

    posteriors = load_posteriors(run)
    for name, obj in (inference or {}).items():
        idata = obj if isinstance(obj, az.InferenceData) else to_inference_data(obj)
        posteriors[str(name)] = to_inference_data(idata, name=str(name))
    for name, idata in posteriors.items():
        if history.get(name):
            add_history(idata, history[name])
    summaries = {name: summarize(idata) for name, idata in posteriors.items()}
    mcmc = [n for n in posteriors if inference_kind(posteriors[n]) == "mcmc"]
    spreads = {n: s["layer_spread"] for n, s in summaries.items() if s.get("layer_spread")}

    figures: dict[str, bytes] = {}
    jobs: list[tuple[str, Callable[[], Any]]] = []
    labels = preds.get("labels")
    tested = [n for n in meta.get("models", {}) if f"{n}_test" in preds] if labels is not None else []
    if tested:
        jobs.append(("reliability", lambda: reliability_figure(preds, tested)))
        if any(f"{n}_ood" in preds for n in tested):
            jobs.append(("uncertainty", lambda: ood_figure(preds, tested)))
    if spreads:
        jobs.append(("spread", lambda: layer_spread_plot(spreads)))
    for n in mcmc:
        jobs.append((f"rank:{n}", functools.partial(rank_plot, posteriors[n], _rank_labels(summaries[n]))))
        if summaries[n]["energy_recorded"]:
            jobs.append((f"energy:{n}", functools.partial(energy_plot, posteriors[n])))
    if any(history.values()):
        jobs.append(("training", lambda: training_curves({k: v for k, v in history.items() if v})))

    with progress_task(progress, "report", len(jobs) + 1) as advance:
        for key, make in jobs:
            figures[key] = figure_png(make())
            advance(description=f"report: {key}")
        html = _render(run, meta, history, posteriors, summaries, mcmc, figures)
        files = {posterior_filename(n): _netcdf_bytes(idata) for n, idata in posteriors.items()}
        summary = {
            "schema": SUMMARY_SCHEMA,
            "run": run.name,
            "created": _dt.datetime.now().isoformat(timespec="seconds"),
            "arviz": az.__version__,
            "rhat_threshold": RHAT_THRESHOLD,
            "models": {n: {**s, "posterior_file": posterior_filename(n)} for n, s in summaries.items()},
            "warnings": [{"model": n, "message": w} for n, s in summaries.items() for w in s["warnings"]],
        }
        advance(description="report: writing")
    # everything is rendered: now write, each file atomically, the page last
    for fname, data in files.items():
        atomic_write(run / fname, functools.partial(_write_bytes, data))
    write_json(run / "summary.json", summary)
    return atomic_write(run / "report.html", lambda f: f.write(html.encode("utf-8")))


# --------------------------------------------------------------------------- figures


def _rank_labels(summary: Mapping[str, Any], num_weights: int = 4) -> list[str]:
    """Predictive quantities, then the weights with the largest R-hat."""
    labels = list(summary["predictive"])
    weights = sorted(summary["weights"].items(), key=lambda kv: -(kv[1].get("r_hat") or 0.0))
    return labels + [k for k, _ in weights[:num_weights]]


# --------------------------------------------------------------------------- HTML


def _fmt(v: Any, fmt: str = ".3g") -> str:
    if v is None:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return format(float(v), fmt) if np.isfinite(v) else "–"
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str)
    return str(v)


def _img(figures: Mapping[str, bytes], key: str, alt: str) -> str:
    return _html.image(figures[key], alt) if key in figures else ""


def _note(text: str) -> str:
    return f'<p class="note">{_html.esc(text)}</p>'


def _render(
    run: Path,
    meta: dict,
    history: dict,
    posteriors: dict,
    summaries: dict,
    mcmc: list[str],
    figures: dict[str, bytes],
) -> str:
    esc = _html.esc
    models = meta.get("models", {})
    sections: dict[str, str] = {}

    # run metadata
    skip = {"models", "versions", "config", "schema"}
    rows = [("run folder", run.name)] + [(k, _fmt(v)) for k, v in meta.items() if k not in skip]
    inner = _html.table(["field", "value"], rows)
    if isinstance(meta.get("config"), dict) and meta["config"]:
        inner += "<h3>Configuration</h3>" + _html.table(
            ["setting", "value"], [(k, _fmt(v)) for k, v in meta["config"].items()]
        )
    if isinstance(meta.get("versions"), dict) and meta["versions"]:
        inner += "<h3>Package versions</h3>" + _html.table(
            ["package", "version"], list(meta["versions"].items())
        )
    sections["metadata"] = inner

    # metrics
    if models:
        rows_spec = [r for r in SUMMARY_ROWS] + [
            r for r in _EXTRA_ROWS if r[0] not in {k for k, _, _ in SUMMARY_ROWS}
        ]
        present = [r for r in rows_spec if any(isinstance(m, dict) and r[0] in m for m in models.values())]
        body = [
            [label] + [_fmt(m.get(key) if isinstance(m, dict) else None, fmt) for m in models.values()]
            for key, label, fmt in present
        ]
        sections["metrics"] = _html.table(["metric", *models], body) + _note(
            "Test set; OOD AUROC tells the test set from the out-of-distribution set"
            + (f" ({meta['ood']})" if meta.get("ood") else "")
            + " by each uncertainty score."
        )
    else:
        sections["metrics"] = _note("metrics.json lists no models.")

    # reliability and uncertainty
    if "reliability" in figures:
        sections["reliability"] = _img(figures, "reliability", "Reliability diagram") + _note(
            "Accuracy against confidence in 15 equal-width bins; the dashed diagonal is perfect calibration."
        )
    else:
        sections["reliability"] = _note(
            "No predictions.npz with test-set predictions and labels in this run folder."
        )
    if "uncertainty" in figures:
        sections["uncertainty"] = _img(
            figures, "uncertainty", "Predictive entropy and mutual information histograms"
        ) + _note(
            "Predictive entropy is total uncertainty; mutual information is its epistemic part (zero for a point estimate)."
        )
    else:
        sections["uncertainty"] = _note("No out-of-distribution predictions in this run folder.")

    # posterior spread
    spread_models = [n for n, s in summaries.items() if s.get("layer_spread")]
    if spread_models:
        layers: list[str] = []
        for n in spread_models:
            layers += [k for k in summaries[n]["layer_spread"] if k not in layers]
        header = ["layer"] + [
            f"{n}: {what}" for n in spread_models for what in ("size", "mean σ", "mean |μ|/σ")
        ]
        body = []
        for layer in layers:
            row = [layer]
            for n in spread_models:
                e = summaries[n]["layer_spread"].get(layer) or {}
                row += [_fmt(e.get("size")), _fmt(e.get("mean_scale")), _fmt(e.get("mean_snr"))]
            body.append(row)
        notes = []
        for n in spread_models:
            s = summaries[n]
            src = (
                "exactly from the variational posterior"
                if s.get("spread_source") == "guide"
                else "from the posterior draws"
            )
            sub = s.get("weight_subset") or {}
            size, kept = sum(v["size"] for v in sub.values()), sum(v["kept"] for v in sub.values())
            notes.append(
                f"{n}: spread computed {src}; {posterior_filename(n)} keeps {kept} of {size} weights "
                f"({s.get('chains')} chain(s) × {s.get('draws')} draws)."
            )
        sections["spread"] = (
            _img(figures, "spread", "Posterior spread per layer")
            + _html.table(header, body)
            + "".join(_note(t) for t in notes)
        )
    else:
        sections["spread"] = _note("No model in this run has a posterior (posterior-*.nc).")

    # MCMC
    if mcmc:
        parts = []
        for n in mcmc:
            s = summaries[n]
            parts.append(f"<h3>{esc(n)}</h3>")
            div = s["divergences"]
            facts = [("chains", s.get("chains")), ("draws per chain", s.get("draws")), ("divergences", div)]
            if s.get("bfmi"):
                facts.append(("energy BFMI per chain", ", ".join(_fmt(b, ".2f") for b in s["bfmi"])))
            parts.append(_html.table(["", ""], [(k, _fmt(v)) for k, v in facts]))
            if s["warnings"]:
                parts += [f'<p class="warn">{esc(w)}</p>' for w in s["warnings"]]
            else:
                parts.append(f'<p class="ok">No divergences and every R-hat is at most {RHAT_THRESHOLD}.</p>')
            parts.append(_summary_table(s))
            parts.append(_img(figures, f"rank:{n}", f"Rank plots of {n}"))
            parts.append(
                _note(
                    "Rank plots: per chain, a histogram of its draws' ranks among all chains; "
                    "flat and alike when the chains agree."
                )
            )
            if f"energy:{n}" in figures:
                parts.append(_img(figures, f"energy:{n}", f"Energy plot of {n}"))
                parts.append(
                    _note(
                        "Energy plot: the energy-transition distribution should be as wide as the marginal energy."
                    )
                )
            else:
                parts.append(_note("Energy not recorded: run NumPyro's MCMC with extra_fields=('energy',)."))
        sections["mcmc"] = "".join(parts)
    else:
        sections["mcmc"] = _note(
            "No model in this run was fit by MCMC. R-hat, ESS and divergences describe Markov chains; "
            "draws from a variational posterior are independent, so check its training curve instead."
        )

    # training
    if "training" in figures:
        keys = sorted({k for h in history.values() for r in h if isinstance(r, dict) for k in r})
        sections["training"] = _img(figures, "training", "Training curves") + _note(
            "Recorded per optimizer step: "
            + ", ".join(keys)
            + ". Noisy curves are drawn faintly with a moving average."
        )
    else:
        sections["training"] = _note("No history.json in this run folder.")

    sections["shift"] = shift_section(run)

    all_warnings = [(n, w) for n, s in summaries.items() for w in s["warnings"]]
    banner = ""
    if all_warnings:
        banner = (
            '<div class="warn" id="warnings"><strong>Warnings</strong><ul>'
            + "".join(f"<li><strong>{esc(n)}</strong>: {esc(w)}</li>" for n, w in all_warnings)
            + "</ul></div>"
        )
    return _html.page(
        title=f"uncertlr report: {run.name}",
        subtitle=" · ".join(
            str(x) for x in (meta.get("task"), meta.get("created"), ", ".join(map(str, models))) if x
        ),
        sections=[(i, t, sections[i]) for i, t in SECTIONS],
        banner=banner,
        footer=f"uncertlr {__version__}, ArviZ {az.__version__}; generated {_dt.datetime.now():%Y-%m-%d %H:%M:%S}.",
    )


def _summary_table(s: Mapping[str, Any]) -> str:
    cols = ["mean", "sd", "mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "r_hat"]
    weights = sorted(s["weights"].items(), key=lambda kv: -(kv[1].get("r_hat") or 0.0))
    rows = list(s["predictive"].items()) + weights[:MAX_TABLE_ROWS]
    body, bad = [], set()
    for i, (label, st) in enumerate(rows):
        body.append(
            [label]
            + [
                _fmt(st.get(c), ".0f" if c.startswith("ess") else ".3f" if c == "r_hat" else ".3g")
                for c in cols
            ]
        )
        if (st.get("r_hat") or 0.0) > RHAT_THRESHOLD:
            bad.add((i, len(cols)))
    out = _html.table(["quantity", *cols], body, bad=bad)
    more = len(s["weights"]) - min(len(s["weights"]), MAX_TABLE_ROWS)
    note = (
        f"Predictive quantities ({', '.join(q for q in PREDICTIVE_QUANTITIES if q in s['predictive'])}) first, "
        "then the weights with the largest R-hat"
    )
    note += f"; {more} more weights in summary.json." if more else "."
    return out + _note(note)
