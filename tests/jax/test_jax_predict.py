"""Issue 13: JAX predict in bounded memory (draws and inputs in chunks) and named shape errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import uncertlr.jax._posterior as jpost
import uncertlr.jax.bnn as jbnn
from uncertlr import _spec
from uncertlr.jax import bayesian, mcmc, svi
from uncertlr.jax._predict import activation_bytes_per_row


def _mlp_apply(p, x):
    return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]


def _bnn(n=24):
    rng = np.random.default_rng(0)
    params = {
        "w1": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32),
        "b1": jnp.zeros(6),
        "w2": jnp.asarray(rng.normal(size=(6, 3)), jnp.float32),
    }
    return bayesian(_mlp_apply, params=params, num_data=n, init_scale=0.2)


def _draws(bnn, s, seed=0):
    keys = jax.random.split(jax.random.key(seed), len(bnn.random_names))
    return {n: jax.random.normal(k, (s, *bnn.shapes[n])) for k, n in zip(keys, bnn.random_names)}


@pytest.mark.parametrize("max_batch, budget", [(None, 1), (None, 2_000), (3, None), (7, None), (100, None)])
def test_row_chunks_equal_one_pass(monkeypatch, max_batch, budget):
    bnn = _bnn()
    x = jnp.asarray(np.random.default_rng(1).normal(size=(23, 4)), jnp.float32)
    draws = _draws(bnn, 5)
    ref = jnp.stack([bnn.apply({k: v[i] for k, v in draws.items()}, x) for i in range(5)])
    if budget is not None:
        monkeypatch.setattr(_spec, "MEMORY_BUDGET", budget)  # forces a few rows per pass
    out = bnn.sample_outputs(draws, x, max_batch=max_batch)
    assert out.shape == (5, 23, 3)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-6)


def test_activation_probe_counts_the_intermediates():
    # per row: the input (4), x @ w1 (6), + b1 (6), tanh (6), @ w2 (3) float32 values; plus b1
    # broadcast to [1, 6] once, shared by the 2-row probe (an overestimate, on the safe side)
    w = {"w1": jnp.zeros((4, 6)), "b1": jnp.zeros(6), "w2": jnp.zeros((6, 3))}
    assert activation_bytes_per_row(_mlp_apply, w, jnp.zeros((10, 4))) == 4 * (4 + 6 + 6 + 6 + 3) + 4 * 6 // 2


@pytest.fixture(scope="module")
def svi_fit():
    """One short SVI fit (and its data) for the chunking tests: they only read it."""
    bnn = _bnn()
    x = jnp.asarray(np.random.default_rng(2).normal(size=(24, 4)), jnp.float32)
    y = jnp.asarray(np.random.default_rng(3).integers(0, 3, 24), jnp.int32)
    return bnn, x, svi(bnn, x, y, optimizer=optax.adam(0.05), num_steps=20, progress=False)


def test_svi_draws_are_sampled_chunk_by_chunk_and_reproducible(monkeypatch, svi_fit):
    bnn, x, res = svi_fit
    sizes = []
    real = res.sample_parameters

    def spy(num_samples=32, *, rng_key=None):
        sizes.append(num_samples)
        return real(num_samples, rng_key=rng_key)

    monkeypatch.setattr(res, "sample_parameters", spy)
    monkeypatch.setattr(jpost, "PREDICT_CHUNK_ELEMENTS", 3 * bnn.num_params)  # 3 draws at a time
    monkeypatch.setattr(jbnn, "PREDICT_CHUNK_ELEMENTS", 3 * bnn.num_params)
    a = res.predict(x, num_samples=10, rng_key=7)
    assert sizes == [3, 3, 3, 1]  # never all 10 draws at once
    b = res.predict(x, num_samples=10, rng_key=7, max_batch=5)  # same draws, inputs in chunks of 5
    assert a.shape == (10, 24, 3)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(a.sum(-1)), 1.0, rtol=1e-5)
    assert len({float(a[i, 0, 0]) for i in range(10)}) == 10  # every chunk drew fresh weights


def test_mcmc_draws_are_evaluated_in_chunks_exactly(monkeypatch):
    bnn = _bnn()
    x = jnp.asarray(np.random.default_rng(2).normal(size=(24, 4)), jnp.float32)
    y = jnp.asarray(np.random.default_rng(3).integers(0, 3, 24), jnp.int32)
    res = mcmc(bnn, x, y, num_warmup=20, num_samples=12, progress=False)
    draws = res.sample_parameters()
    ref = jax.nn.softmax(
        jnp.stack([bnn.apply({k: draws[k][i] for k in bnn.random_names}, x) for i in range(12)]), -1
    )
    monkeypatch.setattr(jpost, "PREDICT_CHUNK_ELEMENTS", 5 * bnn.num_params)
    monkeypatch.setattr(jbnn, "PREDICT_CHUNK_ELEMENTS", 5 * bnn.num_params)
    got = res.predict(x, max_batch=7)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-6)


class _FakeAccelerator:
    platform = "gpu"

    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        return self.stats


class _OnDevice:
    def __init__(self, device):
        self.device = device

    def devices(self):
        return {self.device}


def test_free_device_memory_reads_an_accelerators_memory_stats():
    from uncertlr.jax._predict import free_device_memory

    assert free_device_memory(jnp.zeros(3)) is None  # the CPU: the fixed budgets
    free = free_device_memory(_OnDevice(_FakeAccelerator({"bytes_limit": 10 << 30, "bytes_in_use": 3 << 30})))
    assert free() == 7 << 30
    assert free_device_memory(_OnDevice(_FakeAccelerator(None)))() is None  # a device that does not say


def test_svi_draws_on_an_accelerator_come_in_one_chunk_when_its_memory_allows(monkeypatch, svi_fit):
    from uncertlr.jax._predict import draws_per_chunk

    bnn, x, res = svi_fit
    sizes, asked = [], []
    real = res.sample_parameters

    def spy(num_samples=32, *, rng_key=None):
        sizes.append(num_samples)
        return real(num_samples, rng_key=rng_key)

    monkeypatch.setattr(res, "sample_parameters", spy)
    monkeypatch.setattr(jpost, "PREDICT_CHUNK_ELEMENTS", 3 * bnn.num_params)  # 3 draws at a time on the CPU
    monkeypatch.setattr(jpost, "free_device_memory", lambda x: lambda: asked.append(1) or 1 << 30)
    out = res.predict(x, num_samples=10, rng_key=7)
    assert sizes == [10] and asked  # a 1 GiB-free accelerator takes all 10 draws at once
    assert out.shape == (10, 24, 3) and len({float(out[i, 0, 0]) for i in range(10)}) == 10
    # the CPU budget again when the device does not report its memory, or for few draws (never asked)
    assert draws_per_chunk(10, 100, weight_elements=300, free_memory=lambda: None) == 3
    assert draws_per_chunk(2, 100, weight_elements=300, free_memory=lambda: 1 / 0) == 2


def test_a_flax_shape_error_is_a_named_value_error():
    flax_linen = pytest.importorskip("flax.linen")

    net = flax_linen.Sequential([flax_linen.Dense(8), flax_linen.tanh, flax_linen.Dense(3)])
    x = jnp.ones((16, 7))
    variables = net.init(jax.random.key(0), x)
    bnn = bayesian(net, params=variables, num_data=16)
    res = svi(bnn, x, jnp.zeros(16, jnp.int32), optimizer=optax.adam(0.1), num_steps=2, progress=False)
    with pytest.raises(ValueError, match=r"cannot be applied to x of shape \(16, 5\).*ScopeParamShapeError"):
        res.predict(x[:, :5])
