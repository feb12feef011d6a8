"""The report's sections as HTML, one function each, so that each can fail alone.

:func:`render_sections` calls every section's function; one that raises is replaced by a
warning that names what it could not use (the file and the field), and the others render as
usual. Notes collected while reading the run folder (a damaged ``history.json``, a corrupt
``posterior-*.nc``, a figure that could not be drawn) are shown at the top of their section.
Every string that reaches the page goes through :func:`uncertlr.diagnostics._html.esc`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from uncertlr.diagnostics import _html
from uncertlr.diagnostics._shift import shift_section
from uncertlr.diagnostics.convert import PREDICTIVE_QUANTITIES
from uncertlr.diagnostics.summary import RHAT_THRESHOLD
from uncertlr.runfolder import METRICS_FILE, SUMMARY_ROWS

__all__ = ["MAX_TABLE_ROWS", "Context", "fmt", "render_sections"]

#: Most weight rows shown per model in the HTML summary table (summary.json has them all).
MAX_TABLE_ROWS = 20
_EXTRA_ROWS = (("adaptive_ece", "adaptive ECE", ".3f"),)


@dataclass
class Context:
    """Everything the sections draw from, read (and checked) by :func:`uncertlr.diagnostics.report`."""

    run: Path
    meta: dict[str, Any]
    history: dict[str, list[Any]]
    posteriors: dict[str, Any]
    summaries: dict[str, dict[str, Any]]
    mcmc: list[str]
    figures: dict[str, bytes]
    posterior_file: Callable[[str], str]
    notes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def models(self) -> dict[str, Any]:
        models = self.meta.get("models", {})
        return models if isinstance(models, dict) else {}


def fmt(v: Any, spec: str = ".3g") -> str:
    """A value of a run's JSON files as table text (``–`` for missing or non-finite numbers)."""
    if v is None:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return format(float(v), spec) if np.isfinite(v) else "–"
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str)
    return str(v)


def note(text: str) -> str:
    return f'<p class="note">{_html.esc(text)}</p>'


def _img(ctx: Context, key: str, alt: str) -> str:
    return _html.image(ctx.figures[key], alt) if key in ctx.figures else ""


def metadata(ctx: Context) -> str:
    meta = ctx.meta
    skip = {"models", "versions", "config", "schema"}
    rows = [("run folder", ctx.run.name)] + [(k, fmt(v)) for k, v in meta.items() if k not in skip]
    inner = _html.table(["field", "value"], rows)
    if isinstance(meta.get("config"), dict) and meta["config"]:
        inner += "<h3>Configuration</h3>" + _html.table(
            ["setting", "value"], [(k, fmt(v)) for k, v in meta["config"].items()]
        )
    if isinstance(meta.get("versions"), dict) and meta["versions"]:
        inner += "<h3>Package versions</h3>" + _html.table(
            ["package", "version"], [(k, fmt(v)) for k, v in meta["versions"].items()]
        )
    return inner


def metrics(ctx: Context) -> str:
    models = ctx.models
    if not models:
        return note(f"{METRICS_FILE} lists no models.")
    bad = [n for n, m in models.items() if not isinstance(m, dict)]
    rows_spec = list(SUMMARY_ROWS) + [r for r in _EXTRA_ROWS if r[0] not in {k for k, _, _ in SUMMARY_ROWS}]
    present = [r for r in rows_spec if any(isinstance(m, dict) and r[0] in m for m in models.values())]
    body = [
        [label] + [fmt(m.get(key) if isinstance(m, dict) else None, spec) for m in models.values()]
        for key, label, spec in present
    ]
    ood = ctx.meta.get("ood")
    out = _html.table(["metric", *models], body) + note(
        "Test set; OOD AUROC tells the test set from the out-of-distribution set"
        + (f" ({fmt(ood)})" if ood else "")
        + " by each uncertainty score."
    )
    for n in bad:
        out += warn(
            f"{METRICS_FILE}: models[{n!r}] is a {type(models[n]).__name__}, not a mapping of metrics."
        )
    return out


def reliability(ctx: Context) -> str:
    if "reliability" not in ctx.figures:
        return note("No predictions.npz with test-set predictions and labels in this run folder.")
    return _img(ctx, "reliability", "Reliability diagram") + note(
        "Accuracy against confidence in 15 equal-width bins; the dashed diagonal is perfect calibration. "
        "Each legend entry gives the model's ECE and, after 'calibrated ≈', the ECE a perfectly calibrated "
        "model with the same confidences scores on this many test inputs (consistency resampling, "
        "metrics.ece_consistency): an ECE near it is within the test set's noise."
    )


def uncertainty(ctx: Context) -> str:
    if "uncertainty" not in ctx.figures:
        return note("No out-of-distribution predictions in this run folder.")
    return _img(ctx, "uncertainty", "Predictive entropy and mutual information histograms") + note(
        "Predictive entropy is total uncertainty; mutual information is its epistemic part (zero for a point estimate)."
    )


