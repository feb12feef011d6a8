"""Results of any uncertlr backend as one ArviZ ``InferenceData`` per model.

:func:`to_inference_data` accepts

* a Pyro SVI posterior: an :class:`uncertlr.torch.BNN` (weights drawn with its vectorised
  ``sample_parameters``, per-layer spread exact from its guide), a ``pyro.infer.SVI`` or any
  object with Pyro ``model`` and ``guide`` programs (weights drawn by running the guide). The
  model is then replayed on each draw (``poutine.condition``) and its observed sites give
  ``log_likelihood``, ``posterior_predictive`` and ``observed_data`` (ArviZ has no Pyro-SVI converter);
* a NumPyro MCMC run: a ``numpyro.infer.MCMC`` (or any object with an ``.mcmc`` attribute
  holding one, such as the results of ``uncertlr.jax.mcmc``), through ``arviz.from_numpyro``
  (``sample_stats`` holds ``diverging`` and, when the run recorded it with
  ``extra_fields=("energy",)``, ``energy``);
* a NumPyro SVI posterior: a ``numpyro.infer.SVI`` with ``params=svi_result.params``, or any
  object with NumPyro ``model``, ``guide`` and ``params`` (such as the results of ``uncertlr.jax.svi``);
* any object with ``.samples``, a mapping ``{site: draws[S, ...]}`` (such as an SVI result
  that does not expose its model): the ``posterior`` group only;
* a training history (a list of ``{step, loss, lr, signal?, scale?, ...}`` records): its own
  group ``training_history`` (dimension ``step``), alone or added with ``history=``.

Groups and dimensions. ``posterior``: the weights, dims ``(chain, draw, ...)`` (SVI: one
chain). For large networks only a bounded subset is kept: a parameter with more than
``max_weights`` elements is flattened and ``max_weights`` evenly spaced elements are kept
(``np.linspace(0, size - 1, max_weights)`` rounded), with dimension ``<name>_index`` whose
coordinate is the flat index into the parameter; smaller parameters are kept whole.
``layer_spread`` (dimension ``layer``) holds per-layer summaries of the *whole* posterior:
``mean_scale`` (mean σ), ``mean_snr`` (mean ``|μ|/σ``) and ``size`` — exact from the guide for
an uncertlr BNN, from the draws otherwise. ``log_likelihood`` and ``posterior_predictive`` hold
one variable per observed site (dimension names from its plates, e.g. ``data``), and
``posterior_predictive`` also the predictive quantities :data:`PREDICTIVE_QUANTITIES`, scalars
per draw whose R-hat/ESS are free of the permutation symmetry that inflates weight R-hat:
``mean_log_likelihood`` (mean over data points of ``log p(y_n | w)``) and ``mean_entropy`` (mean
over data points of the entropy of ``p(· | x_n, w)``).

This module dispatches; the converters are one per library, as in ArviZ
(:mod:`uncertlr.diagnostics._pyro`, :mod:`uncertlr.diagnostics._numpyro`), and the
library-neutral assembly of the groups is :mod:`uncertlr.diagnostics._dataset`.

Example:
    >>> import torch
    >>> from uncertlr.torch import bayesian
    >>> from uncertlr.diagnostics import to_inference_data
    >>> bnn = bayesian(torch.nn.Linear(3, 2), num_data=8)
    >>> x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    >>> idata = to_inference_data(bnn, x=x, y=y, num_samples=20)
    >>> dict(idata.posterior["weight"].sizes), dict(idata.log_likelihood["obs"].sizes)
    ({'chain': 1, 'draw': 20, 'weight_dim_0': 2, 'weight_dim_1': 3}, {'chain': 1, 'draw': 20, 'data': 8})
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from uncertlr.diagnostics._arviz import az
from uncertlr.diagnostics._dataset import (
    ATTR_KIND,
    ATTR_MODEL,
    ATTR_SPREAD,
    ATTR_SUBSET,
    HISTORY_GROUP,
    MAX_WEIGHTS,
    PREDICTIVE_QUANTITIES,
    SPREAD_GROUP,
    from_samples,
    get_attr,
    groups,
    history_dataset,
    set_attrs,
)
from uncertlr.diagnostics._numpyro import from_numpyro_mcmc, from_numpyro_svi
from uncertlr.diagnostics._pyro import from_pyro

__all__ = [
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
]


# --------------------------------------------------------------------------- public entry point


def to_inference_data(
    result: Any,
    *,
    x: Any = None,
    y: Any = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    num_samples: int = 100,
    max_weights: int | None = MAX_WEIGHTS,
    history: Sequence[Mapping[str, Any]] | None = None,
    name: str | None = None,
    rng_seed: int = 0,
) -> Any:
    """Convert a posterior (Pyro SVI, NumPyro MCMC or SVI) or a training history to ``InferenceData``.

    Args:
        result: see the module docstring for what is accepted; an ``InferenceData`` is
            passed through (``history`` and ``name`` are still added).
        x, y: data for the predictive groups; shorthand for ``args=(x,), kwargs={"y": y}``
            (the signature of ``BNN.model`` and of most NumPyro models). Without data a
            Pyro posterior has no predictive groups and an MCMC run uses its own
            training data.
        args, kwargs: positional and keyword arguments of the model and guide.
        params: the NumPyro SVI parameters (``svi_result.params``) when ``result`` is a ``numpyro.infer.SVI``.
        num_samples: posterior draws for SVI posteriors (MCMC keeps its own draws).
        max_weights: most elements kept per parameter in ``posterior`` (None keeps all).
        history: training records ``[{step, loss, lr, ...}]`` for the ``training_history`` group.
        name: model name, recorded in the groups' attributes (``uncertlr_model``).
        rng_seed: seed of the posterior and predictive draws (the global RNG state is left alone).

    Returns:
        ``arviz.InferenceData`` with dims ``(chain, draw, ...)`` in every sampled group.
    """
    if max_weights is not None and max_weights < 1:
        raise ValueError(f"max_weights must be >= 1 or None; got {max_weights}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1; got {num_samples}")
    if x is not None:
        if args:
            raise ValueError("pass the data either as x/y or as args/kwargs, not both")
        args = (x,)
        kwargs = {**(kwargs or {}), **({"y": y} if y is not None else {})}
    elif y is not None:
        raise ValueError("y was given without x")
    kwargs = dict(kwargs or {})
    opts: dict[str, Any] = dict(num_samples=num_samples, max_weights=max_weights, rng_seed=rng_seed)

    kind = _result_kind(result)
    if kind == "idata":
        idata = result
    elif kind == "history":
        idata = az.InferenceData(**{HISTORY_GROUP: history_dataset(result)})
        set_attrs(idata, {ATTR_KIND: "history"})
    elif kind == "numpyro-mcmc":
        idata = from_numpyro_mcmc(getattr(result, "mcmc", result), tuple(args), kwargs, **opts)
    elif kind == "numpyro-svi":
        p = params if params is not None else getattr(result, "params", None)
        if p is None:
            raise ValueError("a NumPyro SVI posterior needs its parameters: pass params=svi_result.params")
        idata = from_numpyro_svi(result.model, result.guide, p, tuple(args), kwargs, **opts)
    elif kind == "samples":
        idata = from_samples(result.samples, max_weights=max_weights)
    else:
        spread = result.posterior_spread() if callable(getattr(result, "posterior_spread", None)) else None
        sampler = getattr(result, "sample_parameters", None) if spread is not None else None
        idata = from_pyro(
            result.model,
            result.guide,
            tuple(args),
            kwargs,
            spread=spread,
            sample_parameters=sampler if callable(sampler) else None,
            **opts,
        )
    if history is not None:
        add_history(idata, history)
    if name is not None:
        set_attrs(idata, {ATTR_MODEL: str(name)})
    return idata


def _result_kind(result: Any) -> str:
    if isinstance(result, az.InferenceData):
        return "idata"
    if isinstance(result, (list, tuple)) and all(isinstance(r, Mapping) for r in result):
        return "history"
    inner = getattr(result, "mcmc", None)
    for obj in (result, inner):
        if obj is not None and type(obj).__name__ == "MCMC" and type(obj).__module__.startswith("numpyro"):
            return "numpyro-mcmc"
    if hasattr(result, "model") and hasattr(result, "guide"):
        if type(result).__module__.startswith("numpyro") or hasattr(result, "params"):
            return "numpyro-svi"
        return "pyro"
    if isinstance(getattr(result, "samples", None), Mapping) and result.samples:
        return "samples"
    raise TypeError(
        "to_inference_data accepts an uncertlr BNN or Pyro SVI (model + guide), a numpyro.infer.MCMC "
        "(or an object with .mcmc), a NumPyro SVI (model + guide + params), an object with .samples "
        "({site: draws[S, ...]}), a list of history records "
        f"or an arviz.InferenceData; got {type(result).__name__}"
    )


# --------------------------------------------------------------------------- attributes


def model_name(idata: Any) -> str | None:
    """The model name recorded by :func:`to_inference_data` (``name=``), or None."""
    value = get_attr(idata, ATTR_MODEL)
    return None if value is None else str(value)


def inference_kind(idata: Any) -> str:
    """``"mcmc"``, ``"svi"``, ``"history"`` (history only) or ``"unknown"``.

    Data not written by uncertlr count as MCMC when ``sample_stats`` has ``diverging``.
    """
    kind = get_attr(idata, ATTR_KIND)
    if kind is not None:
        return str(kind)
    if "sample_stats" in idata.groups() and "diverging" in idata.sample_stats:
        return "mcmc"
    return "unknown"


def weight_subset(idata: Any) -> dict[str, dict[str, int]]:
    """Per parameter: ``{"size": elements in the network, "kept": elements in posterior}``."""
    raw = get_attr(idata, ATTR_SUBSET)
    return json.loads(raw) if raw else {}


def spread_source(idata: Any) -> str | None:
    """Where ``layer_spread`` came from: ``"guide"`` (exact) or ``"draws"``."""
    value = get_attr(idata, ATTR_SPREAD)
    return None if value is None else str(value)


# --------------------------------------------------------------------------- history


def add_history(idata: Any, records: Sequence[Mapping[str, Any]]) -> Any:
    """Add (or replace) the ``training_history`` group of ``idata`` in place; returns ``idata``."""
    ds = history_dataset(records)
    if HISTORY_GROUP in idata.groups():
        setattr(idata, HISTORY_GROUP, ds)
    else:
        idata.add_groups({HISTORY_GROUP: ds})
    attrs = {k: v for k, v in (_first_attrs(idata) or {}).items() if k.startswith("uncertlr_")}
    getattr(idata, HISTORY_GROUP).attrs.update(attrs)
    return idata


def _first_attrs(idata: Any) -> Mapping[str, Any] | None:
    for ds in groups(idata):
        if ds.attrs:
            return ds.attrs
    return None
