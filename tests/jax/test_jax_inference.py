"""uncertlr.jax.mcmc / svi: closed-form posteriors, divergences, signals, bad input."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from uncertlr import likelihoods, priors
from uncertlr.jax import DivergenceWarning, MCMCResult, SVIResult, bayesian, mcmc, posterior_scale_args, svi

NOISE = 0.5
N = 40


def _conjugate():
    """y = x @ w + noise, w ~ N(0, I), known noise: the posterior is Gaussian with a closed form."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 2)).astype(np.float32)
    x[:, 1] += 0.8 * x[:, 0]  # correlated features: a correlated posterior
    y = (x @ np.array([0.7, -0.4]) + NOISE * rng.normal(size=N)).astype(np.float32)[:, None]
    prec = np.eye(2) + x.T @ x / NOISE**2
    cov = np.linalg.inv(prec)
    mean = cov @ x.T @ y[:, 0] / NOISE**2
    bnn = bayesian(
        lambda p, x: x @ p["w"],
        params={"w": jnp.zeros((2, 1))},
        num_data=N,
        prior=priors.Normal(1.0),
        likelihood=likelihoods.Normal(scale=NOISE),
        init_scale=0.1,
    )
    return bnn, jnp.asarray(x), jnp.asarray(y), mean, cov, prec


def test_nuts_matches_the_closed_form_posterior():
    """Tolerance: means within 0.15 posterior std (MC error ~0.05 std at ESS ~ 400), stds within 10 %, correlation within 0.05."""
    bnn, x, y, mean, cov, _ = _conjugate()
    res = mcmc(
        bnn, x, y, num_warmup=300, num_samples=800, num_chains=2, chain_method="vectorized", progress=False
    )
    w = np.asarray(res.samples["w"])[:, :, 0]
    assert w.shape == (1600, 2)
    sd = np.sqrt(np.diag(cov))
    np.testing.assert_array_less(np.abs(w.mean(0) - mean), 0.15 * sd)
    np.testing.assert_allclose(w.std(0), sd, rtol=0.1)
    np.testing.assert_allclose(np.corrcoef(w.T)[0, 1], cov[0, 1] / sd.prod(), atol=0.05)
    np.testing.assert_allclose(np.asarray(res.posterior_scale()["w"])[:, 0], w.std(0), rtol=1e-5)
    assert res.num_divergences == 0 and res.divergences.shape == (2,)
    assert isinstance(res, MCMCResult) and res.mcmc.num_chains == 2
    # regression predictions: mean and noise variance per draw
    pred = res.predict(x[:5], num_samples=16)
    assert pred.mean.shape == pred.variance.shape == (16, 5, 1)
    np.testing.assert_allclose(np.asarray(pred.variance), NOISE**2, rtol=1e-6)
    ll = res.log_likelihood(x, y)
    assert ll.shape == (2, 800, N)


@pytest.mark.parametrize("guide", ["meanfield", "auto_normal"])
def test_svi_matches_the_closed_form_mean_field_optimum(guide):
    """For a Gaussian posterior the mean-field optimum has the exact mean and std 1 / sqrt(precision_ii).

    Tolerance: means within 0.1 posterior std, stds within 10 % (8 particles, 1500 Adam steps, cosine decay).
    """
    bnn, x, y, mean, _, prec = _conjugate()
    opt = optax.adam(optax.cosine_decay_schedule(0.05, 1500, alpha=0.01))
    res = svi(bnn, x, y, optimizer=opt, num_steps=1500, num_particles=8, guide=guide, progress=False)
    assert isinstance(res, SVIResult)
    loc = np.asarray(res.posterior_loc()["w"])[:, 0]
    scale = np.asarray(res.posterior_scale()["w"])[:, 0]
    mf_sd = 1 / np.sqrt(np.diag(prec))
    np.testing.assert_array_less(np.abs(loc - mean), 0.1 * mf_sd)
    np.testing.assert_allclose(scale, mf_sd, rtol=0.1)
    assert res.losses[-100:].mean() < res.losses[:100].mean()
    draws = res.sample_parameters(4000, rng_key=1)["w"][:, :, 0]
    np.testing.assert_allclose(np.asarray(draws.std(0)), scale, rtol=0.1)


