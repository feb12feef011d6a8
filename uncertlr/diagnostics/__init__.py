"""Diagnostics: ArviZ ``InferenceData`` for every backend, and a self-contained HTML report per run.

Needs the ``report`` extra (ArviZ 0.23.x): ``pip install 'uncertlr[report]'``. Every
ArviZ call of uncertlr lives in this package.

* :func:`to_inference_data` — a Pyro SVI BNN, a NumPyro MCMC or SVI result, or a training
  history as ``InferenceData`` (weights, or a bounded subset of them for big networks,
  per-layer spread, posterior predictive, log-likelihood, sample stats, history);
* :func:`summarize` / :func:`convergence_warnings` — ``arviz.summary`` on predictive
  quantities and weights, divergences, energy BFMI, plain-language warnings;
* :func:`report` — ``report.html``, ``posterior-<model>.nc`` and ``summary.json`` in a run
  folder (also ``uncertlr report RUN_DIR``).

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
from uncertlr.diagnostics.report import SECTIONS, load_posteriors, posterior_filename, report
from uncertlr.diagnostics.summary import RHAT_THRESHOLD, convergence_warnings, summarize

__all__ = [
    "HISTORY_GROUP",
    "MAX_WEIGHTS",
    "PREDICTIVE_QUANTITIES",
    "RHAT_THRESHOLD",
    "SECTIONS",
    "SPREAD_GROUP",
    "add_history",
    "convergence_warnings",
    "history_dataset",
    "inference_kind",
    "load_posteriors",
    "model_name",
    "posterior_filename",
    "report",
    "spread_source",
    "summarize",
    "to_inference_data",
    "weight_subset",
]
