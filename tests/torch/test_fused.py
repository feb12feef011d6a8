"""The fused per-parameter rule update (uncertlr.torch._fused) against the array-API reference rules."""

from __future__ import annotations

from contextlib import nullcontext
from unittest import mock

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given

from uncertlr.modulation import GradientNoise, GradSigmaRatio, ParamSignal, SigmaRatio, VarianceRatio
from uncertlr.torch import _fused as fused_module
from uncertlr.torch._fused import FusedRule, supports

RULES = {"P1": SigmaRatio, "P2": GradSigmaRatio, "P3": VarianceRatio}


def _reference(rule, sizes, grads, sigmas, noise=None):
    """One ``rule.update`` (and ``noise.update``) per segment and step, as the unfused modulator does."""
    states = [rule.init(torch.zeros(n)) for n in sizes]
    noise_states = [noise.init(torch.zeros(n)) for n in sizes] if noise else None
    out = []
    for g, sig in zip(grads, sigmas):
        scales = []
        for i, (gi, si) in enumerate(zip(g.split(sizes), sig.split(sizes) if sig is not None else sizes)):
            if noise is not None:
                si, noise_states[i] = noise.update(gi, noise_states[i])
            s, states[i] = rule.update(ParamSignal(gi, si), states[i])
            scales.append(s)
        out.append((torch.cat(scales), list(states)))
    return out


def _fused(rule, sizes, grads, sigmas, noise=None):
    f = FusedRule(
        rule,
        sizes,
        [rule.init(torch.zeros(n)) for n in sizes],
        noise,
        [noise.init(torch.zeros(n)) for n in sizes] if noise else None,
    )
    out = []
    for g, sig in zip(grads, sigmas):
        owned = sig.clone() if sig is not None else None
        s = f.update(g, owned, sigma_owned=True)
        if f.last_total is not None:  # the host path's sum of the factors, known without a pass
            assert f.last_total == pytest.approx(float(s.double().sum()), rel=1e-5, abs=1e-6)
        if (
            f.last_range is not None
        ):  # the compiled kernels' smallest and largest factor, known without a pass
            assert f.last_range == pytest.approx((float(s.min()), float(s.max())), rel=1e-6)
        out.append((s.clone(), [type(x)(*(v.clone() for v in x)) for x in f.states]))
    return out


def _inputs(draw_seed, sizes, steps, bad_step, scale_exp):
    gen = torch.Generator().manual_seed(draw_seed)
    p = sum(sizes)
    grads = [torch.randn(p, generator=gen) * 10.0**scale_exp for _ in range(steps)]
    sigmas = [torch.rand(p, generator=gen) + 1e-3 for _ in range(steps)]
    if bad_step is not None:  # a NaN gradient and an inf sigma in the first segment only
        grads[bad_step][0] = float("nan")
        sigmas[min(bad_step + 1, steps - 1)][1 % sizes[0]] = float("inf")
    grads[0][: sizes[0]] = 0.0  # a whole segment of zero gradient: P2's factors are exactly 1 there
    return grads, sigmas