def test_learned_noise_is_sampled_under_mcmc_and_fitted_under_svi():
    bnn0, x, y, *_ = _conjugate()
    bnn = bayesian(
        bnn0.network.apply,
        params={"w": jnp.zeros((2, 1))},
        num_data=N,
        prior=priors.Normal(1.0),
        likelihood=likelihoods.Normal(),
    )
    res = mcmc(bnn, x, y, num_warmup=150, num_samples=150, progress=False)
    noise = np.asarray(res.samples["noise_scale"])
    assert abs(np.median(noise) - NOISE) < 0.2
    pred = res.predict(x[:3], num_samples=10)
    np.testing.assert_allclose(
        np.asarray(pred.variance[:, 0, 0]),
        np.asarray(res.sample_parameters(10)["noise_scale"]) ** 2,
        rtol=1e-5,
    )
    fit = svi(bnn, x, y, optimizer=optax.adam(0.05), num_steps=400, num_particles=4, progress=False)
    assert abs(float(fit.params["noise_scale"]) - NOISE) < 0.2


def test_hmc_kernel_and_sequential_chains():
    bnn, x, y, mean, cov, _ = _conjugate()
    res = mcmc(
        bnn,
        x,
        y,
        kernel="hmc",
        num_warmup=200,
        num_samples=300,
        num_chains=2,
        kernel_options={"num_steps": 8, "trajectory_length": None},
        progress=False,
    )
    w = np.asarray(res.samples["w"])[:, :, 0]
    np.testing.assert_array_less(np.abs(w.mean(0) - mean), 0.3 * np.sqrt(np.diag(cov)))
    assert res.get_samples(group_by_chain=True)["w"].shape == (2, 300, 2, 1)


def test_divergences_are_counted_and_warned():
    bnn, x, y, *_ = _conjugate()
    with pytest.warns(DivergenceWarning, match="diverged"):
        res = mcmc(
            bnn,
            x,
            y,
            kernel="hmc",
            num_warmup=0,
            num_samples=20,
            progress=False,
            kernel_options={"step_size": 5.0, "adapt_step_size": False, "num_steps": 4},
        )
    assert res.num_divergences > 0
    assert res.num_divergences == int(np.asarray(res.mcmc.get_extra_fields()["diverging"]).sum())


class _RecordingScale:
    """A GradientTransformationExtraArgs that scales updates by exp(-uncertainty) and records nothing else."""

    @staticmethod
    def make():
        def init(params):
            return optax.EmptyState()

        def update(updates, state, params=None, *, uncertainty):
            return jax.tree_util.tree_map(lambda u: u * jnp.exp(-uncertainty), updates), state

        return optax.GradientTransformationExtraArgs(init, update)


def test_signal_reaches_an_extra_args_optimizer_and_the_history():
    bnn, *_ = _conjugate()
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(64, 3)), dtype=jnp.float32)
    y = jnp.asarray((rng.normal(size=64) > 0).astype(np.int32))
    clf = bayesian(lambda p, x: x @ p["w"], params={"w": jnp.zeros((3, 2))}, num_data=64)
    tx = optax.chain(optax.scale_by_adam(), _RecordingScale.make(), optax.scale_by_learning_rate(0.05))
    res = svi(
        clf,
        x,
        y,
        optimizer=tx,
        num_steps=20,
        batch_size=16,
        num_particles=2,
        signal="mutual_information",
        progress=False,
    )
    sig = np.array([h["signal"] for h in res.history])
    assert np.isfinite(sig).all() and (sig >= 0).all() and (sig <= math.log(2) + 1e-6).all()
    assert [h["epoch"] for h in res.history[:5]] == [0, 0, 0, 0, 1]
    # without a signal, the same optimizer cannot run: it requires the extra argument
    with pytest.raises(TypeError):
        svi(clf, x, y, optimizer=tx, num_steps=2, progress=False)
    # a learning rate the optimizer exposes is recorded
    res = svi(
        clf,
        x,
        y,
        optimizer=optax.inject_hyperparams(optax.adam)(learning_rate=0.01),
        num_steps=2,
        progress=False,
    )
    assert res.history[-1]["lr"] == pytest.approx(0.01)


def test_svi_can_resume_from_params():
    bnn, x, y, *_ = _conjugate()
    a = svi(bnn, x, y, optimizer=optax.adam(0.02), num_steps=200, progress=False)
    b = svi(bnn, x, y, optimizer=optax.sgd(0.0), num_steps=1, init_params=a.params, progress=False)
    np.testing.assert_allclose(np.asarray(b.params["w_loc"]), np.asarray(a.params["w_loc"]), rtol=1e-6)


