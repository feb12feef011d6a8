"""Shared fixtures of the diagnostics tests: a tiny Pyro BNN and a tiny hand-written NumPyro model."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("arviz")


def logistic_model(x, y=None):
    """Bayesian logistic regression with 2 classes: ``w[3]``, ``b``, observed site ``obs`` in plate ``data``."""
    import numpyro
    import numpyro.distributions as dist

    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("obs", dist.Bernoulli(logits=x @ w + b), obs=y)


@pytest.fixture(scope="session")
def logistic_data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = (x @ np.array([1.5, -1.0, 0.5]) + 0.3 + rng.normal(size=40) > 0).astype(np.int32)
    return x, y


@pytest.fixture(scope="session")
def numpyro_mcmc(logistic_data):
    """A 2-chain NUTS run of :func:`logistic_model` that records the energy."""
    pytest.importorskip("numpyro")
    import jax
    from numpyro.infer import MCMC, NUTS

    x, y = logistic_data
    mcmc = MCMC(NUTS(logistic_model), num_warmup=100, num_samples=100, num_chains=2,
                chain_method="sequential", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), x, y=y, extra_fields=("energy",))
    return mcmc