def spread(ctx: Context) -> str:
    models = [n for n, s in ctx.summaries.items() if s.get("layer_spread")]
    if not models:
        return note("No model in this run has a posterior (posterior-*.nc).")
    layers: list[str] = []
    for n in models:
        layers += [k for k in ctx.summaries[n]["layer_spread"] if k not in layers]
    header = ["layer"] + [f"{n}: {what}" for n in models for what in ("size", "mean σ", "mean |μ|/σ")]
    body = []
    for layer in layers:
        row = [layer]
        for n in models:
            e = ctx.summaries[n]["layer_spread"].get(layer) or {}
            row += [fmt(e.get("size")), fmt(e.get("mean_scale")), fmt(e.get("mean_snr"))]
        body.append(row)
    notes = []
    for n in models:
        s = ctx.summaries[n]
        src = (
            "exactly from the variational posterior"
            if s.get("spread_source") == "guide"
            else "from the posterior draws"
        )
        sub = s.get("weight_subset") or {}
        size, kept = sum(v["size"] for v in sub.values()), sum(v["kept"] for v in sub.values())
        notes.append(
            f"{n}: spread computed {src}; {ctx.posterior_file(n)} keeps {kept} of {size} weights "
            f"({s.get('chains')} chain(s) × {s.get('draws')} draws)."
        )
    return (
        _img(ctx, "spread", "Posterior spread per layer")
        + _html.table(header, body)
        + "".join(note(t) for t in notes)
    )


def mcmc(ctx: Context) -> str:
    if not ctx.mcmc:
        return note(
            "No model in this run was fit by MCMC. R-hat, ESS and divergences describe Markov chains; "
            "draws from a variational posterior are independent, so check its training curve instead."
        )
    parts = []
    for n in ctx.mcmc:
        s = ctx.summaries[n]
        parts.append(f"<h3>{_html.esc(n)}</h3>")
        facts = [
            ("chains", s.get("chains")),
            ("draws per chain", s.get("draws")),
            ("divergences", s["divergences"]),
        ]
        if s.get("bfmi"):
            facts.append(("energy BFMI per chain", ", ".join(fmt(b, ".2f") for b in s["bfmi"])))
        parts.append(_html.table(["", ""], [(k, fmt(v)) for k, v in facts]))
        if s["warnings"]:
            parts += [f'<p class="warn">{_html.esc(w)}</p>' for w in s["warnings"]]
        else:
            parts.append(f'<p class="ok">No divergences and every R-hat is at most {RHAT_THRESHOLD}.</p>')
        parts.append(summary_table(s))
        parts.append(_img(ctx, f"rank:{n}", f"Rank plots of {n}"))
        parts.append(
            note(
                "Rank plots: per chain, a histogram of its draws' ranks among all chains; flat and alike when the chains agree."
            )
        )
        if f"energy:{n}" in ctx.figures:
            parts.append(_img(ctx, f"energy:{n}", f"Energy plot of {n}"))
            parts.append(
                note(
                    "Energy plot: the energy-transition distribution should be as wide as the marginal energy."
                )
            )
        else:
            parts.append(note("Energy not recorded: run NumPyro's MCMC with extra_fields=('energy',)."))
    return "".join(parts)


def training(ctx: Context) -> str:
    if "training" not in ctx.figures:
        return note("No history.json in this run folder.")
    keys = sorted({str(k) for h in ctx.history.values() for r in h if isinstance(r, dict) for k in r})
    return _img(ctx, "training", "Training curves") + note(
        "Recorded per optimizer step: "
        + ", ".join(keys)
        + ". Noisy curves are drawn faintly with a moving average."
        + (
            " The shaded band of a per-weight rule spans its smallest to largest step factor over the weights"
            " (log axis)."
            if "scale_min" in keys
            else ""
        )
    )


def summary_table(s: Mapping[str, Any]) -> str:
    cols = ["mean", "sd", "mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "r_hat"]
    weights = sorted(s["weights"].items(), key=lambda kv: -(kv[1].get("r_hat") or 0.0))
    rows = list(s["predictive"].items()) + weights[:MAX_TABLE_ROWS]
    body, bad = [], set()
    for i, (label, st) in enumerate(rows):
        body.append(
            [label]
            + [
                fmt(st.get(c), ".0f" if c.startswith("ess") else ".3f" if c == "r_hat" else ".3g")
                for c in cols
            ]
        )
        if (st.get("r_hat") or 0.0) > RHAT_THRESHOLD:
            bad.add((i, len(cols)))
    out = _html.table(["quantity", *cols], body, bad=bad)
    more = len(s["weights"]) - min(len(s["weights"]), MAX_TABLE_ROWS)
    text = (
        f"Predictive quantities ({', '.join(q for q in PREDICTIVE_QUANTITIES if q in s['predictive'])}) first, "
        "then the weights with the largest R-hat"
    )
    text += f"; {more} more weights in summary.json." if more else "."
    return out + note(text)


def warn(text: str) -> str:
    return f'<p class="warn">{_html.esc(text)}</p>'


#: The function that renders each section of :data:`uncertlr.diagnostics.SECTIONS`.
RENDERERS: dict[str, Callable[[Context], str]] = {
    "metadata": metadata,
    "metrics": metrics,
    "reliability": reliability,
    "uncertainty": uncertainty,
    "spread": spread,
    "mcmc": mcmc,
    "training": training,
    "shift": lambda ctx: shift_section(ctx.run),
}


def render_sections(ctx: Context, ids: list[str]) -> dict[str, str]:
    """``{section id: inner HTML}``: the section's notes, then its content (or why it could not be drawn)."""
    out = {}
    for sid in ids:
        head = "".join(warn(t) for t in ctx.notes.get(sid, []))
        try:
            body = RENDERERS[sid](ctx)
        except Exception as exc:  # noqa: BLE001 - one section's failure must not take the report down
            body = warn(f"This section could not be rendered: {type(exc).__name__}: {exc}")
        out[sid] = head + body
    return out