BAD = [
    ({"x": np.full((N, 2), np.nan, np.float32)}, ValueError, "NaN or inf"),
    ({"y": np.full((N, 1), np.inf, np.float32)}, ValueError, "NaN or inf"),
    ({"y": np.zeros((N - 1, 1), np.float32)}, ValueError, "same batch size"),
    ({"y": np.zeros((N,), np.float32)}, ValueError, r"output's shape \(40, 1\)"),
    ({"x": np.zeros((N, 3), np.float32)}, ValueError, r"cannot be applied to x of shape \(40, 3\)"),
    ({"num_chains": 0}, ValueError, "num_chains must be an integer >= 1"),
    ({"num_samples": 0}, ValueError, "num_samples"),
    ({"chain_method": "threads"}, ValueError, "chain_method"),
    ({"kernel": "gibbs"}, ValueError, "kernel"),
    (
        {"x": np.zeros((N // 2, 2), np.float32), "y": np.zeros((N // 2, 1), np.float32)},
        ValueError,
        "num_data",
    ),
]


@pytest.mark.parametrize(("override", "err", "match"), BAD)
def test_bad_mcmc_input_is_named(override, err, match):
    bnn, x, y, *_ = _conjugate()
    kw = {"x": x, "y": y, **override}
    xx, yy = kw.pop("x"), kw.pop("y")
    with pytest.raises(err, match=match):
        mcmc(bnn, xx, yy, num_warmup=1, progress=False, **{"num_samples": 1, **kw})


def test_bad_svi_and_classification_input_is_named():
    x = jnp.ones((8, 3))
    clf = bayesian(lambda p, x: x @ p["w"], params={"w": jnp.zeros((3, 2))}, num_data=8)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        svi(clf, x, jnp.full(8, 2), optimizer=optax.adam(0.1), num_steps=1, progress=False)
    with pytest.raises(TypeError, match="integer"):
        svi(clf, x, jnp.zeros(8), optimizer=optax.adam(0.1), num_steps=1, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        svi(
            clf,
            x,
            jnp.zeros(8, jnp.int32),
            optimizer=optax.adam(0.1),
            num_steps=1,
            batch_size=9,
            progress=False,
        )
    with pytest.raises(TypeError, match="optax"):
        svi(clf, x, jnp.zeros(8, jnp.int32), optimizer="adam", num_steps=1, progress=False)
    with pytest.raises(ValueError, match="guide"):
        svi(
            clf,
            x,
            jnp.zeros(8, jnp.int32),
            optimizer=optax.adam(0.1),
            num_steps=1,
            guide="lowrank",
            progress=False,
        )
    with pytest.raises(ValueError, match="num_particles >= 2"):
        svi(
            clf,
            x,
            jnp.zeros(8, jnp.int32),
            optimizer=optax.adam(0.1),
            num_steps=1,
            signal="mutual_information",
            progress=False,
        )
    with pytest.raises(FloatingPointError, match="loss became"):
        svi(clf, x, jnp.zeros(8, jnp.int32), optimizer=optax.sgd(1e30), num_steps=5, progress=False)
    res = svi(clf, x, jnp.zeros(8, jnp.int32), optimizer=optax.adam(0.1), num_steps=1, progress=False)
    with pytest.raises(ValueError, match="NaN or inf"):
        res.predict(jnp.full((2, 3), jnp.inf))


def test_extra_args_pass_the_guide_scale_to_the_optimizer():
    """A per-parameter transformation sees posterior_scale= shaped like the updates, with the guide's σ."""
    bnn, x, y, *_ = _conjugate()
    seen = []

    def by_sigma():
        def update(updates, state, params=None, *, posterior_scale):
            assert jax.tree_util.tree_structure(posterior_scale) == jax.tree_util.tree_structure(updates)
            jax.debug.callback(lambda s: seen.append(np.asarray(s)), posterior_scale["w_loc"])
            return jax.tree_util.tree_map(lambda u, s: u * s / jnp.mean(s), updates, posterior_scale), state

        return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)

    res = svi(
        bnn,
        x,
        y,
        optimizer=optax.chain(optax.sgd(0.01), by_sigma()),
        num_steps=3,
        extra_args=posterior_scale_args,
        progress=False,
    )
    assert len(seen) == len(res.history) == 3
    np.testing.assert_allclose(seen[0], 0.1)  # init_scale
    assert not np.allclose(seen[-1], 0.1)  # the σ the optimizer sees follows the guide
