"""Convergence diagnostics of one ``InferenceData``: ``arviz.summary``, divergences, energy, warnings.

:func:`summarize` returns plain JSON-ready data (what ``summary.json`` holds per model);
:func:`convergence_warnings` turns it into plain-language warnings. R-hat, ESS and MCSE
are ArviZ's (rank-normalised split R-hat, bulk and tail ESS), computed on the predictive
quantities (``mean_log_likelihood``, ``mean_entropy``) and on the kept weights: weight R-hat
is inflated by the permutation symmetry of neural networks, the predictive quantities are not.

Example:
    >>> import numpy as np
    >>> from uncertlr.diagnostics import summarize, convergence_warnings, to_inference_data
    >>> from uncertlr.diagnostics._arviz import az
    >>> rng = np.random.default_rng(0)
    >>> draws = rng.normal(size=(2, 200)); draws[1] += 3.0      # two chains that disagree
    >>> idata = az.from_dict(posterior={"w": draws}, sample_stats={"diverging": np.zeros((2, 200), bool)})
    >>> s = summarize(idata)
    >>> s["weights"]["w"]["r_hat"] > 1.01, s["divergences"]
    (True, 0)
    >>> convergence_warnings(s)[0][:40]
    'R-hat is above 1.01 for 1 of 1 quantity '
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from uncertlr.diagnostics._arviz import az
from uncertlr.diagnostics.convert import (
    PREDICTIVE_QUANTITIES,
    SPREAD_GROUP,
    inference_kind,
    model_name,
    spread_source,
    weight_subset,
)

__all__ = ["BFMI_THRESHOLD", "RHAT_THRESHOLD", "convergence_warnings", "summarize"]

#: R-hat above this is reported as a failure to converge (Vehtari et al., 2021).
RHAT_THRESHOLD = 1.01
#: Energy Bayesian fraction of missing information below this is reported (Betancourt, 2016).
BFMI_THRESHOLD = 0.3

_COLUMNS = ("mean", "sd", "mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "r_hat")


def _table(
    idata: Any, group: str, var_names: list[str], kind: Literal["all", "stats"]
) -> dict[str, dict[str, float | None]]:
    if not var_names:
        return {}
    df = az.summary(idata, group=group, var_names=var_names, kind=kind, round_to="none")
    cols = [c for c in df.columns if c in _COLUMNS]
    return {str(label): {c: _float(row[c]) for c in cols} for label, row in df.iterrows()}


def _float(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def summarize(idata: Any) -> dict[str, Any]:
    """Diagnostics of one model's ``InferenceData`` as JSON-ready data.

    Returns:
        ``{"model", "inference", "chains", "draws", "divergences", "energy_recorded",
        "bfmi", "predictive": {label: stats}, "weights": {label: stats},
        "weight_subset", "layer_spread": {layer: {mean_scale, mean_snr, size}}, "spread_source",
        "warnings": [str]}``, where ``stats`` is ``arviz.summary``'s ``mean, sd, mcse_mean,
        mcse_sd, ess_bulk, ess_tail, r_hat`` for MCMC and ``mean, sd`` otherwise (R-hat needs
        several chains of a Markov chain; SVI draws are independent). Undefined numbers are None.
    """
    kind = inference_kind(idata)
    groups = idata.groups()
    out: dict[str, Any] = {"model": model_name(idata), "inference": kind}
    if "posterior" in groups:
        post = idata.posterior
        out["chains"], out["draws"] = int(post.sizes["chain"]), int(post.sizes["draw"])
    stats_kind: Literal["all", "stats"] = "all" if kind == "mcmc" else "stats"
    pred_vars: list[str] = []
    if "posterior_predictive" in groups:
        pred_vars = [q for q in PREDICTIVE_QUANTITIES if q in idata.posterior_predictive]
    out["predictive"] = _table(idata, "posterior_predictive", pred_vars, stats_kind)
    weight_vars = [str(v) for v in idata.posterior.data_vars] if "posterior" in groups else []
    out["weights"] = _table(idata, "posterior", weight_vars, stats_kind)
    ss = idata.sample_stats if "sample_stats" in groups else None
    out["divergences"] = (
        int(np.asarray(ss["diverging"]).sum()) if ss is not None and "diverging" in ss else None
    )
    out["energy_recorded"] = bool(ss is not None and "energy" in ss)
    out["bfmi"] = [_float(b) for b in np.atleast_1d(az.bfmi(idata))] if out["energy_recorded"] else None
    out["weight_subset"] = weight_subset(idata)
    out["layer_spread"] = {}
    if SPREAD_GROUP in groups:
        ds = getattr(idata, SPREAD_GROUP)
        for i, layer in enumerate(ds["layer"].values):
            out["layer_spread"][str(layer)] = {
                "mean_scale": _float(ds["mean_scale"].values[i]),
                "mean_snr": _float(ds["mean_snr"].values[i]),
                "size": int(ds["size"].values[i]),
            }
    out["spread_source"] = spread_source(idata)
    out["warnings"] = convergence_warnings(out)
    return out


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def convergence_warnings(summary: dict[str, Any]) -> list[str]:
    """Plain-language warnings for a :func:`summarize` result: R-hat > 1.01, divergences, low BFMI.

    Returns an empty list when nothing is wrong (or nothing can be checked, as for SVI).
    """
    warnings: list[str] = []
    chains, draws = summary.get("chains") or 0, summary.get("draws") or 0
    div = summary.get("divergences")
    if div:
        total = chains * draws
        share = f" ({100 * div / total:.1f}% of {total})" if total else ""
        warnings.append(
            f"{_plural(div, 'MCMC transition')} diverged{share}. The sampler could not follow the posterior's "
            "geometry there, so these draws may be biased and the uncertainty may be wrong. Raise "
            "target_accept_prob (e.g. 0.95), reparameterise the model, or use tighter priors, and run again."
        )
    rows = {**summary.get("predictive", {}), **summary.get("weights", {})}
    bad = {
        k: r["r_hat"] for k, r in rows.items() if r.get("r_hat") is not None and r["r_hat"] > RHAT_THRESHOLD
    }
    if bad:
        worst = max(bad, key=lambda k: bad[k])
        pred_bad = [k for k in bad if k in summary.get("predictive", {})]
        what = (
            "the predictive quantities too, so the chains disagree about the model's predictions"
            if pred_bad
            else "weights only; the predictive quantities look converged. Weight R-hat is inflated when "
            "chains settle in different but equivalent (permuted) modes, so check the predictive quantities first"
        )
        warnings.append(
            f"R-hat is above {RHAT_THRESHOLD} for {len(bad)} of {len(rows)} {'quantity' if len(rows) == 1 else 'quantities'} "
            f"(largest {bad[worst]:.3f}, for {worst}): the chains have not converged to the same "
            f"distribution. This affects {what}. Run more warm-up and more draws, or more chains, "
            "before trusting these results."
        )
    bfmi = [b for b in (summary.get("bfmi") or []) if b is not None and b < BFMI_THRESHOLD]
    if bfmi:
        warnings.append(
            f"The energy BFMI is below {BFMI_THRESHOLD} in {_plural(len(bfmi), 'chain')} (lowest {min(bfmi):.2f}): "
            "the sampler explores the posterior's tails poorly. A reparameterisation usually helps."
        )
    return warnings
