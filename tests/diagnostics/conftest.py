"""Shared fixtures of the diagnostics tests: a tiny Pyro BNN and a tiny hand-written NumPyro model."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("arviz")


#: Draws per chain of the NUTS fixture: enough for R-hat <= 1.01 on this well-posed model.
MCMC_DRAWS = 400
MCMC_CHAINS = 4


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
    """A 4-chain NUTS run of :func:`logistic_model` that records the energy."""
    pytest.importorskip("numpyro")
    import jax
    from numpyro.infer import MCMC, NUTS

    x, y = logistic_data
    mcmc = MCMC(
        NUTS(logistic_model),
        num_warmup=300,
        num_samples=MCMC_DRAWS,
        num_chains=MCMC_CHAINS,
        chain_method="sequential",
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(0), x, y=y, extra_fields=("energy",))
    return mcmc


def write_run(run, names=("deterministic", "bnn"), *, seed=0):
    """A hand-made run folder: metrics.json, history.json and predictions.npz for ``names``."""
    import json

    from uncertlr.runfolder import METRICS_SCHEMA

    rng = np.random.default_rng(seed)
    run.mkdir(parents=True, exist_ok=True)
    labels = rng.integers(0, 3, 60)
    preds = {"labels": labels}
    models = {}
    history = {}
    for i, n in enumerate(names):
        s = 1 if i == 0 else 8
        logits = 3.0 * np.eye(3)[labels][None] + rng.normal(size=(s, 60, 3))
        p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        preds[f"{n}_test"] = p
        preds[f"{n}_ood"] = np.exp(rng.normal(size=(s, 60, 3)))
        preds[f"{n}_ood"] /= preds[f"{n}_ood"].sum(-1, keepdims=True)
        models[n] = {
            "accuracy": float((p.mean(0).argmax(-1) == labels).mean()),
            "nll": 0.5,
            "brier": 0.2,
            "ece": 0.05,
            "auroc_mi": 0.9,
            "auroc_entropy": 0.8,
            "seconds": 1.0 + i,
        }
        history[n] = [
            {
                "step": k + 1,
                "epoch": k // 10,
                "loss": 2.0 / (k + 1) + 0.01 * rng.random(),
                "lr": 0.01,
                "signal": 0.5 + 0.1 * rng.random(),
                "scale": 1.0 + 0.1 * np.sin(k),
            }
            for k in range(60)
        ]
    meta = {
        "schema": METRICS_SCHEMA,
        "task": "synthetic",
        "created": "2026-01-01T00:00:00",
        "seed": seed,
        "device": "cpu",
        "config": {"epochs": 6, "lr": 0.01},
        "versions": {"numpy": np.__version__},
        "models": models,
    }
    (run / "metrics.json").write_text(json.dumps(meta))
    (run / "history.json").write_text(json.dumps(history))
    np.savez(run / "predictions.npz", **preds)
    return run


@pytest.fixture(scope="session")
def small_bnn_idata():
    """InferenceData of a tiny uncertlr BNN (3 inputs, 3 classes)."""
    import torch

    from uncertlr.diagnostics import to_inference_data
    from uncertlr.torch import bayesian

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    bnn = bayesian(net, num_data=20, init_scale=0.1)
    return to_inference_data(bnn, x=torch.randn(20, 3), y=torch.randint(0, 3, (20,)), num_samples=30)


@pytest.fixture(scope="session")
def report_run(tmp_path_factory, numpyro_mcmc, small_bnn_idata):
    """A run folder with every section of the report: a BNN, an MCMC model (energy recorded), histories."""
    from uncertlr.diagnostics import report

    run = write_run(tmp_path_factory.mktemp("runs") / "synthetic-run")
    report(run, inference={"bnn": small_bnn_idata, "nuts": numpyro_mcmc}, progress=False)
    return run
