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
    from uncertlr.jax import DATA_AXIS, bayesian, mcmc, scale_by_uncertainty, svi, svi_step
    from uncertlr.modulation import Ratio

    assert jax.device_count() == 2, jax.devices()
    dev0, dev1 = jax.devices()
    rng = np.random.default_rng(0)
    n, noise = 64, 0.5
    x = rng.normal(size=(n, 2)).astype(np.float32)
    y = (x @ np.array([0.7, -0.4]) + noise * rng.normal(size=n)).astype(np.float32)[:, None]
    prec = np.eye(2) + x.T @ x / noise**2
    mean = np.linalg.solve(prec, x.T @ y[:, 0] / noise**2)
    bnn = bayesian(lambda p, x: x @ p["w"], params={"w": jnp.zeros((2, 1))}, num_data=n,
                   prior=priors.Normal(1.0), likelihood=likelihoods.Normal(scale=noise), init_scale=0.1)
    out = {}

    # NUTS: one chain per chosen device (here in reverse order), and a single chosen device
    res = mcmc(bnn, jnp.asarray(x), jnp.asarray(y), num_warmup=200, num_samples=300, num_chains=2,
               chain_method="parallel", devices=[dev1, dev0], progress=False)
    w = np.asarray(res.get_samples(group_by_chain=True)["w"])[..., 0]
    out["mcmc_shape"] = list(w.shape)
    out["mcmc_mean_err"] = (np.abs(w.reshape(-1, 2).mean(0) - mean) * np.sqrt(np.diag(prec))).max().tolist()
    out["chain_devices"] = len({d for v in res.mcmc.get_samples(group_by_chain=True).values()
                                for d in v.devices()})
    one = mcmc(bnn, x, y, num_warmup=20, num_samples=10, devices=[dev1], progress=False)
    out["mcmc_one_device"] = sorted({d.id for v in one.samples.values() for d in v.devices()})

    # data-parallel SVI = one device on the whole batch: same weight noise everywhere, averaged
    # gradients, loss terms and signal (a modulator needs no axis_name; with one it agrees)
    xc = rng.normal(size=(n, 3)).astype(np.float32)
    yc = (xc[:, 0] - xc[:, 1] > 0).astype(np.int32)
    clf = bayesian(lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"],
                   params={"w": 0.3 * jnp.ones((3, 4)), "v": 0.1 * jnp.ones((4, 2))}, num_data=n, init_scale=0.05)
    def opt(axis_name=None):
        return optax.chain(optax.scale_by_adam(), scale_by_uncertainty(Ratio(warmup=1), axis_name=axis_name),
                           optax.scale_by_learning_rate(0.05))
    kw = dict(num_steps=25, batch_size=16, num_particles=2, signal="entropy", progress=False)
    single = svi(clf, xc, yc, optimizer=opt(), **kw)
    runs = {"data_parallel": svi(clf, xc, yc, optimizer=opt(), data_parallel=True, **kw),
            "axis_name": svi(clf, xc, yc, optimizer=opt(DATA_AXIS), data_parallel=True, **kw),
            "mesh": svi(clf, xc, yc, optimizer=opt(), mesh=jax.make_mesh((2,), (DATA_AXIS,)), **kw)}
    for name, r in runs.items():
        out[name + "_param_err"] = max(float(np.abs(np.asarray(r.params[k]) - np.asarray(single.params[k])).max())
                                       for k in single.params)  # committed to different devices
        out[name + "_loss_err"] = float(np.abs(r.losses - single.losses).max())
        out[name + "_signal_err"] = max(abs(a["signal"] - b["signal"]) for a, b in zip(r.history, single.history))
    w_loc = runs["data_parallel"].params["w_loc"]
    out["parallel_replicated"] = [w_loc.sharding.is_fully_replicated, len(w_loc.devices())]
    out["param_change"] = float(jnp.abs(single.params["w_loc"] - 0.3).max())

    # one chosen device
    on1 = svi(clf, xc, yc, optimizer=opt(), devices=[dev1], **kw)
    out["svi_devices"] = sorted({d.id for v in on1.params.values() for d in v.devices()})
    out["svi_device_err"] = max(float(np.abs(np.asarray(on1.params[k]) - np.asarray(single.params[k])).max())
                                for k in single.params)
    step = svi_step(clf, optax.adam(0.01), device=dev1)
    state, _ = step.update(step.init(0), xc[:16], yc[:16])
    out["step_devices"] = sorted({d.id for v in jax.tree.leaves(state) for d in v.devices()})
    try:
        svi(clf, xc, yc, optimizer=optax.adam(0.1), num_steps=1, batch_size=31, data_parallel=True, progress=False)
    except ValueError as e:
        out["odd_batch"] = str(e)
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.slow
def test_devices_and_data_parallelism_on_two_host_devices():
    # two host devices, on top of the test session's XLA flags (tests/conftest.py)
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    env = {**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out["mcmc_shape"] == [2, 300, 2]
    assert out["chain_devices"] == 2  # one chain per device
    assert out["mcmc_mean_err"] < 0.25  # in posterior stds (2 x 300 draws)
    assert out["mcmc_one_device"] == [1]
    assert out["param_change"] > 0.05  # the runs moved, so agreeing below means something
    for name in ("data_parallel", "axis_name", "mesh"):
        assert out[name + "_param_err"] < 2e-5, (name, out)
        assert out[name + "_loss_err"] < 1e-4 and out[name + "_signal_err"] < 1e-5, (name, out)
    assert out["parallel_replicated"] == [True, 2]  # parameters replicated on both devices
    assert out["svi_devices"] == [1] and out["svi_device_err"] < 1e-6
    assert out["step_devices"] == [1]
    assert "multiple of 2" in out["odd_batch"]
