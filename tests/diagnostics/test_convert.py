"""to_inference_data: groups, dims and shapes for every backend, checked against independent computations."""

from __future__ import annotations

import re
import types

import numpy as np
import pytest
import torch
from conftest import MCMC_CHAINS, MCMC_DRAWS, logistic_model
from hypothesis import given
from hypothesis import strategies as st

from uncertlr.diagnostics import (
    HISTORY_GROUP,
    SPREAD_GROUP,
    history_dataset,
    inference_kind,
    model_name,
    spread_source,
    to_inference_data,
    weight_subset,
)
from uncertlr.diagnostics._arviz import az
from uncertlr.torch import bayesian


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.fixture
def linear_bnn():
    torch.manual_seed(3)
    bnn = bayesian(torch.nn.Linear(3, 4), num_data=12, init_scale=0.3)
    x, y = torch.randn(12, 3), torch.randint(0, 4, (12,))
    return bnn, x, y


def test_pyro_bnn_groups_dims_and_log_likelihood(linear_bnn):
    bnn, x, y = linear_bnn
    idata = to_inference_data(bnn, x=x, y=y, num_samples=25, max_weights=None, name="tiny")
    assert set(idata.groups()) == {
        "posterior",
        "posterior_predictive",
        "log_likelihood",
        "observed_data",
        SPREAD_GROUP,
    }
    w, b = idata.posterior["weight"], idata.posterior["bias"]
    assert w.dims == ("chain", "draw", "weight_dim_0", "weight_dim_1") and w.shape == (1, 25, 4, 3)
    assert b.shape == (1, 25, 4)
    ll = idata.log_likelihood["obs"]
    assert ll.dims == ("chain", "draw", "data") and ll.shape == (1, 25, 12)
    assert idata.posterior_predictive["obs"].shape == (1, 25, 12)
    np.testing.assert_array_equal(idata.observed_data["obs"].values, y.numpy())
    # independent: log p(y | W, b) from the stored draws with numpy
    logits = np.einsum("sci,ni->snc", w.values[0], x.numpy()) + b.values[0][:, None, :]
    expect = np.take_along_axis(_log_softmax(logits), y.numpy()[None, :, None], -1)[..., 0]
    np.testing.assert_allclose(ll.values[0], expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        idata.posterior_predictive["mean_log_likelihood"].values[0], expect.mean(1), rtol=1e-5
    )
    p = np.exp(_log_softmax(logits))
    entropy = -(p * np.log(p)).sum(-1).mean(1)
    np.testing.assert_allclose(idata.posterior_predictive["mean_entropy"].values[0], entropy, rtol=1e-5)
    # draws come from the guide: their spread matches the posterior scale
    np.testing.assert_allclose(
        w.values[0].std(0, ddof=1).mean(), bnn.posterior_scale()["weight"].mean(), rtol=0.25
    )
    assert model_name(idata) == "tiny" and inference_kind(idata) == "svi"


def test_pyro_bnn_weight_subset_is_bounded_and_spread_is_exact():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Linear(30, 5))
    bnn = bayesian(net, num_data=10, init_scale=0.05)
    idata = to_inference_data(
        bnn, x=torch.randn(10, 20), y=torch.randint(0, 5, (10,)), num_samples=8, max_weights=16
    )
    w0 = idata.posterior["0.weight"]
    assert w0.dims == ("chain", "draw", "0.weight_index") and w0.shape == (1, 8, 16)
    idx = w0["0.weight_index"].values
    np.testing.assert_array_equal(idx, np.linspace(0, 599, 16).round().astype(int))
    assert idata.posterior["2.bias"].shape == (1, 8, 5)  # small parameters are kept whole
    assert weight_subset(idata)["0.weight"] == {"size": 600, "kept": 16}
    spread = getattr(idata, SPREAD_GROUP)
    exact = bnn.posterior_spread()
    assert list(spread["layer"].values) == list(exact)
    np.testing.assert_allclose(spread["mean_scale"].values, [s.mean_scale for s in exact.values()], rtol=1e-6)
    np.testing.assert_allclose(spread["mean_snr"].values, [s.mean_snr for s in exact.values()], rtol=1e-6)


