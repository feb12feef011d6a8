"""uncertlr.jax.modulation: optax transformations, parity with the torch Modulator, jit and pmean."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402
from numpyro.infer import SVI, TraceMeanField_ELBO  # noqa: E402

from uncertlr.jax import bayesian  # noqa: E402
from uncertlr.jax.modulation import (  # noqa: E402
    ScaleByUncertaintyState,
    feed,
    for_numpyro,
    scale_by_grad_uncertainty,
    scale_by_uncertainty,
)
from uncertlr.modulation import GradientNoise, GradSigmaRatio, Ratio, SigmaRatio, ZScore  # noqa: E402
from uncertlr.torch import Modulator  # noqa: E402

pytestmark = pytest.mark.jax

SIGNALS = [0.9, 1.1, 0.7, 2.5, float("nan"), 0.3, 1.0, float("inf"), 4.0, 0.5, 0.6, 1.3]


def _torch_global_scales(rule, signals):
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([p], lr=1.0)
    mod = Modulator(rule).attach(opt)
    for u in signals:
        p.grad = torch.ones(3)
        mod.observe(u)
        opt.step()
    return [r["scale"] for r in mod.history]


def _optax_global_scales(rule, signals, jit=False):
    tx = scale_by_uncertainty(rule)
    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    out = []
    for u in signals:
        ones = jax.tree.map(jnp.ones_like, params)
        upd, state = update(ones, state, params, uncertainty=jnp.float32(u))
        assert float(upd["b"][1, 1]) == float(upd["a"][0])
        out.append(float(upd["a"][0]))
    return out, state


@pytest.mark.parametrize("rule", [Ratio(warmup=2), Ratio(kappa=0.5, warmup=0, decay=0.5), ZScore(warmup=3)])
def test_global_parity_with_torch(rule):
    want = _torch_global_scales(rule, SIGNALS)
    got, state = _optax_global_scales(rule, SIGNALS)
    # the optax state is float32 on the device; the torch Modulator keeps its host state in float64:
    # the same factors up to float32 rounding accumulated over the steps
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert int(state.rule_state.nonfinite) == 2
    assert len(set(np.round(want, 6))) > 2  # the sequence exercised the rule


def test_jit_gives_the_same_scales():
    eager, _ = _optax_global_scales(Ratio(warmup=1), SIGNALS)
    jitted, _ = _optax_global_scales(Ratio(warmup=1), SIGNALS, jit=True)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)


@pytest.mark.parametrize("rule", [GradSigmaRatio(warmup=1), SigmaRatio(warmup=0, renormalize=False)])
def test_per_parameter_parity_with_torch(rule):
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(6, 3, 4)).astype(np.float32)
    sigmas = np.exp(rng.normal(size=(6, 3, 4))).astype(np.float32)
    sigmas[3, 1, 2] = np.nan  # a non-finite sigma holds the previous factors in both adapters

    p = torch.nn.Parameter(torch.zeros(3, 4))
    opt = torch.optim.SGD([p], lr=1.0)
    current = {"sigma": torch.ones(3, 4)}
    mod = Modulator(rule, sigma=lambda: {p: current["sigma"]}).attach(opt)
    tx = jax.jit(scale_by_grad_uncertainty(rule).update)
    state = scale_by_grad_uncertainty(rule).init({"w": jnp.zeros((3, 4))})
    for g, s in zip(grads, sigmas):
        current["sigma"] = torch.from_numpy(s)
        p.grad = torch.from_numpy(g)
        opt.step()
        want = mod.last_scale[0].numpy()
        upd, state = tx({"w": jnp.ones((3, 4))}, state, posterior_scale={"w": s}, grads={"w": g})
        np.testing.assert_allclose(np.asarray(upd["w"]), want, rtol=1e-5)
    assert int(state.rule_state["w"].nonfinite) == 1


def test_gradient_noise_parity_with_torch():
    rule = SigmaRatio(warmup=2, renormalize=True)
    rng = np.random.default_rng(1)
    grads = rng.normal(scale=[[1.0, 2.0, 3.0]], size=(8, 2, 3)).astype(np.float32)
    p = torch.nn.Parameter(torch.zeros(2, 3))
    opt = torch.optim.SGD([p], lr=1.0)
    mod = Modulator(rule, noise=GradientNoise(decay=0.8)).attach(opt)
    t = scale_by_grad_uncertainty(rule, noise=GradientNoise(decay=0.8))
    state = t.init(jnp.zeros((2, 3)))
    for g in grads:
        p.grad = torch.from_numpy(g)
        opt.step()
        upd, state = t.update(jnp.asarray(g), state)
        np.testing.assert_allclose(np.asarray(upd) / g, mod.last_scale[0].numpy(), rtol=1e-4)


def test_chain_with_adam_scales_the_proposed_step():
    params = {"w": jnp.linspace(-1.0, 1.0, 5)}
    grads = {"w": jnp.array([0.3, -1.0, 2.0, 0.0, 5.0])}

    class Const:
        per_parameter = False

        def init(self, like=None):
            return Ratio().init(like)

        def update(self, signal, state):
            return jnp.float32(0.25), state

    plain = optax.chain(optax.scale_by_adam(), optax.scale_by_learning_rate(1e-2))
    modded = optax.chain(
        optax.scale_by_adam(), scale_by_uncertainty(Const()), optax.scale_by_learning_rate(1e-2)
    )
    sp, sm = plain.init(params), modded.init(params)
    for _ in range(3):
        up, sp = plain.update(grads, sp, params)
        um, sm = modded.update(grads, sm, params, uncertainty=1.0)
        np.testing.assert_allclose(um["w"], 0.25 * up["w"], rtol=1e-6)


def test_misuse_is_reported():
    with pytest.raises(ValueError, match="per-parameter"):
        scale_by_uncertainty(GradSigmaRatio())
    with pytest.raises(ValueError, match="global"):
        scale_by_grad_uncertainty(Ratio())
    tx = scale_by_uncertainty(Ratio())
    st = tx.init(jnp.zeros(2))
    with pytest.raises(ValueError, match="uncertainty="):
        tx.update(jnp.ones(2), st)
    with pytest.raises(ValueError, match="scalar"):
        tx.update(jnp.ones(2), st, uncertainty=jnp.ones(2))
    tg = scale_by_grad_uncertainty(SigmaRatio())
    sg = tg.init({"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match="posterior_scale"):
        tg.update({"w": jnp.ones(2)}, sg)
    with pytest.raises(ValueError, match="structure"):
        tg.update({"w": jnp.ones(2)}, sg, posterior_scale={"v": jnp.ones(2)})


PMEAN_SCRIPT = textwrap.dedent(
    """
    import os
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    from uncertlr.modulation import Ratio
    from uncertlr.jax.modulation import scale_by_uncertainty
    assert jax.device_count() == 2, jax.devices()
    rule = Ratio(warmup=1)
    tx = scale_by_uncertainty(rule, axis_name="d")
    mesh = jax.make_mesh((2,), ("d",))

    def step(g, state, u):
        return tx.update(g, state, uncertainty=u[0])

    f = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(), P("d")), out_specs=(P(), P())))
    state = tx.init(jnp.zeros(3))
    ref = rule.init(np.zeros((), np.float32))
    for pair in ([1.0, 3.0], [4.0, 12.0], [0.5, 0.5], [2.0, 6.0]):
        u = jax.device_put(jnp.asarray(pair, jnp.float32), jax.NamedSharding(mesh, P("d")))
        upd, state = f(jnp.ones(3), state, u)
        want, ref = rule.update(np.float32(np.mean(pair)), ref)
        np.testing.assert_allclose(np.asarray(upd), float(want), rtol=1e-6)
    print("PMEAN-OK", float(state.rule_state.scale))
    """
)


def test_pmean_across_two_devices_under_jit():
    # two host devices, on top of the test session's XLA flags (tests/conftest.py)
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    env = {**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu"}
    res = subprocess.run(
        [sys.executable, "-c", PMEAN_SCRIPT], capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "PMEAN-OK" in res.stdout


def _numpyro_svi(tx):
    x = jax.random.normal(jax.random.key(0), (16, 3))
    y = (x[:, 0] > 0).astype(jnp.int32)
    bnn = bayesian(lambda p, x: x @ p["w"], params={"w": jnp.zeros((3, 2))}, num_data=16, init_scale=0.1)
    svi = SVI(bnn.model, bnn.guide, tx, TraceMeanField_ELBO())
    return svi, svi.init(jax.random.key(1), x, y), x, y


def _host_scales(rule, signals):
    out, st = [], rule.init(np.zeros((), np.float32))
    for u in signals:
        s, st = rule.update(np.float32(u), st)
        out.append(float(s))
    return out


def test_the_modulator_runs_inside_numpyro_svi_on_fed_signals():
    """for_numpyro + feed: each svi.update sees the value fed before it, exactly as a schedule of the
    rule's factors computed on the host would scale the same Adam steps; feeding never recompiles."""
    rule, signals = Ratio(warmup=1), [0.9, 1.1, 0.7, 2.5, 0.3, 1.0, 4.0, 0.5]
    chain = lambda mid: optax.chain(optax.scale_by_adam(), mid, optax.scale_by_learning_rate(0.05))  # noqa: E731
    svi, state, x, y = _numpyro_svi(for_numpyro(chain(scale_by_uncertainty(rule)), feed={"uncertainty": 0.0}))
    update = jax.jit(svi.update)
    for u in signals:
        state = feed(state, uncertainty=u)
        state, _ = update(state, x, y)
    assert update._cache_size() == 1
    want = jnp.asarray(_host_scales(rule, signals))
    assert len(set(np.round(np.asarray(want), 5))) > 2
    ref_svi, ref, _, _ = _numpyro_svi(chain(optax.scale_by_schedule(lambda count: want[count])))
    ref_update = jax.jit(ref_svi.update)
    for _ in signals:
        ref, _ = ref_update(ref, x, y)
    for k, v in ref_svi.get_params(ref).items():
        np.testing.assert_allclose(np.asarray(svi.get_params(state)[k]), np.asarray(v), rtol=1e-5, atol=1e-7)


