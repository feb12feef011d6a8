"""The NumPyro converters: an ``MCMC`` run (through ``arviz.from_numpyro``) and an SVI posterior.

Both replay the model on every draw (``handlers.substitute``, vectorised with ``jax.vmap``)
for ``log_likelihood``, ``posterior_predictive`` (observed sites resampled, other sites as
drawn) and the predictive quantities. JAX and NumPyro are imported inside the converters,
so ``import uncertlr.diagnostics`` needs neither.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from uncertlr.diagnostics._arviz import az
from uncertlr.diagnostics._dataset import Subset, assemble, quantities, site_dims, spread_from_draws

__all__ = ["from_numpyro_mcmc", "from_numpyro_svi"]


def from_numpyro_mcmc(
    mcmc: Any, args: tuple, kwargs: dict, *, num_samples: int, max_weights: int | None, rng_seed: int
) -> Any:
    """A ``numpyro.infer.MCMC`` run: its draws, sample stats and, replayed on its data (or ``args``), the predictive groups.

    ``num_samples`` is ignored (MCMC keeps its own draws); without ``args``/``kwargs`` the
    run's own training data are used.
    """
    del num_samples  # MCMC keeps its own draws
    base = az.from_numpyro(mcmc, log_likelihood=False)
    samples = mcmc.get_samples(group_by_chain=True)
    latent = {n: np.asarray(v) for n, v in samples.items() if n in base.posterior}
    subsets = {n: Subset(n, v.shape[2:], max_weights) for n, v in latent.items()}
    spread = spread_from_draws(latent, sample_axes=2)
    if not args and not kwargs:
        args, kwargs = tuple(getattr(mcmc, "_args", ())), dict(getattr(mcmc, "_kwargs", {}) or {})
    predictive = _predictive(mcmc.sampler.model, samples, args, kwargs, rng_seed)
    return assemble({}, subsets, predictive, spread=spread, spread_from="draws", kind="mcmc", base=base)


def from_numpyro_svi(
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
    """A NumPyro SVI posterior: ``num_samples`` guide draws (``Predictive``) of the model's latent sites."""
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
    subsets = {n: Subset(n, v.shape[2:], max_weights) for n, v in full.items()}
    spread = spread_from_draws(full, sample_axes=2)
    posterior = {n: subsets[n].take(v) for n, v in full.items()}
    predictive = _predictive(model, {n: draws[n][None] for n in latent}, args, kwargs, rng_seed + 1)
    return assemble(posterior, subsets, predictive, spread=spread, spread_from="draws", kind="svi")


def _predictive(
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
        n: site_dims(
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
    pp.update(quantities(ll_sum, ll_count, h_sum, h_count))
    observed = {n: np.asarray(tr0[n]["value"]) for n in obs_sites}
    return {"pp": pp, "ll": ll, "observed": observed, "dims": dims}
