"""uncertlr.jax.svi_step: the public init/update pair, the sites it starts from, the single-particle path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from numpyro.distributions import constraints
from numpyro.infer import TraceMeanField_ELBO

from uncertlr import likelihoods, priors, select
from uncertlr.jax import StepInfo, SVIState, bayesian, svi, svi_step
from uncertlr.jax._host import param_sites as _param_sites
from uncertlr_models.flax_mlp import FlaxMLP

KEY = jax.random.key(0)
X = jax.random.normal(KEY, (24, 5))
Y = jnp.arange(24) % 3


def _classifier(**kw):
    net = FlaxMLP(hidden=(4,), out_features=3, activation="tanh")
    return bayesian(net, params=net.init(KEY, X), num_data=24, **kw)


def _regressor():
    return bayesian(
        lambda p, x: x @ p["w"] + p["b"],
        params={"w": jnp.zeros((5, 1)), "b": jnp.zeros(1)},
        num_data=24,
        select=select.by_name("w"),
        likelihood=likelihoods.Normal(),
    )


@pytest.mark.parametrize("make", [lambda: _classifier(select=select.last_layer()), _regressor])
def test_initial_params_are_the_sites_numpyro_finds_by_tracing(make):
    """The analytic start (no tracing, no op-by-op compiles) equals tracing bnn.model and bnn.guide."""
    bnn = make()
    y = Y if isinstance(bnn.likelihood, likelihoods.Categorical) else jnp.zeros((24, 1))
    traced = {**_param_sites(bnn.model, KEY, X, y), **_param_sites(bnn.guide, KEY, X, y)}
    ours, cons = bnn.initial_params(), bnn.param_constraints()
    assert set(ours) == set(traced) == set(cons)
    for name, (value, constraint) in traced.items():
        np.testing.assert_array_equal(np.asarray(ours[name]), np.asarray(value), err_msg=name)
        assert np.asarray(ours[name]).dtype == np.asarray(value).dtype, name
        assert type(cons[name]) is type(constraint), name
    assert any(c is constraints.positive for c in cons.values())


def test_single_particle_path_draws_the_documented_weights_and_is_unbiased():
    """One particle skips the particle axis: w = loc + scale * ε, ε one N(0, 1) draw of all P weights
    cut in registration order; averaged over keys it is NumPyro's TraceMeanField_ELBO / N."""
    bnn = _classifier(prior=priors.Normal(0.7), init_scale=0.05)
    params = {k: jnp.asarray(v) for k, v in bnn.initial_params().items()}
    terms = jax.jit(bnn.elbo)(params, jax.random.key(3), X, Y)
    assert terms.outputs.shape == (1, 24, 3)
    eps = np.asarray(jax.random.normal(jax.random.key(3), (bnn.num_params,)))
    sizes = np.cumsum([0] + [int(np.prod(bnn.shapes[n])) for n in bnn.random_names])
    w = {
        n: params[f"{n}_loc"] + params[f"{n}_scale"] * eps[a:b].reshape(bnn.shapes[n])
        for n, a, b in zip(bnn.random_names, sizes[:-1], sizes[1:])
    }
    np.testing.assert_allclose(
        np.asarray(terms.outputs[0]), np.asarray(bnn.apply(w, X)), rtol=1e-6, atol=1e-6
    )
    logp = jax.nn.log_softmax(bnn.apply(w, X))[jnp.arange(24), Y]
    np.testing.assert_allclose(float(terms.nll), float(-logp.mean()), rtol=1e-6)
    losses = jax.jit(jax.vmap(lambda k: bnn.elbo(params, k, X, Y).loss))(
        jax.random.split(jax.random.key(4), 3000)
    )
    elbo = TraceMeanField_ELBO(num_particles=3000)
    ref = jax.jit(lambda k: elbo.loss(k, params, bnn.model, bnn.guide, X, Y))(jax.random.key(5))
    assert float(losses.mean()) == pytest.approx(float(ref) / 24, rel=3e-3)


