"""Two host devices (XLA_FLAGS must be set before JAX starts, so this runs in a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, warnings
    import jax, jax.numpy as jnp, numpy as np, optax
    from uncertlr import likelihoods, priors
    from uncertlr.jax import DATA_AXIS, bayesian, mcmc, scale_by_uncertainty, svi
    from uncertlr.modulation import Ratio

    assert jax.device_count() == 2, jax.devices()
    rng = np.random.default_rng(0)
    n, noise = 64, 0.5
    x = rng.normal(size=(n, 2)).astype(np.float32)
    y = (x @ np.array([0.7, -0.4]) + noise * rng.normal(size=n)).astype(np.float32)[:, None]
    prec = np.eye(2) + x.T @ x / noise**2
    mean = np.linalg.solve(prec, x.T @ y[:, 0] / noise**2)
    bnn = bayesian(lambda p, x: x @ p["w"], params={"w": jnp.zeros((2, 1))}, num_data=n,
                   prior=priors.Normal(1.0), likelihood=likelihoods.Normal(scale=noise), init_scale=0.1)
    out = {}

    res = mcmc(bnn, jnp.asarray(x), jnp.asarray(y), num_warmup=200, num_samples=300, num_chains=2,
               chain_method="parallel", progress=False)
    w = np.asarray(res.get_samples(group_by_chain=True)["w"])[..., 0]
    out["mcmc_shape"] = list(w.shape)
    out["mcmc_mean_err"] = (np.abs(w.reshape(-1, 2).mean(0) - mean) * np.sqrt(np.diag(prec))).max().tolist()
    out["chain_devices"] = len({d for v in res.mcmc.get_samples(group_by_chain=True).values()
                                for d in v.devices()})

    # the modulator's optax transformation averages the per-device signal over DATA_AXIS
    opt = optax.chain(optax.scale_by_adam(), scale_by_uncertainty(Ratio(kappa=-0.5), axis_name=DATA_AXIS),
                      optax.scale_by_learning_rate(optax.cosine_decay_schedule(0.05, 1200, alpha=0.01)))
    fit = svi(bnn, jnp.asarray(x), jnp.asarray(y), optimizer=opt, num_steps=1200, batch_size=32,
              num_particles=4, data_parallel=True, signal=lambda o: jnp.mean(o**2), progress=False)
    loc = np.asarray(fit.posterior_loc()["w"])[:, 0]
    scale = np.asarray(fit.posterior_scale()["w"])[:, 0]
    out["svi_mean_err"] = (np.abs(loc - mean) * np.sqrt(np.diag(prec))).max().tolist()
    out["svi_scale_ratio"] = (scale * np.sqrt(np.diag(prec))).tolist()
    out["svi_signal_finite"] = bool(np.isfinite([h["signal"] for h in fit.history]).all())

    # an optimizer that uses the per-device signal without averaging it is refused with a clear error
    def local_scale():
        def update(updates, state, params=None, *, uncertainty):
            return jax.tree_util.tree_map(lambda g: g * uncertainty, updates), state
        return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)
    try:
        svi(bnn, jnp.asarray(x), jnp.asarray(y), optimizer=optax.chain(optax.sgd(0.01), local_scale()),
            num_steps=2, batch_size=32, data_parallel=True, signal=lambda o: jnp.mean(o**2), progress=False)
        out["unaveraged"] = "ran"
    except ValueError as e:
        out["unaveraged"] = str(e)
    try:
        svi(bnn, jnp.asarray(x), jnp.asarray(y), optimizer=optax.adam(0.1), num_steps=1, batch_size=31,
            data_parallel=True, progress=False)
    except ValueError as e:
        out["odd_batch"] = str(e)
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.slow
def test_parallel_chains_and_data_parallel_svi_on_two_host_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out["mcmc_shape"] == [2, 300, 2]
    assert out["chain_devices"] == 2  # one chain per device
    assert out["mcmc_mean_err"] < 0.25  # in posterior stds (2 x 300 draws)
    assert out["svi_mean_err"] < 0.15  # mean-field optimum: exact mean ...
    assert all(0.85 < r < 1.15 for r in out["svi_scale_ratio"])  # ... and std 1 / sqrt(precision_ii)
    assert out["svi_signal_finite"]
    assert "axis_name='data'" in out["unaveraged"]
    assert "multiple of 2" in out["odd_batch"]