def test_numpyro_mcmc_raw_and_wrapped(numpyro_mcmc, logistic_data):
    x, y = logistic_data
    idata = to_inference_data(numpyro_mcmc, name="nuts")
    assert {
        "posterior",
        "sample_stats",
        "log_likelihood",
        "posterior_predictive",
        "observed_data",
        SPREAD_GROUP,
    } <= set(idata.groups())
    assert idata.posterior["w"].dims == ("chain", "draw", "w_dim_0") and idata.posterior["w"].shape == (
        MCMC_CHAINS,
        MCMC_DRAWS,
        3,
    )
    assert {"diverging", "energy"} <= set(idata.sample_stats.data_vars)
    ll = idata.log_likelihood["obs"]
    assert ll.dims == ("chain", "draw", "data") and ll.shape == (MCMC_CHAINS, MCMC_DRAWS, 40)
    # independent Bernoulli log-likelihood from the draws
    z = np.einsum("cdi,ni->cdn", idata.posterior["w"].values, x) + idata.posterior["b"].values[..., None]
    expect = y * -np.logaddexp(0, -z) + (1 - y) * -np.logaddexp(0, z)
    np.testing.assert_allclose(ll.values, expect, rtol=1e-4, atol=1e-4)
    # arviz.from_numpyro's own log-likelihood agrees too
    np.testing.assert_allclose(
        az.from_numpyro(numpyro_mcmc).log_likelihood["obs"].values, ll.values, rtol=1e-4, atol=1e-4
    )
    assert inference_kind(idata) == "mcmc"
    wrapped = to_inference_data(types.SimpleNamespace(mcmc=numpyro_mcmc, samples=numpyro_mcmc.get_samples()))
    np.testing.assert_array_equal(wrapped.posterior["w"].values, idata.posterior["w"].values)
    sub = to_inference_data(numpyro_mcmc, max_weights=2)
    assert sub.posterior["w"].shape == (MCMC_CHAINS, MCMC_DRAWS, 2) and list(
        sub.posterior["w_index"].values
    ) == [0, 2]


def test_numpyro_svi_duck_typed(logistic_data):
    import jax
    import numpyro.optim
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal

    x, y = logistic_data
    guide = AutoNormal(logistic_model)
    svi = SVI(logistic_model, guide, numpyro.optim.Adam(0.05), Trace_ELBO())
    res = svi.run(jax.random.PRNGKey(0), 200, x, y=y, progress_bar=False)
    result = types.SimpleNamespace(
        model=logistic_model, guide=guide, params=res.params, predict=lambda *a, **k: None, samples=None
    )
    idata = to_inference_data(result, x=x, y=y, num_samples=50)
    assert idata.posterior["w"].shape == (1, 50, 3) and idata.posterior["b"].shape == (1, 50)
    assert idata.log_likelihood["obs"].shape == (1, 50, 40)
    assert "sample_stats" not in idata.groups() and inference_kind(idata) == "svi"
    # the draws follow the fitted guide: mean near the guide's location
    loc = np.asarray(res.params["w_auto_loc"])
    sd = np.asarray(guide.median(res.params)["w"])  # median == loc for a Normal guide
    np.testing.assert_allclose(loc, sd)
    np.testing.assert_allclose(idata.posterior["w"].values[0].mean(0), loc, atol=0.5)
    # and a raw numpyro SVI object with params= works the same way
    raw = to_inference_data(svi, x=x, y=y, params=res.params, num_samples=50)
    np.testing.assert_allclose(raw.posterior["w"].values, idata.posterior["w"].values)


def test_history_group():
    records = [{"step": i + 1, "epoch": 0, "loss": 3.0 - i, "lr": 0.1, "signal": 0.5} for i in range(3)]
    records.append({"step": 4, "epoch": 1, "loss": 0.5, "lr": 0.05, "scale": 1.2})
    idata = to_inference_data(records)
    assert idata.groups() == [HISTORY_GROUP]
    ds = getattr(idata, HISTORY_GROUP)
    assert ds["loss"].dims == ("step",) and list(ds["step"].values) == [1, 2, 3, 4]
    np.testing.assert_array_equal(ds["signal"].values, [0.5, 0.5, 0.5, np.nan])
    assert inference_kind(idata) == "history"
    # also added beside a posterior
    bnn = bayesian(torch.nn.Linear(2, 2), num_data=4)
    both = to_inference_data(bnn, num_samples=3, history=records)
    assert {"posterior", HISTORY_GROUP} <= set(both.groups())
    with pytest.raises(TypeError, match="list of records"):
        history_dataset({"loss": [1.0]})


