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

from uncertlr.jax.modulation import scale_by_grad_uncertainty, scale_by_uncertainty  # noqa: E402
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
    np.testing.assert_allclose(got, want, rtol=1e-6)
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
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
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
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    res = subprocess.run(
        [sys.executable, "-c", PMEAN_SCRIPT], capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "PMEAN-OK" in res.stdout