@pytest.mark.parametrize("antithetic", [True, False])
def test_update_is_plain_gradient_descent_on_the_documented_objective(antithetic):
    """With SGD, one update moves the unconstrained parameters by -lr * grad of bnn.elbo at the key
    fold_in(rng_key, step) (antithetic noise: fold_in(rng_key, step // 2), negated on odd steps), stds
    as log σ; the step count, the keys and StepInfo follow."""
    bnn = _classifier(init_scale=0.1, antithetic=antithetic)
    step = svi_step(bnn, optax.sgd(0.1), signal="entropy")
    state = step.init(7)
    assert isinstance(state, SVIState) and int(state.step) == 0
    for _ in range(3):
        new, info = step.update(state, X, Y)
        t = int(state.step)
        base = jax.random.wrap_key_data(state.rng_key)
        key = jax.random.fold_in(base, t // 2 if antithetic else t)
        sign = (-1.0) ** t if antithetic else 1.0

        def loss(u):
            p = {k: jnp.exp(v) if k.endswith("_scale") else v for k, v in u.items()}
            return bnn.elbo(p, key, X, Y, sign=sign).loss  # noqa: B023

        value, grads = jax.jit(jax.value_and_grad(loss))(state.params)
        for k in state.params:
            np.testing.assert_allclose(
                np.asarray(new.params[k]), np.asarray(state.params[k] - 0.1 * grads[k]), rtol=1e-5, atol=1e-7
            )
        assert isinstance(info, StepInfo) and float(info.loss) == pytest.approx(float(value), rel=1e-5)
        assert 0 < float(info.signal) <= np.log(3) + 1e-6 and np.isnan(float(info.learning_rate))
        assert int(new.step) == int(state.step) + 1
        np.testing.assert_array_equal(np.asarray(new.rng_key), np.asarray(state.rng_key))
        state = new
    params = step.params(state)
    np.testing.assert_allclose(
        np.asarray(params[f"{bnn.random_names[0]}_scale"]),
        np.exp(np.asarray(state.params[f"{bnn.random_names[0]}_scale"])),
        rtol=1e-6,
    )


def test_own_loop_and_svi_take_the_same_steps():
    """Full-batch: a Python loop over step.update and svi() (its compiled while-loop) agree."""
    bnn = _classifier()
    opt = optax.adam(0.05)
    step = svi_step(bnn, opt)
    state = step.init(3)
    for _ in range(6):
        state, _ = step.update(state, X, Y)
    fit = svi(bnn, X, Y, optimizer=opt, num_steps=6, rng_key=3, progress=False)
    for k, v in step.params(state).items():
        np.testing.assert_allclose(np.asarray(fit.params[k]), np.asarray(v), rtol=1e-5, atol=1e-7)


def test_states_of_another_run_are_refused_by_name():
    bnn = _classifier()
    adam = svi_step(bnn, optax.adam(0.1))
    sgd = svi_step(bnn, optax.sgd(0.1))
    with pytest.raises(ValueError, match="another one"):
        adam.check_state(sgd.init(0))
    with pytest.raises(ValueError, match="missing"):
        adam.init(0, params={"nothing": jnp.zeros(1)})
    bad = dict(bnn.initial_params())
    name = f"{bnn.random_names[0]}_loc"
    bad[name] = np.zeros((1, 1), np.float32)
    with pytest.raises(ValueError, match="shapes differ"):
        adam.init(0, params=bad)
    with pytest.raises(TypeError, match="SVIState"):
        adam.check_state({"params": {}})
    with pytest.raises(ValueError, match="threefry"):
        adam.init(jax.random.key(0, impl="rbg"))
    with pytest.raises(ValueError, match="auto_normal.*pass a batch"):
        svi_step(bnn, optax.adam(0.1), guide="auto_normal").init(0)


def test_cap_scale_step_cuts_each_layers_log_std_step_and_leaves_the_means_alone():
    """svi_step with optax.chain(adam, cap_scale_step): every {name}_scale leaf (log σ to the optimizer)
    moves by the cap in RMS on Adam's first step, every other leaf exactly as without it."""
    from uncertlr.jax import cap_scale_step
    from uncertlr.modulation import LayerScaleCap

    bnn = _classifier(init_scale=0.1)
    plain = svi_step(bnn, optax.adam(0.1))
    capped = svi_step(bnn, optax.chain(optax.adam(0.1), cap_scale_step(LayerScaleCap(max_step=1e-3))))
    s0, c0 = plain.init(5), capped.init(5)
    s1, _ = plain.update(s0, X, Y)
    c1, _ = capped.update(c0, X, Y)
    scale_keys = [f"{n}_scale" for n in bnn.random_names]
    assert scale_keys
    for k in s0.params:
        taken = np.asarray(c1.params[k] - c0.params[k])
        proposed = np.asarray(s1.params[k] - s0.params[k])
        if k in scale_keys:
            assert np.sqrt(np.mean(taken**2)) == pytest.approx(1e-3, rel=1e-3)
            np.testing.assert_allclose(taken, proposed * 1e-3 / np.sqrt(np.mean(proposed**2)), rtol=1e-3)
        else:
            np.testing.assert_array_equal(taken, proposed)
    with pytest.raises(TypeError, match="per-layer rule"):
        cap_scale_step(optax.adam(0.1))


def test_antithetic_particles_and_steps_negate_the_same_draw():
    """A linear network shows the noise: its outputs are x @ (loc + scale * ε) exactly."""
    bnn = bayesian(lambda p, x: x @ p["w"], params={"w": jnp.zeros((5, 3))}, num_data=24)
    params = {"w_loc": jnp.zeros((5, 3)), "w_scale": jnp.ones((5, 3))}
    out = bnn.elbo(params, 4, X, Y, num_particles=5).outputs  # 3 draws and 2 negations
    np.testing.assert_allclose(np.asarray(out[3:]), -np.asarray(out[:2]), rtol=1e-6)
    assert not np.allclose(np.asarray(out[2]), -np.asarray(out[0]))
    one = bnn.elbo(params, 4, X, Y).outputs
    np.testing.assert_allclose(np.asarray(bnn.elbo(params, 4, X, Y, sign=-1.0).outputs), -np.asarray(one))
    plain = bayesian(lambda p, x: x @ p["w"], params={"w": jnp.zeros((5, 3))}, num_data=24, antithetic=False)
    out = plain.elbo(params, 4, X, Y, num_particles=4).outputs
    assert not np.allclose(np.asarray(out[2:]), -np.asarray(out[:2]))
