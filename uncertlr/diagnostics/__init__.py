"""Diagnostics: every figure, ArviZ ``InferenceData`` for every backend, and a self-contained HTML report per run.

The figures (:mod:`uncertlr.diagnostics.plots`) need only matplotlib and are imported with
the package. Everything else needs the ``report`` extra (ArviZ 0.23.x), ``pip install
'uncertlr[report]'``: those names are imported on first use, and without ArviZ using one
raises an ImportError that says how to install it. Every ArviZ call of uncertlr lives in
this package.

* :func:`to_inference_data` — a Pyro SVI BNN, a NumPyro MCMC or SVI result, or a training
  history as ``InferenceData`` (weights, or a bounded subset of them for big networks,
  per-layer spread, posterior predictive, log-likelihood, sample stats, history);
* :func:`summarize` / :func:`convergence_warnings` — ``arviz.summary`` on predictive
  quantities and weights, divergences, energy BFMI, plain-language warnings;
* :func:`report` — ``report.html``, ``posterior-<model>.nc`` and ``summary.json`` in a run
  folder (also ``uncertlr report RUN_DIR``);
* :func:`reliability_figure`, :func:`ood_figure`, :func:`training_curves`,
  :func:`layer_spread_plot`, :func:`rank_plot`, :func:`energy_plot`... — every figure, see
  :mod:`uncertlr.diagnostics.plots`.

Example:
    >>> import torch
    >>> from uncertlr.torch import bayesian
    >>> from uncertlr.diagnostics import summarize, to_inference_data
    >>> bnn = bayesian(torch.nn.Linear(3, 2), num_data=8)
    >>> idata = to_inference_data(bnn, x=torch.randn(8, 3), y=torch.randint(0, 2, (8,)), num_samples=30)
    >>> sorted(idata.groups())
    ['layer_spread', 'log_likelihood', 'observed_data', 'posterior', 'posterior_predictive']
    >>> sorted(summarize(idata)["predictive"])
    ['mean_entropy', 'mean_log_likelihood']
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from uncertlr.diagnostics.plots import (
    CURVES,
    energy_plot,
    figure_png,
    layer_spread_plot,
    ood_figure,
    rank_plot,
    reliability_diagram,
    reliability_figure,
    save_figure,
    select_series,
    training_curves,
    uncertainty_histograms,
)

if TYPE_CHECKING:  # the names below are imported on first use (they need ArviZ)
    from uncertlr.diagnostics._report import SECTIONS, load_posteriors, posterior_filename, report
    from uncertlr.diagnostics.convert import (
        HISTORY_GROUP,
        MAX_WEIGHTS,
        PREDICTIVE_QUANTITIES,
        SPREAD_GROUP,
        add_history,
        history_dataset,
        inference_kind,
        model_name,
        spread_source,
        to_inference_data,
        weight_subset,
    )
    from uncertlr.diagnostics.summary import RHAT_THRESHOLD, convergence_warnings, summarize

#: The public names that need ArviZ, and the submodule defining each.
_ARVIZ_NAMES = {
    **dict.fromkeys(
        (
            "HISTORY_GROUP",
            "MAX_WEIGHTS",
            "PREDICTIVE_QUANTITIES",
            "SPREAD_GROUP",
            "add_history",
            "history_dataset",
            "inference_kind",
            "model_name",
            "spread_source",
            "to_inference_data",
            "weight_subset",
        ),
        "convert",
    ),
    **dict.fromkeys(("RHAT_THRESHOLD", "convergence_warnings", "summarize"), "summary"),
    **dict.fromkeys(("SECTIONS", "load_posteriors", "posterior_filename", "report"), "_report"),
}

__all__ = [
    "CURVES",
    "HISTORY_GROUP",
    "MAX_WEIGHTS",
    "PREDICTIVE_QUANTITIES",
    "RHAT_THRESHOLD",
    "SECTIONS",
    "SPREAD_GROUP",
    "add_history",
    "convergence_warnings",
    "energy_plot",
    "figure_png",
    "history_dataset",
    "inference_kind",
    "layer_spread_plot",
    "load_posteriors",
    "model_name",
    "ood_figure",
    "posterior_filename",
    "rank_plot",
    "reliability_diagram",
    "reliability_figure",
    "report",
    "save_figure",
    "select_series",
    "spread_source",
    "summarize",
    "to_inference_data",
    "training_curves",
    "uncertainty_histograms",
    "weight_subset",
]


def __getattr__(name: str) -> Any:
    """Import an ArviZ-backed name on first use (PEP 562); without ArviZ, the ImportError of ``_arviz``."""
    module = _ARVIZ_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups find it without this hook
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_ARVIZ_NAMES})
