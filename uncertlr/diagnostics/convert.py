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
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from uncertlr.diagnostics._arviz import az, xr
from uncertlr.metrics import layer_spread

__all__ = [
    "HISTORY_GROUP",
    "MAX_WEIGHTS",
    "PREDICTIVE_QUANTITIES",
    "SPREAD_GROUP",
    "add_history",
    "history_dataset",
    "inference_kind",
    "model_name",
    "to_inference_data",
]

#: Default bound on the elements kept per parameter in the ``posterior`` group.
MAX_WEIGHTS = 32
#: Scalar predictive quantities per draw, stored in ``posterior_predictive``.
PREDICTIVE_QUANTITIES = ("mean_log_likelihood", "mean_entropy")
#: Group holding the training history.
HISTORY_GROUP = "training_history"
#: Group holding the per-layer posterior spread.
SPREAD_GROUP = "layer_spread"

_ATTR_MODEL = "uncertlr_model"
_ATTR_KIND = "uncertlr_inference"
_ATTR_SUBSET = "uncertlr_weight_subset"
_ATTR_SPREAD = "uncertlr_spread_source"


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
    opts = dict(num_samples=num_samples, max_weights=max_weights, rng_seed=rng_seed)

    kind = _result_kind(result)
    if kind == "idata":
        idata = result
    elif kind == "history":
        idata = az.InferenceData(**{HISTORY_GROUP: history_dataset(result)})
        _set_attrs(idata, {_ATTR_KIND: "history"})
    elif kind == "numpyro-mcmc":
        idata = _from_numpyro_mcmc(getattr(result, "mcmc", result), tuple(args), kwargs, **opts)
    elif kind == "numpyro-svi":
        p = params if params is not None else getattr(result, "params", None)
        if p is None:
            raise ValueError("a NumPyro SVI posterior needs its parameters: pass params=svi_result.params")
        idata = _from_numpyro_svi(result.model, result.guide, p, tuple(args), kwargs, **opts)
    elif kind == "samples":
        idata = _from_samples(result.samples, max_weights=max_weights)
    else:
        spread = result.posterior_spread() if callable(getattr(result, "posterior_spread", None)) else None
        sampler = getattr(result, "sample_parameters", None) if spread is not None else None
        idata = _from_pyro(
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
        _set_attrs(idata, {_ATTR_MODEL: str(name)})
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


def _groups(idata: Any) -> list[Any]:
    return [getattr(idata, g) for g in idata.groups()]


def _set_attrs(idata: Any, attrs: Mapping[str, Any]) -> None:
    for ds in _groups(idata):
        ds.attrs.update(attrs)


def _get_attr(idata: Any, key: str) -> Any:
    for ds in _groups(idata):
        if key in ds.attrs:
            return ds.attrs[key]
    return None


def model_name(idata: Any) -> str | None:
    """The model name recorded by :func:`to_inference_data` (``name=``), or None."""
    value = _get_attr(idata, _ATTR_MODEL)
    return None if value is None else str(value)


def inference_kind(idata: Any) -> str:
    """``"mcmc"``, ``"svi"``, ``"history"`` (history only) or ``"unknown"``.

    Data not written by uncertlr count as MCMC when ``sample_stats`` has ``diverging``.
    """
    kind = _get_attr(idata, _ATTR_KIND)
    if kind is not None:
        return str(kind)
    if "sample_stats" in idata.groups() and "diverging" in idata.sample_stats:
        return "mcmc"
    return "unknown"


def weight_subset(idata: Any) -> dict[str, dict[str, int]]:
    """Per parameter: ``{"size": elements in the network, "kept": elements in posterior}``."""
    raw = _get_attr(idata, _ATTR_SUBSET)
    return json.loads(raw) if raw else {}


def spread_source(idata: Any) -> str | None:
    """Where ``layer_spread`` came from: ``"guide"`` (exact) or ``"draws"``."""
    value = _get_attr(idata, _ATTR_SPREAD)
    return None if value is None else str(value)


# --------------------------------------------------------------------------- history


def history_dataset(records: Sequence[Mapping[str, Any]]) -> Any:
    """Training records ``[{step, epoch, loss, lr, nll?, kl?, signal?, scale?}, ...]`` as an ``xarray.Dataset``.

    One variable per numeric key (missing or non-numeric entries become NaN), along
    dimension ``step`` whose coordinate is the records' ``step`` when present, strictly
    increasing, else ``0 .. len - 1``.

    Example:
        >>> ds = history_dataset([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "lr": 0.1}])
        >>> list(ds.data_vars), ds["lr"].values.tolist()
        (['loss', 'lr'], [nan, 0.1])
    """
    if isinstance(records, Mapping) or not all(isinstance(r, Mapping) for r in records):
        raise TypeError(
            "a training history must be a list of records (dicts such as {'step': 1, 'loss': 0.5})"
        )
    keys: list[str] = []
    for r in records:
        for k, v in r.items():
            if k not in keys and _is_number(v):
                keys.append(str(k))
    n = len(records)
    steps = np.arange(n)
    if "step" in keys:
        s = np.array([_num(r.get("step")) for r in records])
        if np.all(np.isfinite(s)) and (n < 2 or np.all(np.diff(s) > 0)):
            steps = s.astype(np.int64)
    data = {
        k: ("step", np.array([_num(r.get(k)) for r in records], dtype=np.float64))
        for k in keys
        if k != "step"
    }
    return xr.Dataset(data, coords={"step": steps})


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _num(v: Any) -> float:
    return float(v) if _is_number(v) else math.nan


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
    for ds in _groups(idata):
        if ds.attrs:
            return ds.attrs
    return None


# --------------------------------------------------------------------------- shared pieces


class _Subset:
    """Which elements of one parameter the ``posterior`` group keeps."""

    def __init__(self, name: str, shape: tuple[int, ...], max_weights: int | None):
        self.name, self.shape = name, tuple(int(s) for s in shape)
        self.size = math.prod(self.shape)
        if max_weights is None or self.size <= max_weights:
            self.index = None
            self.dims = [f"{name}_dim_{i}" for i in range(len(self.shape))]
            self.kept = self.size
        else:
            self.index = np.unique(np.linspace(0, self.size - 1, max_weights).round().astype(np.int64))
            self.dims = [f"{name}_index"]
            self.kept = len(self.index)

    def take(self, draws: np.ndarray) -> np.ndarray:
        """``draws[..., *shape]`` (any leading axes) -> the kept elements."""
        if self.index is None:
            return draws
        lead = draws.shape[: draws.ndim - len(self.shape)]
        return draws.reshape(*lead, self.size)[..., self.index]

    @property
    def coords(self) -> dict[str, np.ndarray]:
        return {} if self.index is None else {self.dims[0]: self.index}


def _spread_from_draws(draws: Mapping[str, np.ndarray], sample_axes: int) -> dict[str, Any]:
    """Per-layer spread from draws ``{name: [*sample axes, *shape]}`` (sites with a zero std are left out)."""
    loc, scale = {}, {}
    for n, v in draws.items():
        v = np.asarray(v, dtype=np.float64)
        flat = v.reshape(-1, *v.shape[sample_axes:])
        if flat.shape[0] < 2:
            continue
        sd = flat.std(axis=0, ddof=1)
        if np.all(sd > 0) and np.all(np.isfinite(sd)):
            loc[n], scale[n] = flat.mean(axis=0), sd
    return layer_spread(loc, scale) if loc else {}


def _spread_dataset(spread: Mapping[str, Any]) -> Any:
    layers = list(spread)
    return xr.Dataset(
        {
            "mean_scale": ("layer", np.array([float(spread[k].mean_scale) for k in layers])),
            "mean_snr": ("layer", np.array([float(spread[k].mean_snr) for k in layers])),
            "size": ("layer", np.array([int(spread[k].size) for k in layers], dtype=np.int64)),
        },
        coords={"layer": np.array(layers, dtype=object) if layers else np.array([], dtype=str)},
    )


def _site_dims(name: str, ndim: int, batch_ndim: int, frames: Sequence[Any]) -> list[str]:
    """Dimension names of an observed site's value: plate names where plates sit, defaults elsewhere."""
    dims = [f"{name}_dim_{i}" for i in range(ndim)]
    for f in frames:
        dim = getattr(f, "dim", None)
        if dim is not None and -batch_ndim <= dim < 0 and getattr(f, "name", None):
            dims[batch_ndim + dim] = str(f.name)
    return dims


def _assemble(
    posterior: dict[str, np.ndarray],
    subsets: Mapping[str, _Subset],
    predictive: dict[str, Any] | None,
    *,
    spread: Mapping[str, Any],
    spread_from: str,
    kind: str,
    base: Any = None,
) -> Any:
    """Build the InferenceData from draws ``[chain, draw, ...]`` (already subset) and predictive pieces."""
    coords: dict[str, Any] = {}
    dims: dict[str, list[str]] = {}
    for n, sub in subsets.items():
        coords.update(sub.coords)
        dims[n] = sub.dims
    groups: dict[str, Any] = {}
    if base is None:
        groups["posterior"] = az.from_dict(posterior=posterior, coords=coords, dims=dims).posterior
    else:
        groups.update({g: getattr(base, g) for g in base.groups() if g != "observed_data"})
        groups["posterior"] = _subset_dataset(base.posterior, subsets)
    if predictive is not None:
        pd = predictive
        # log-likelihoods have the sites' batch dims only (no event dims): their own dims
        ll_dims = {n: pd["dims"][n][: np.ndim(v) - 2] for n, v in pd["ll"].items()}
        groups["posterior_predictive"] = az.from_dict(
            posterior_predictive=pd["pp"], dims=pd["dims"]
        ).posterior_predictive
        if pd["ll"]:
            groups["log_likelihood"] = az.from_dict(log_likelihood=pd["ll"], dims=ll_dims).log_likelihood
        if pd["observed"]:
            groups["observed_data"] = az.from_dict(
                observed_data=pd["observed"], dims=pd["dims"]
            ).observed_data
    groups[SPREAD_GROUP] = _spread_dataset(spread)
    idata = az.InferenceData(**groups)
    subset_info = {n: {"size": s.size, "kept": s.kept} for n, s in subsets.items()}
    _set_attrs(idata, {_ATTR_KIND: kind, _ATTR_SUBSET: json.dumps(subset_info), _ATTR_SPREAD: spread_from})
    return idata


def _subset_dataset(ds: Any, subsets: Mapping[str, _Subset]) -> Any:
    out = {}
    for n, da in ds.data_vars.items():
        sub = subsets.get(str(n))
        if sub is None or sub.index is None:
            out[n] = da
            continue
        vals = sub.take(np.asarray(da.values))
        out[n] = xr.DataArray(
            vals,
            dims=("chain", "draw", sub.dims[0]),
            coords={"chain": da["chain"], "draw": da["draw"], sub.dims[0]: sub.index},
        )
    return xr.Dataset(out, attrs=dict(ds.attrs))


def _quantities(
    ll_sum: np.ndarray, ll_count: int, h_sum: np.ndarray | None, h_count: int
) -> dict[str, np.ndarray]:
    q = {}
    if ll_count:
        q["mean_log_likelihood"] = ll_sum / ll_count
    if h_sum is not None and h_count:
        q["mean_entropy"] = h_sum / h_count
    return q


# --------------------------------------------------------------------------- Pyro SVI


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def _from_pyro(
    model: Any,
    guide: Any,
    args: tuple,
    kwargs: dict,
    *,
    num_samples: int,
    max_weights: int | None,
    rng_seed: int,
    spread: Mapping[str, Any] | None,
    sample_parameters: Any = None,
) -> Any:
    """Draws from the guide (``sample_parameters(S)`` when the result has it), then the model replayed on each."""
    import torch
    from pyro import poutine
    from pyro.poutine.util import site_is_subsample

    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(rng_seed)
        if sample_parameters is not None:  # an uncertlr BNN: one vectorised draw of every random parameter
            draws = {n: _np(v) for n, v in sample_parameters(num_samples).items()}
        else:
            if not args and not kwargs:
                raise ValueError(
                    "a Pyro model and guide need their data to draw from the guide: pass x= (and y=)"
                )
            per_draw: dict[str, list[np.ndarray]] = {}
            for _ in range(num_samples):
                gtr = poutine.trace(guide).get_trace(*args, **kwargs)
                for n, site in gtr.nodes.items():
                    if (
                        site["type"] == "sample"
                        and not site["is_observed"]
                        and not site_is_subsample(site)
                        and not site["infer"].get("is_auxiliary")
                    ):
                        per_draw.setdefault(n, []).append(_np(site["value"]))
            draws = {n: np.stack(v) for n, v in per_draw.items()}
        if not draws:
            raise ValueError("the guide has no latent sample sites: nothing to convert")
        predictive = None
        if args or kwargs:
            predictive = _pyro_predictive(model, draws, args, kwargs, num_samples, poutine, site_is_subsample)
    if predictive is not None:  # guide sites the model does not sample (e.g. auxiliary ones) are not weights
        latent = predictive.pop("latent")
        draws = {n: v for n, v in draws.items() if n in latent}
    subsets = {n: _Subset(n, v.shape[1:], max_weights) for n, v in draws.items()}
    posterior = {n: subsets[n].take(v)[None] for n, v in draws.items()}
    if spread is None:
        spread_from = "draws"
        spread = _spread_from_draws(draws, sample_axes=1)
    else:
        spread_from = "guide"
    return _assemble(posterior, subsets, predictive, spread=spread, spread_from=spread_from, kind="svi")


def _pyro_predictive(
    model: Any,
    draws: Mapping[str, np.ndarray],
    args: tuple,
    kwargs: dict,
    num_samples: int,
    poutine: Any,
    site_is_subsample: Any,
) -> dict[str, Any] | None:
    """Replay ``model`` on each draw: log-likelihood and posterior predictive of its other sample sites."""
    import torch

    ll: dict[str, list[np.ndarray]] = {}
    pp: dict[str, list[np.ndarray]] = {}
    observed: dict[str, np.ndarray] = {}
    site_dims: dict[str, list[str]] = {}
    latent: set[str] = set()
    ll_sum, h_sum = np.zeros(num_samples), np.zeros(num_samples)
    ll_count = h_count = 0
    has_entropy = True
    for s in range(num_samples):
        data = {n: torch.as_tensor(v[s]) for n, v in draws.items()}
        mtr = poutine.trace(poutine.condition(model, data=data)).get_trace(*args, **kwargs)
        n_ll = n_h = 0
        for n, site in mtr.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if n in data:
                latent.add(n)
                continue
            fn = site["fn"]
            if n not in site_dims:
                site_dims[n] = _site_dims(
                    n, _np(site["value"]).ndim, len(fn.batch_shape), site["cond_indep_stack"]
                )
            if site["is_observed"]:
                lp = _np(fn.log_prob(site["value"]))
                ll.setdefault(n, []).append(lp)
                ll_sum[s] += lp.sum()
                n_ll += lp.size
                pp.setdefault(n, []).append(_np(fn.sample()))
                observed[n] = _np(site["value"])
            else:
                pp.setdefault(n, []).append(_np(site["value"]))
            if has_entropy:
                try:
                    h = _np(fn.entropy())
                except (NotImplementedError, AttributeError):
                    has_entropy = False
                else:
                    h_sum[s] += h.sum()
                    n_h += h.size
        ll_count, h_count = n_ll, n_h
    if not pp:
        return None
    pred = {n: np.stack(v)[None] for n, v in pp.items()}
    pred.update(
        {
            k: v[None]
            for k, v in _quantities(ll_sum, ll_count, h_sum if has_entropy else None, h_count).items()
        }
    )
    return {
        "pp": pred,
        "ll": {n: np.stack(v)[None] for n, v in ll.items()},
        "observed": observed,
        "dims": site_dims,
        "latent": latent,
    }


# --------------------------------------------------------------------------- NumPyro


def _numpyro_predictive(
    model: Any, samples: Mapping[str, Any], args: tuple, kwargs: dict, rng_seed: int
) -> dict | None:
    """Log-likelihood, posterior predictive and predictive quantities for draws ``{site: [chain, draw, ...]}``."""
    import jax
    import jax.numpy as jnp
    from numpyro import handlers

    first = next(iter(samples.values()))
    nc, nd = int(first.shape[0]), int(first.shape[1])
    flat = {k: jnp.reshape(v, (nc * nd, *v.shape[2:])) for k, v in samples.items()}

    def run(sample: Mapping[str, Any], key: Any) -> Any:
        return handlers.trace(handlers.seed(handlers.substitute(model, data=sample), key)).get_trace(
            *args, **kwargs
        )

    tr0 = run({k: v[0] for k, v in flat.items()}, jax.random.PRNGKey(rng_seed))
    sites = [n for n, s in tr0.items() if s["type"] == "sample" and n not in flat]
    if not sites:
        return None
    obs_sites = [n for n in sites if tr0[n]["is_observed"]]
    entropy = True
    for n in sites:
        try:
            tr0[n]["fn"].entropy()
        except (NotImplementedError, AttributeError):
            entropy = False
    dims = {
        n: _site_dims(
            n, jnp.ndim(tr0[n]["value"]), len(tr0[n]["fn"].batch_shape), tr0[n].get("cond_indep_stack", ())
        )
        for n in sites
    }

    def one(sample: Mapping[str, Any], key: Any) -> dict[str, Any]:
        k1, k2 = jax.random.split(key)
        tr = run(sample, k1)
        out: dict[str, Any] = {}
        for n in sites:
            fn = tr[n]["fn"]
            if n in obs_sites:
                out["ll/" + n] = fn.log_prob(tr[n]["value"])
                out["pp/" + n] = fn.sample(k2)
            else:
                out["pp/" + n] = tr[n]["value"]
            if entropy:
                out["h/" + n] = fn.entropy()
        return out

    keys = jax.random.split(jax.random.PRNGKey(rng_seed + 1), nc * nd)
    res = {k: np.asarray(v) for k, v in jax.vmap(one)(flat, keys).items()}

    def shaped(v: np.ndarray) -> np.ndarray:
        return v.reshape(nc, nd, *v.shape[1:])

    ll = {n: shaped(res["ll/" + n]) for n in obs_sites}
    pp = {n: shaped(res["pp/" + n]) for n in sites}
    ll_sum = sum((v.reshape(nc, nd, -1).sum(-1) for v in ll.values()), np.zeros((nc, nd)))
    ll_count = sum(int(np.prod(v.shape[2:])) for v in ll.values())
    h_sum, h_count = None, 0
    if entropy:
        hs = [shaped(res["h/" + n]) for n in sites]
        h_sum = sum((h.reshape(nc, nd, -1).sum(-1) for h in hs), np.zeros((nc, nd)))
        h_count = sum(int(np.prod(h.shape[2:])) for h in hs)
    pp.update(_quantities(ll_sum, ll_count, h_sum, h_count))
    observed = {n: np.asarray(tr0[n]["value"]) for n in obs_sites}
    return {"pp": pp, "ll": ll, "observed": observed, "dims": dims}


def _from_numpyro_mcmc(
    mcmc: Any, args: tuple, kwargs: dict, *, num_samples: int, max_weights: int | None, rng_seed: int
) -> Any:
    del num_samples  # MCMC keeps its own draws
    base = az.from_numpyro(mcmc, log_likelihood=False)
    samples = mcmc.get_samples(group_by_chain=True)
    latent = {n: np.asarray(v) for n, v in samples.items() if n in base.posterior}
    subsets = {n: _Subset(n, v.shape[2:], max_weights) for n, v in latent.items()}
    spread = _spread_from_draws(latent, sample_axes=2)
    if not args and not kwargs:
        args, kwargs = tuple(getattr(mcmc, "_args", ())), dict(getattr(mcmc, "_kwargs", {}) or {})
    predictive = _numpyro_predictive(mcmc.sampler.model, samples, args, kwargs, rng_seed)
    return _assemble({}, subsets, predictive, spread=spread, spread_from="draws", kind="mcmc", base=base)


def _from_samples(samples: Mapping[str, Any], *, max_weights: int | None) -> Any:
    """Posterior draws ``{site: [S, ...]}`` alone (no model to replay): one chain, spread from the draws."""
    draws = {str(n): np.asarray(v) for n, v in samples.items()}
    if any(v.ndim == 0 for v in draws.values()):
        raise ValueError("samples must be {site: draws} with the draws along the first axis")
    subsets = {n: _Subset(n, v.shape[1:], max_weights) for n, v in draws.items()}
    posterior = {n: subsets[n].take(v)[None] for n, v in draws.items()}
    spread = _spread_from_draws(draws, sample_axes=1)
    return _assemble(posterior, subsets, None, spread=spread, spread_from="draws", kind="svi")


def _from_numpyro_svi(
    model: Any,
    guide: Any,
    params: Mapping[str, Any],
    args: tuple,
    kwargs: dict,
    *,
    num_samples: int,
    max_weights: int | None,
    rng_seed: int,
) -> Any:
    import jax
    from numpyro import handlers
    from numpyro.infer import Predictive

    draws = Predictive(guide, params=params, num_samples=num_samples)(
        jax.random.PRNGKey(rng_seed), *args, **kwargs
    )
    one = {k: v[0] for k, v in draws.items()}
    mtr = handlers.trace(
        handlers.seed(handlers.substitute(model, data=one), jax.random.PRNGKey(0))
    ).get_trace(*args, **kwargs)
    latent = [n for n, s in mtr.items() if s["type"] == "sample" and not s["is_observed"] and n in draws]
    if not latent:
        raise ValueError("the guide samples none of the model's latent sites: nothing to convert")
    full = {n: np.asarray(draws[n])[None] for n in latent}
    subsets = {n: _Subset(n, v.shape[2:], max_weights) for n, v in full.items()}
    spread = _spread_from_draws(full, sample_axes=2)
    posterior = {n: subsets[n].take(v) for n, v in full.items()}
    predictive = _numpyro_predictive(model, {n: draws[n][None] for n in latent}, args, kwargs, rng_seed + 1)
    return _assemble(posterior, subsets, predictive, spread=spread, spread_from="draws", kind="svi")
