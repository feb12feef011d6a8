"""Library-neutral assembly of an ``InferenceData``: groups, weight subsets, spread, history, attributes.

The converters (:mod:`._pyro`, :mod:`._numpyro`) turn a library's result into plain numpy
draws ``{site: [chain, draw, ...]}`` and predictive pieces; everything after that is here and
knows neither Pyro nor NumPyro: :class:`Subset` (which elements of a parameter the
``posterior`` group keeps), :func:`assemble` (the groups and their attributes),
:func:`spread_from_draws` / :func:`spread_dataset` (the ``layer_spread`` group),
:func:`quantities` (the predictive quantities), :func:`history_dataset` and
:func:`from_samples` (draws without a model).

Example:
    >>> import numpy as np
    >>> sub = Subset("w", (4, 5), max_weights=3)
    >>> sub.dims, sub.index.tolist(), sub.take(np.arange(40.0).reshape(2, 4, 5)).tolist()
    (['w_index'], [0, 10, 19], [[0.0, 10.0, 19.0], [20.0, 30.0, 39.0]])
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
    "ATTR_KIND",
    "ATTR_MODEL",
    "ATTR_SPREAD",
    "ATTR_SUBSET",
    "HISTORY_GROUP",
    "MAX_WEIGHTS",
    "PREDICTIVE_QUANTITIES",
    "SPREAD_GROUP",
    "Subset",
    "assemble",
    "from_samples",
    "get_attr",
    "groups",
    "history_dataset",
    "quantities",
    "set_attrs",
    "site_dims",
    "spread_dataset",
    "spread_from_draws",
]

#: Default bound on the elements kept per parameter in the ``posterior`` group.
MAX_WEIGHTS = 32
#: Scalar predictive quantities per draw, stored in ``posterior_predictive``.
PREDICTIVE_QUANTITIES = ("mean_log_likelihood", "mean_entropy")
#: Group holding the training history.
HISTORY_GROUP = "training_history"
#: Group holding the per-layer posterior spread.
SPREAD_GROUP = "layer_spread"

#: Attributes uncertlr writes on every group (read back by the helpers of :mod:`.convert`).
ATTR_MODEL = "uncertlr_model"
ATTR_KIND = "uncertlr_inference"
ATTR_SUBSET = "uncertlr_weight_subset"
ATTR_SPREAD = "uncertlr_spread_source"


# --------------------------------------------------------------------------- attributes


def groups(idata: Any) -> list[Any]:
    """The datasets of every group of ``idata``."""
    return [getattr(idata, g) for g in idata.groups()]


def set_attrs(idata: Any, attrs: Mapping[str, Any]) -> None:
    """Add ``attrs`` to every group of ``idata``."""
    for ds in groups(idata):
        ds.attrs.update(attrs)


def get_attr(idata: Any, key: str) -> Any:
    """The first group's value of attribute ``key``, or None."""
    for ds in groups(idata):
        if key in ds.attrs:
            return ds.attrs[key]
    return None


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


# --------------------------------------------------------------------------- weights and spread


class Subset:
    """Which elements of one parameter the ``posterior`` group keeps.

    A parameter with more than ``max_weights`` elements is flattened and ``max_weights``
    evenly spaced elements are kept (``np.linspace(0, size - 1, max_weights)`` rounded), with
    dimension ``<name>_index`` whose coordinate is the flat index; smaller parameters (or
    ``max_weights=None``) are kept whole, with dimensions ``<name>_dim_<i>``.
    """

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


def spread_from_draws(draws: Mapping[str, np.ndarray], sample_axes: int) -> dict[str, Any]:
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


def spread_dataset(spread: Mapping[str, Any]) -> Any:
    """The ``layer_spread`` group: ``mean_scale``, ``mean_snr`` and ``size`` along dimension ``layer``."""
    layers = list(spread)
    return xr.Dataset(
        {
            "mean_scale": ("layer", np.array([float(spread[k].mean_scale) for k in layers])),
            "mean_snr": ("layer", np.array([float(spread[k].mean_snr) for k in layers])),
            "size": ("layer", np.array([int(spread[k].size) for k in layers], dtype=np.int64)),
        },
        coords={"layer": np.array(layers, dtype=object) if layers else np.array([], dtype=str)},
    )


# --------------------------------------------------------------------------- predictive pieces


