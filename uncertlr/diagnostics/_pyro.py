"""The Pyro converter: an uncertlr BNN, a ``pyro.infer.SVI`` or any Pyro ``model`` + ``guide`` to ``InferenceData``.

ArviZ has no converter for Pyro SVI, so this one draws the weights (an uncertlr
:class:`~uncertlr.torch.BNN`'s vectorised ``sample_parameters``, else by running the guide
``num_samples`` times), replays the model on each draw (``poutine.condition``) and reads its
sample sites: observed ones give ``log_likelihood``, ``posterior_predictive`` and
``observed_data``; the others go to ``posterior_predictive``. torch and Pyro are imported
inside the converter, so ``import uncertlr.diagnostics`` needs neither.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from uncertlr.diagnostics._dataset import Subset, assemble, quantities, site_dims, spread_from_draws

__all__ = ["from_pyro"]


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def from_pyro(
    model: Any,
    guide: Any,
    args: tuple,
    kwargs: dict,
    *,
    num_samples: int,
    max_weights: int | None,
    rng_seed: int,
    spread: Mapping[str, Any] | None,
    sample_parameters: Callable[[int], Mapping[str, Any]] | None = None,
) -> Any:
    """Draws from the guide (``sample_parameters(S)`` when the result has it), then the model replayed on each.

    Args:
        model, guide: Pyro programs taking ``*args, **kwargs``.
        spread: ``{layer: LayerSpread}`` exact from the guide (an uncertlr BNN's
            ``posterior_spread()``), or None to compute it from the draws.
        sample_parameters: ``S -> {name: draws[S, ...]}``, one vectorised draw of every
            random parameter (an uncertlr BNN); None runs the guide ``num_samples`` times.
        num_samples, max_weights, rng_seed: see :func:`~uncertlr.diagnostics.to_inference_data`.
    """
    import torch

    # torch.manual_seed seeds every CUDA device too: fork their generators as well as the CPU's
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        torch.manual_seed(rng_seed)
        if sample_parameters is not None:  # an uncertlr BNN: one vectorised draw of every random parameter
            draws = {n: _np(v) for n, v in sample_parameters(num_samples).items()}
        else:
            if not args and not kwargs:
                raise ValueError(
                    "a Pyro model and guide need their data to draw from the guide: pass x= (and y=)"
                )
            draws = _guide_draws(guide, args, kwargs, num_samples)
        if not draws:
            raise ValueError("the guide has no latent sample sites: nothing to convert")
        predictive = None
        if args or kwargs:
            predictive = _predictive(model, draws, args, kwargs, num_samples)
    if predictive is not None:  # guide sites the model does not sample (e.g. auxiliary ones) are not weights
        latent = predictive.pop("latent")
        draws = {n: v for n, v in draws.items() if n in latent}
    subsets = {n: Subset(n, v.shape[1:], max_weights) for n, v in draws.items()}
    posterior = {n: subsets[n].take(v)[None] for n, v in draws.items()}
    if spread is None:
        spread_from = "draws"
        spread = spread_from_draws(draws, sample_axes=1)
    else:
        spread_from = "guide"
    return assemble(posterior, subsets, predictive, spread=spread, spread_from=spread_from, kind="svi")


def _guide_draws(guide: Any, args: tuple, kwargs: dict, num_samples: int) -> dict[str, np.ndarray]:
    """``{site: draws[S, ...]}`` of the guide's latent sample sites, one guide run per draw."""
    from pyro import poutine
    from pyro.poutine.util import site_is_subsample

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
    return {n: np.stack(v) for n, v in per_draw.items()}


def _predictive(
    model: Any, draws: Mapping[str, np.ndarray], args: tuple, kwargs: dict, num_samples: int
) -> dict[str, Any] | None:
    """Replay ``model`` on each draw: log-likelihood and posterior predictive of its other sample sites."""
    import torch
    from pyro import poutine
    from pyro.poutine.util import site_is_subsample

    ll: dict[str, list[np.ndarray]] = {}
    pp: dict[str, list[np.ndarray]] = {}
    observed: dict[str, np.ndarray] = {}
    dims: dict[str, list[str]] = {}
    latent: set[str] = set()
    ll_sum, h_sum = np.zeros(num_samples), np.zeros(num_samples)
    ll_count = h_count = 0
    has_entropy = True
    # the draws go back where the model's data is (a model on a GPU would mix devices otherwise)
    dev = next((a.device for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
    for s in range(num_samples):
        data = {n: torch.as_tensor(v[s], device=dev) for n, v in draws.items()}
        mtr = poutine.trace(poutine.condition(model, data=data)).get_trace(*args, **kwargs)
        n_ll = n_h = 0
        for n, site in mtr.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if n in data:
                latent.add(n)
                continue
            fn: Any = site["fn"]  # a Pyro distribution
            if n not in dims:
                dims[n] = site_dims(n, _np(site["value"]).ndim, len(fn.batch_shape), site["cond_indep_stack"])
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
    q = quantities(ll_sum, ll_count, h_sum if has_entropy else None, h_count)
    pred.update({k: v[None] for k, v in q.items()})
    return {
        "pp": pred,
        "ll": {n: np.stack(v)[None] for n, v in ll.items()},
        "observed": observed,
        "dims": dims,
        "latent": latent,
    }