def test_extra_args_reach_the_modulator_inside_numpyro_svi():
    """extra_args(params, loss) is computed inside the step: here the loss itself is the signal."""
    rule = Ratio(warmup=0)
    tx = optax.chain(optax.scale_by_adam(), scale_by_uncertainty(rule), optax.scale_by_learning_rate(0.05))
    svi, state, x, y = _numpyro_svi(for_numpyro(tx, extra_args=lambda params, loss: {"uncertainty": loss}))
    losses = []
    for _ in range(5):
        state, loss = svi.update(state, x, y)
        losses.append(float(loss))
    mod = [s for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, ScaleByUncertaintyState))
           if isinstance(s, ScaleByUncertaintyState)][0]  # fmt: skip
    assert float(mod.rule_state.scale) == pytest.approx(_host_scales(rule, losses)[-1], rel=1e-5)


def test_feed_refuses_what_would_break_or_recompile_the_step():
    tx = for_numpyro(scale_by_uncertainty(Ratio()), feed={"uncertainty": 0.0})
    state = tx.init(jnp.zeros(2))
    with pytest.raises(ValueError, match="not among the names"):
        feed(state, signal=1.0)
    with pytest.raises(ValueError, match="keep its shape"):
        feed(state, uncertainty=jnp.ones(2))
    with pytest.raises(ValueError, match="no for_numpyro"):
        feed(optax.adam(0.1).init(jnp.zeros(2)), uncertainty=1.0)
    with pytest.raises(ValueError, match="extra_args"):
        for_numpyro(optax.adam(0.1))
    with pytest.raises(TypeError, match="GradientTransformation"):
        for_numpyro("adam", feed={"uncertainty": 0.0})