@given(
    name=st.sampled_from(sorted(RULES)),
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    steps=st.integers(1, 6),
    warmup=st.integers(0, 3),
    renormalize=st.booleans(),
    decay=st.sampled_from([0.0, 0.5, 0.9]),
    kappa=st.sampled_from([-1.0, -0.5, 0.5, 2.0]),
    bad=st.booleans(),
    seed=st.integers(0, 2**16),
    scale_exp=st.integers(-20, 3),
    multi_tensor=st.booleans(),
    path=st.sampled_from(["native", "host", "general"]),
)
def test_fused_rule_equals_one_reference_update_per_segment(
    name, sizes, steps, warmup, renormalize, decay, kappa, bad, seed, scale_exp, multi_tensor, path
):
    rule = RULES[name](kappa=kappa, warmup=warmup, renormalize=renormalize, decay=decay)
    grads, sigmas = _inputs(seed, sizes, steps, steps // 2 if bad else None, scale_exp)
    ref = _reference(rule, sizes, grads, sigmas)
    # multi_tensor: the GPU's segment sums (one _foreach_norm), run on the CPU; path: the compiled kernels
    # (uncertlr.torch._native), the eager host path, or the general path an accelerator takes
    devices = fused_module.MULTI_TENSOR_DEVICES | ({"cpu"} if multi_tensor else set())
    eager = (
        mock.patch.object(FusedRule, "_native_kernels", lambda *a: None)
        if path != "native"
        else nullcontext()
    )
    general = (
        mock.patch.object(FusedRule, "_factors_on_host", lambda *a: None)
        if path == "general"
        else nullcontext()
    )
    with mock.patch.object(fused_module, "MULTI_TENSOR_DEVICES", devices), eager, general:
        got = _fused(rule, sizes, grads, sigmas)
    for (s_ref, st_ref), (s_got, st_got) in zip(ref, got):
        torch.testing.assert_close(s_got, s_ref, rtol=2e-5, atol=1e-6, equal_nan=True)
        for a, b in zip(st_got, st_ref):
            assert float(a.step) == float(b.step) and float(a.nonfinite) == float(b.nonfinite)
            torch.testing.assert_close(a.ema, b.ema, rtol=1e-5, atol=1e-6 * 10.0**scale_exp, equal_nan=True)
            torch.testing.assert_close(a.scale, b.scale, rtol=2e-5, atol=1e-6, equal_nan=True)


@given(
    name=st.sampled_from(sorted(RULES)),
    sizes=st.lists(st.integers(1, 50), min_size=1, max_size=3),
    steps=st.integers(1, 6),
    decay=st.sampled_from([0.0, 0.5, 0.99]),
    renormalize=st.booleans(),
    bad=st.booleans(),
    seed=st.integers(0, 2**16),
    native=st.booleans(),
)
def test_fused_gradient_noise_sigma_equals_the_reference_estimator(
    name, sizes, steps, decay, renormalize, bad, seed, native
):
    # (the fused σ is the estimator's up to a factor per segment, which every rule's ratio cancels)
    rule, noise = RULES[name](warmup=1, renormalize=renormalize), GradientNoise(decay=decay)
    grads, _ = _inputs(seed, sizes, steps, steps // 2 if bad else None, 0)
    ref = _reference(rule, sizes, grads, [None] * steps, noise)
    # native: the moments, σ and the measure in the compiled kernels' one pass (renormalize only)
    eager = mock.patch.object(FusedRule, "_native_kernels", lambda *a: None) if not native else nullcontext()
    with eager:
        got = _fused(rule, sizes, grads, [None] * steps, noise)
    # the variance is a difference of two moments scaled by 1 / corr^2 (~2,500 with decay 0.99 early on): float32
    # rounding, the reference's or the fused one's, reaches ~2e-4 of a factor there (renormalize=False)
    for (s_ref, _), (s_got, _) in zip(ref, got):
        torch.testing.assert_close(s_got, s_ref, rtol=1e-3, atol=1e-5, equal_nan=True)


def test_states_round_trip_and_only_builtin_rules_are_fused():
    rule = GradSigmaRatio(warmup=0)
    sizes = [3, 5]
    f = FusedRule(rule, sizes, [rule.init(torch.zeros(n)) for n in sizes])
    g, sig = torch.randn(8), torch.rand(8) + 0.1
    f.update(g, sig)
    saved = [type(s)(*(v.clone() for v in s)) for s in f.states]
    nxt = f.update(g, sig).clone()
    f.load(saved)
    torch.testing.assert_close(f.update(g, sig), nxt, rtol=0, atol=0)
    # sigma not owned: the caller's tensor is left untouched
    keep = sig.clone()
    f.update(g, sig)
    assert torch.equal(sig, keep)

    class Custom(SigmaRatio):
        pass

    assert supports(SigmaRatio()) and not supports(Custom())
    with pytest.raises(TypeError, match="no fused update"):
        FusedRule(Custom(), [2], [Custom().init(torch.zeros(2))])


def test_the_posterior_hands_the_modulator_its_last_sample_scale_only_while_it_is_current():
    """The mean-field posterior's cached exp(log σ): reused after a forward, recomputed after any change."""
    from uncertlr import priors
    from uncertlr.torch import Modulator, bayesian

    torch.manual_seed(0)
    bnn = bayesian(torch.nn.Linear(4, 3), num_data=32, prior=priors.Normal(1.0), init_scale=0.1)
    post = bnn.posterior
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    sc, fresh = post.detached_scale()  # no forward yet: computed afresh
    assert fresh and torch.equal(sc, post.log_scale.detach().exp())
    bnn.elbo(x, y).loss.backward()
    sc, fresh = post.detached_scale()
    assert not fresh and torch.equal(sc, post.log_scale.detach().exp())  # the forward's own tensor
    assert post.detached_scale()[0] is sc
    opt = torch.optim.Adam(bnn.parameters(), lr=0.1)
    opt.step()  # log σ changed in place: the cache is stale
    sc2, fresh = post.detached_scale()
    assert fresh and torch.equal(sc2, post.log_scale.detach().exp()) and not torch.equal(sc2, sc)
    bnn.elbo(x, y)
    bnn.load_state_dict({k: v + 0.5 if k.endswith("log_scale") else v for k, v in bnn.state_dict().items()})
    assert torch.equal(post.detached_scale()[0], post.log_scale.detach().exp())
    with torch.no_grad():  # σ that underflows is floored, as posterior.scale does
        post.log_scale[:2] = -200.0
    bnn.elbo(x, y)
    sc, fresh = post.detached_scale()
    assert fresh and torch.equal(sc, post.scale.detach()) and float(sc.min()) > 0
    # unfloored (what the fused built-in rules ask for): the cached σ as it is, zeros included
    sc, fresh = post.detached_scale(floor=False)
    assert not fresh and float(sc[:2].abs().max()) == 0.0 and torch.equal(sc, post.log_scale.detach().exp())

    # and the modulated steps are bit-identical with and without the cache, σ that underflowed included
    # (the cached σ is 0 there, the recomputed one floored: the rule's factors are the same)
    def run(cache: bool) -> list[torch.Tensor]:
        torch.manual_seed(1)
        net = bayesian(
            torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)), num_data=32
        )
        with torch.no_grad():
            net.posterior.log_scale[:3] = -200.0
        if not cache:
            net.posterior.detached_scale = lambda floor=True: (net.posterior.scale.detach(), True)
        o = torch.optim.Adam(net.parameters(), lr=1e-2)
        Modulator(GradSigmaRatio(warmup=0), sigma=net).attach(o)
        for _ in range(6):
            o.zero_grad()
            net.elbo(x, y).loss.backward()
            o.step()
        return [p.detach().clone() for p in net.parameters()]

    for a, b in zip(run(True), run(False)):
        assert torch.equal(a, b)


@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(3.3e38, 3.5e38)))
def test_host_means_round_to_float32_as_numpy_does(x):
    from uncertlr.torch._fused import _float32

    with np.errstate(over="ignore"):
        want = float(np.float32(x))
    got = _float32(x)
    assert (got == want) or (np.isnan(got) and np.isnan(want))