def site_dims(name: str, ndim: int, batch_ndim: int, frames: Sequence[Any]) -> list[str]:
    """Dimension names of an observed site's value: plate names where plates sit, defaults elsewhere.

    ``frames`` are the site's plate frames (Pyro's and NumPyro's ``cond_indep_stack``: objects
    with ``name`` and a negative ``dim``).
    """
    dims = [f"{name}_dim_{i}" for i in range(ndim)]
    for f in frames:
        dim = getattr(f, "dim", None)
        if dim is not None and -batch_ndim <= dim < 0 and getattr(f, "name", None):
            dims[batch_ndim + dim] = str(f.name)
    return dims


def quantities(
    ll_sum: np.ndarray, ll_count: int, h_sum: np.ndarray | None, h_count: int
) -> dict[str, np.ndarray]:
    """The predictive quantities per draw from sums over data points (and how many were summed)."""
    q = {}
    if ll_count:
        q["mean_log_likelihood"] = ll_sum / ll_count
    if h_sum is not None and h_count:
        q["mean_entropy"] = h_sum / h_count
    return q


# --------------------------------------------------------------------------- assembly


def assemble(
    posterior: dict[str, np.ndarray],
    subsets: Mapping[str, Subset],
    predictive: dict[str, Any] | None,
    *,
    spread: Mapping[str, Any],
    spread_from: str,
    kind: str,
    base: Any = None,
) -> Any:
    """Build the InferenceData from draws ``[chain, draw, ...]`` (already subset) and predictive pieces.

    Args:
        posterior: ``{site: draws[chain, draw, ...]}`` (ignored when ``base`` is given).
        subsets: the :class:`Subset` of every site.
        predictive: ``{"pp", "ll", "observed", "dims"}`` from a converter, or None.
        spread: ``{layer: LayerSpread}`` for the ``layer_spread`` group.
        spread_from: ``"guide"`` or ``"draws"``, recorded as an attribute.
        kind: ``"svi"`` or ``"mcmc"``, recorded as an attribute.
        base: an ``InferenceData`` whose groups are kept (its ``posterior`` subset), as
            ``arviz.from_numpyro`` makes for MCMC.
    """
    coords: dict[str, Any] = {}
    dims: dict[str, list[str]] = {}
    for n, sub in subsets.items():
        coords.update(sub.coords)
        dims[n] = sub.dims
    out: dict[str, Any] = {}
    if base is None:
        out["posterior"] = az.from_dict(posterior=posterior, coords=coords, dims=dims).posterior
    else:
        out.update({g: getattr(base, g) for g in base.groups() if g != "observed_data"})
        out["posterior"] = _subset_dataset(base.posterior, subsets)
    if predictive is not None:
        pd = predictive
        # log-likelihoods have the sites' batch dims only (no event dims): their own dims
        ll_dims = {n: pd["dims"][n][: np.ndim(v) - 2] for n, v in pd["ll"].items()}
        out["posterior_predictive"] = az.from_dict(
            posterior_predictive=pd["pp"], dims=pd["dims"]
        ).posterior_predictive
        if pd["ll"]:
            out["log_likelihood"] = az.from_dict(log_likelihood=pd["ll"], dims=ll_dims).log_likelihood
        if pd["observed"]:
            out["observed_data"] = az.from_dict(observed_data=pd["observed"], dims=pd["dims"]).observed_data
    out[SPREAD_GROUP] = spread_dataset(spread)
    idata = az.InferenceData(**out)
    subset_info = {n: {"size": s.size, "kept": s.kept} for n, s in subsets.items()}
    set_attrs(idata, {ATTR_KIND: kind, ATTR_SUBSET: json.dumps(subset_info), ATTR_SPREAD: spread_from})
    return idata


def _subset_dataset(ds: Any, subsets: Mapping[str, Subset]) -> Any:
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


def from_samples(samples: Mapping[str, Any], *, max_weights: int | None) -> Any:
    """Posterior draws ``{site: [S, ...]}`` alone (no model to replay): one chain, spread from the draws."""
    draws = {str(n): np.asarray(v) for n, v in samples.items()}
    if any(v.ndim == 0 for v in draws.values()):
        raise ValueError("samples must be {site: draws} with the draws along the first axis")
    subsets = {n: Subset(n, v.shape[1:], max_weights) for n, v in draws.items()}
    posterior = {n: subsets[n].take(v)[None] for n, v in draws.items()}
    spread = spread_from_draws(draws, sample_axes=1)
    return assemble(posterior, subsets, None, spread=spread, spread_from="draws", kind="svi")