def test_bad_input_is_named():
    with pytest.raises(TypeError, match="to_inference_data accepts"):
        to_inference_data(object())
    bnn = bayesian(torch.nn.Linear(2, 2), num_data=4)
    with pytest.raises(ValueError, match="max_weights"):
        to_inference_data(bnn, max_weights=0)
    with pytest.raises(ValueError, match="y was given without x"):
        to_inference_data(bnn, y=torch.zeros(3))


def test_pyro_svi_with_autoguide():
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal

    def model(x, y=None):
        w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", dist.Normal(x @ w, 0.5), obs=y)

    x = torch.randn(30, 2)
    y = x @ torch.tensor([1.0, -2.0]) + 0.5 * torch.randn(30)
    guide = AutoNormal(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(300):
        svi.step(x, y)
    idata = to_inference_data(svi, x=x, y=y, num_samples=40)
    pyro.clear_param_store()
    assert idata.posterior["w"].shape == (1, 40, 2) and idata.log_likelihood["y"].dims == (
        "chain",
        "draw",
        "data",
    )
    np.testing.assert_allclose(idata.posterior["w"].values[0].mean(0), [1.0, -2.0], atol=0.4)
    # Normal log-density by hand
    w = idata.posterior["w"].values[0]
    mu = np.einsum("sd,nd->sn", w, x.numpy())
    expect = -0.5 * ((y.numpy() - mu) / 0.5) ** 2 - np.log(0.5 * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(idata.log_likelihood["y"].values[0], expect, rtol=1e-4, atol=1e-4)
    assert "mean_entropy" in idata.posterior_predictive and spread_source(idata) == "draws"


@given(
    shape=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    max_weights=st.one_of(st.none(), st.integers(1, 40)),
)
def test_weight_subset_is_bounded_sorted_and_spans_the_parameter(shape, max_weights):
    size = int(np.prod(shape))
    draws = np.arange(2 * size, dtype=float).reshape(2, *shape)
    idata = to_inference_data(types.SimpleNamespace(samples={"p": draws}), max_weights=max_weights)
    kept = idata.posterior["p"]
    if max_weights is None or size <= max_weights:
        assert kept.dims == ("chain", "draw", *(f"p_dim_{i}" for i in range(len(shape))))
        np.testing.assert_array_equal(kept.values[0], draws)
        assert weight_subset(idata)["p"] == {"size": size, "kept": size}
    else:
        assert kept.dims == ("chain", "draw", "p_index")
        idx = kept["p_index"].values
        assert 1 <= len(idx) <= max_weights and weight_subset(idata)["p"] == {"size": size, "kept": len(idx)}
        assert np.all(np.diff(idx) > 0) and idx[-1] == size - 1 and (idx[0] == 0)
        np.testing.assert_array_equal(
            kept.values[0], draws.reshape(2, size)[:, idx]
        )  # the flat elements named by the coord


@given(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=6, unique=True))
def test_posterior_file_names_are_safe_and_distinct(names):
    from uncertlr.diagnostics import posterior_filename

    files = [posterior_filename(n) for n in names]
    assert len(set(files)) == len(files)
    assert all(re.fullmatch(r"posterior-[A-Za-z0-9._+-]+\.nc", f) for f in files)


def test_object_with_samples_only():
    rng = np.random.default_rng(0)
    result = types.SimpleNamespace(
        samples={"w": rng.normal(1.0, 0.5, size=(200, 4, 50)), "b": rng.normal(size=200)}
    )
    idata = to_inference_data(result, max_weights=10)
    assert idata.posterior["w"].dims == ("chain", "draw", "w_index") and idata.posterior["w"].shape == (
        1,
        200,
        10,
    )
    assert idata.posterior["b"].shape == (1, 200)
    spread = getattr(idata, SPREAD_GROUP)
    assert list(spread["layer"].values) == ["w", "b"]
    w = result.samples["w"]
    np.testing.assert_allclose(spread["mean_scale"].values[0], w.std(0, ddof=1).mean(), rtol=1e-10)
    np.testing.assert_allclose(
        spread["mean_snr"].values[0], (np.abs(w.mean(0)) / w.std(0, ddof=1)).mean(), rtol=1e-10
    )
