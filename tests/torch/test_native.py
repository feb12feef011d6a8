"""The compiled kernels of the per-parameter rules (uncertlr.torch._native): built once, cached, optional."""

from __future__ import annotations

import contextlib
import subprocess
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from uncertlr.modulation import GradSigmaRatio, SigmaRatio, VarianceRatio
from uncertlr.torch import Modulator, _native, bayesian
from uncertlr.torch._fused import FusedRule

HAS_CC = _native._compiler() is not None
needs_cc = pytest.mark.skipif(not HAS_CC, reason="no C compiler on PATH")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty cache folder and no library loaded; the process's library is forgotten again afterwards."""
    monkeypatch.setenv("UNCERTLR_CACHE", str(tmp_path))
    _native._reset()
    yield tmp_path
    _native._reset()


def _compiled_or_eager(owner, native):
    """A context in which ``owner``'s ``_native_kernels`` finds the compiled kernels (``native``) or none."""
    return (
        contextlib.nullcontext() if native else mock.patch.object(owner, "_native_kernels", lambda *a: None)
    )


def _updates(rule, sizes, steps, dtype, native, seed=0):
    gen = torch.Generator().manual_seed(seed)
    f = FusedRule(rule, sizes, [rule.init(torch.zeros(n, dtype=dtype)) for n in sizes])
    patch = _compiled_or_eager(FusedRule, native)
    out = []
    with patch:
        for _ in range(steps):
            g = torch.randn(sum(sizes), generator=gen, dtype=dtype)
            g[sizes[0] : sizes[0] + sizes[1]] = (
                0.0  # a whole segment of zero gradient (P2: factors exactly 1)
            )
            g[:500] = 0.0  # dead units inside a segment (P2: the segment's extreme factor)
            sigma = torch.rand(sum(sizes), generator=gen, dtype=dtype) * 1e-3
            out.append((f.update(g, sigma).clone(), f.last_range))
    return out, f


@needs_cc
def test_the_kernels_build_once_into_the_cache_and_are_read_back(fresh):
    assert _native.status().startswith("loaded:")
    built = list((fresh / "native").glob("uncertlr_native-*.so"))
    assert len(built) == 1 and _native.kernels().path == built[0]
    stamp = built[0].stat().st_mtime_ns
    _native._reset()
    real = subprocess.run
    compiles: list[list[str]] = []

    def counting(cmd, *a, **kw):
        if "-o" in cmd:
            compiles.append(cmd)
        return real(cmd, *a, **kw)

    with mock.patch.object(_native.subprocess, "run", counting):
        assert _native.kernels() is not None
    assert compiles == [] and built[0].stat().st_mtime_ns == stamp


@needs_cc
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "rule",
    [GradSigmaRatio(warmup=2), GradSigmaRatio(kappa=0.3, warmup=0), SigmaRatio(kappa=-1.0), VarianceRatio()],
    ids=["P2", "P2-kappa0.3", "P1", "P3"],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_the_kernels_give_the_eager_factors_on_segments_large_enough_to_run_in_parallel(rule, dtype, threads):
    sizes = [70_000, 300, 40_000, 7]  # two segments over the kernels' grain (32,768): split across threads
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        native, f = _updates(rule, sizes, 4, dtype, native=True)
    finally:
        torch.set_num_threads(before)
    eager, g = _updates(rule, sizes, 4, dtype, native=False)
    assert _native.kernels() is not None
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    for (a, rng), (b, _) in zip(native, eager):
        torch.testing.assert_close(a, b, **tol)
        assert rng == pytest.approx((float(b.min()), float(b.max())), rel=1e-5)
    for x, y in zip(f.states, g.states):
        torch.testing.assert_close(x.scale, y.scale, **tol)
        torch.testing.assert_close(x.ema, y.ema, **tol)
    if isinstance(rule, GradSigmaRatio) and rule.warmup == 0:
        last = native[-1][0]
        assert torch.equal(last[sizes[0] : sizes[0] + sizes[1]], torch.ones(sizes[1], dtype=dtype))
        # at step 4 the EMA of the dead units' gradient is still 0: the lowest factor for kappa > 0
        assert float(last[:500].max()) == pytest.approx(float(last[: sizes[0]].min()), rel=1e-6)


def test_turned_off_the_eager_path_runs(fresh, monkeypatch):
    monkeypatch.setenv(_native.ENV, "0")
    assert _native.kernels() is None and _native.status() == "disabled: disabled by UNCERTLR_NATIVE=0"
    out, _ = _updates(GradSigmaRatio(warmup=0), [50, 20, 5], 3, torch.float32, native=True)
    ref, _ = _updates(GradSigmaRatio(warmup=0), [50, 20, 5], 3, torch.float32, native=False)
    for (a, rng), (b, _) in zip(out, ref):
        assert rng is None and torch.equal(a, b)
    assert not (fresh / "native").exists()


def test_a_compiler_that_fails_leaves_the_eager_path_and_says_why(fresh, monkeypatch):
    monkeypatch.setenv("CC", "false")  # exits 1, writes nothing
    assert _native.kernels() is None
    assert _native.status().startswith("unavailable: the build failed")
    out, _ = _updates(SigmaRatio(), [30, 30, 3], 2, torch.float32, native=True)
    assert all(rng is None for _, rng in out)  # the eager path's update


@needs_cc
def test_the_modulators_record_reads_the_kernels_range_and_sum():
    torch.manual_seed(0)
    bnn = bayesian(
        torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)), num_data=64
    )
    opt = torch.optim.Adam(bnn.parameters(), lr=1e-2)
    mod = Modulator(GradSigmaRatio(warmup=1), sigma=bnn).attach(opt)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    for _ in range(4):
        opt.zero_grad()
        bnn.elbo(x, y).loss.backward()
        opt.step()
        (s,) = mod.last_scale
        rec = mod.history[-1]
        assert rec["scale_min"] == pytest.approx(float(s.min()), rel=1e-6)
        assert rec["scale_max"] == pytest.approx(float(s.max()), rel=1e-6)
        assert rec["scale"] == pytest.approx(float(s.mean()), rel=1e-5)
        assert mod._mode.targets[0].fused.last_range is not None  # the kernels' path, not the eager one


@needs_cc
def test_a_state_read_between_updates_is_not_changed_by_the_arrays_the_kernels_reuse():
    rule, sizes = GradSigmaRatio(warmup=0), [40, 9]
    gen = torch.Generator().manual_seed(3)
    f = FusedRule(rule, sizes, [rule.init(torch.zeros(n)) for n in sizes])
    sigma = torch.rand(49, generator=gen) + 0.1
    f.update(torch.randn(49, generator=gen), sigma)
    saved = f.states
    kept = [(s.ema.clone(), s.scale.clone()) for s in saved]
    for _ in range(
        3
    ):  # the compiled path alternates between two arrays: an update writes the one before last
        f.update(torch.randn(49, generator=gen), sigma)
    assert f.last_range is not None  # the kernels ran
    for s, (ema, scale) in zip(saved, kept):
        assert torch.equal(s.ema, ema) and torch.equal(s.scale, scale)


@needs_cc
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rule", [GradSigmaRatio(warmup=1), SigmaRatio(warmup=0)], ids=["P2", "P1"])
def test_the_gradient_noise_moments_in_the_kernels_pass_equal_the_eager_estimate(rule, threads):
    from uncertlr.modulation import GradientNoise

    sizes, noise = [50_000, 40_000, 11], GradientNoise(decay=0.9)

    def run(native: bool):
        gen = torch.Generator().manual_seed(5)
        p = sum(sizes)
        f = FusedRule(
            rule,
            sizes,
            [rule.init(torch.zeros(n)) for n in sizes],
            noise,
            [noise.init(torch.zeros(n)) for n in sizes],
        )
        patch = _compiled_or_eager(FusedRule, native)
        out = []
        with patch:
            for step in range(5):
                g = torch.randn(p, generator=gen)
                if step == 2:
                    g[sizes[0] + 7] = float(
                        "inf"
                    )  # the second segment keeps its moments (and factors) this step
                out.append(f.update(g, None).clone())
        return out, f

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        native, f = run(True)
    finally:
        torch.set_num_threads(before)
    eager, g = run(False)
    assert f.last_range is not None and g.last_range is None  # each took its own path
    for a, b in zip(native, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for x, y in zip(f.noise_states, g.noise_states):
        assert float(x.count) == float(y.count)
        torch.testing.assert_close(x.mean, y.mean, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(x.sq, y.sq, rtol=1e-6, atol=1e-7)
    assert [float(s.count) for s in f.noise_states] == [5.0, 4.0, 5.0]
    # P2's EMA takes the inf in (its factors are kept that step); P1's σ comes from the kept moments, finite
    assert [float(s.nonfinite) for s in f.states] == (
        [0.0, 1.0, 0.0] if isinstance(rule, GradSigmaRatio) else [0.0] * 3
    )


# ----------------------------------------------------------------------------- the mean-field sample and KL


def _sample_kl(loc, log_scale, eps, prior_loc, prec, sign, native):
    from uncertlr.torch import _meanfield

    loc, log_scale = loc.clone().requires_grad_(), log_scale.clone().requires_grad_()
    patch = _compiled_or_eager(_meanfield, native)
    with patch:
        w, kl, _ = _meanfield._SampleKL.apply(loc, log_scale, eps, prior_loc, prec, torch.tensor(0.3), sign)
        gw = torch.linspace(-1, 1, w.numel(), dtype=w.dtype)
        torch.autograd.backward([w, kl], [gw, torch.tensor(0.7, dtype=kl.dtype)])
    return w.detach(), kl.detach(), loc.grad, log_scale.grad


@needs_cc
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("centred", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_compiled_mean_field_sample_equals_the_eager_kernel_and_autograd(dtype, sign, centred, threads):
    from uncertlr.torch import _meanfield

    n = 40_001  # over the threshold, and split over two threads
    assert n >= _meanfield.NATIVE_MIN_WEIGHTS
    gen = torch.Generator().manual_seed(0)
    loc = torch.randn(n, generator=gen, dtype=dtype) * 0.1
    log_scale = torch.rand(n, generator=gen, dtype=dtype) * 4 - 7
    log_scale[:5] = -200.0  # exp underflows to 0: w = loc, and the formulas stay exact
    eps = torch.randn(n, generator=gen, dtype=dtype)
    prior_loc = torch.randn(n, generator=gen, dtype=dtype) * 0.05 if centred else None
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert _meanfield._native_kernels(loc, log_scale, eps, prior_loc, 4.0) is not None
        fast = _sample_kl(loc, log_scale, eps, prior_loc, 4.0, sign, native=True)
        slow = _sample_kl(loc, log_scale, eps, prior_loc, 4.0, sign, native=False)
    finally:
        torch.set_num_threads(before)
    tol = {"rtol": 1e-6, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-14}
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, **tol)
    # autograd through the plain formula, in float64 (an independent computation)
    l64, s64 = loc.double().requires_grad_(), log_scale.double().requires_grad_()
    mp = prior_loc.double() if centred else torch.zeros(n, dtype=torch.float64)
    w = l64 + sign * s64.exp() * eps.double()
    kl = 0.3 + (-s64 + 0.5 * 4.0 * (s64.exp() ** 2 + (l64 - mp) ** 2)).sum()
    torch.autograd.backward(
        [w, kl], [torch.linspace(-1, 1, n, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)]
    )
    ref = (w.detach(), kl.detach(), l64.grad, s64.grad)
    rtol = 2e-5 if dtype == torch.float32 else 1e-10
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a.double(), b, rtol=rtol, atol=rtol * float(b.abs().max()))


@needs_cc
def test_the_compiled_sample_is_used_only_where_it_applies():
    from uncertlr.torch import _meanfield

    n = _meanfield.NATIVE_MIN_WEIGHTS
    z = torch.zeros(n)
    assert _meanfield._native_kernels(z, z, z, None, 1.0) is not None
    assert _meanfield._native_kernels(z, z, z, z, 1.0) is not None
    assert _meanfield._native_kernels(z[:-1], z[:-1], z[:-1], None, 1.0) is None  # small
    assert _meanfield._native_kernels(z, z, z, None, torch.ones(n)) is None  # a precision per weight
    assert _meanfield._native_kernels(z, z, torch.zeros(2, n), None, 1.0) is None  # several particles
    assert _meanfield._native_kernels(z, z.double(), z, None, 1.0) is None  # mixed dtypes
    assert _meanfield._native_kernels(z, torch.zeros(2 * n)[::2], z, None, 1.0) is None  # not contiguous


@needs_cc
def test_a_large_bnn_trains_the_same_with_the_compiled_sample():
    """Three antithetic Adam steps of a 20,100-weight BNN (centred N(0, 0.7²) prior): the same weights."""
    from uncertlr.priors import Normal
    from uncertlr.torch import _meanfield

    def run(native):
        torch.manual_seed(0)
        bnn = bayesian(torch.nn.Linear(200, 100), num_data=64, prior=Normal(scale=0.7, centered=True))
        opt = torch.optim.Adam(bnn.parameters(), lr=1e-2)
        x, y = torch.randn(16, 200), torch.randint(0, 100, (16,))
        patch = _compiled_or_eager(_meanfield, native)
        losses = []
        with patch:
            for _ in range(3):
                opt.zero_grad()
                loss = bnn.loss(x, y)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
        return losses, bnn.posterior.loc.detach().clone(), bnn.posterior.log_scale.detach().clone()

    fast, slow = run(True), run(False)
    # the KL (~1,900 here) is a float32 sum in the eager kernel and a float64 one compiled: ~1e-6 apart
    assert fast[0] == pytest.approx(slow[0], rel=1e-5)
    torch.testing.assert_close(fast[1], slow[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast[2], slow[2], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- the batch's entropy


def _entropy_numpy(logits):
    """An independent computation: float64 numpy, scipy's softmax-free form via logsumexp."""
    from scipy.special import logsumexp

    z = np.asarray(logits, dtype=np.float64).reshape(-1, logits.shape[-1])
    logp = z - logsumexp(z, axis=1, keepdims=True)
    return float(-(np.exp(logp) * logp).sum(axis=1).mean())


@needs_cc
@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 40),
    classes=st.integers(2, 12),
    spread=st.sampled_from([1e-3, 1.0, 30.0, 300.0]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    one_draw=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_compiled_batch_entropy_equals_an_independent_computation(
    rows, classes, spread, dtype, one_draw, seed
):
    from uncertlr.torch import batch_entropy, signals

    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, classes, generator=gen, dtype=torch.float64) * spread).to(dtype)
    if one_draw:
        logits = logits[None]  # [1, B, C]: the ELBO's outputs with one particle
    got = signals._native_entropy(logits)
    assert got is not None and got.dtype == dtype and got.shape == ()
    want = _entropy_numpy(logits.numpy())
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert abs(float(got) - want) <= tol * max(1.0, want)
    assert float(batch_entropy(logits)) == float(got)  # the public function takes the compiled path
    # and the torch-op formula (no kernels) agrees to the dtype's rounding
    with mock.patch.object(signals._native, "kernels", lambda: None):
        eager = batch_entropy(logits)
    assert abs(float(eager) - want) <= (1e-5 if dtype == torch.float32 else 1e-12) * max(1.0, want * rows)


@needs_cc
def test_batch_entropy_leaves_what_the_kernel_does_not_take_to_torch_ops():
    from uncertlr.torch import batch_entropy, signals

    logits = torch.randn(8, 4)
    bad = logits.clone()
    bad[3, 1] = float("nan")
    assert signals._native_entropy(bad) is None and torch.isnan(batch_entropy(bad))
    inf = logits.clone()
    inf[0, 0] = float("inf")
    assert signals._native_entropy(inf) is None  # torch's semantics for inf stay the reference
    with mock.patch.object(signals._native, "kernels", lambda: None):
        eager = batch_entropy(inf)
    torch.testing.assert_close(batch_entropy(inf), eager, equal_nan=True)
    assert signals._native_entropy(logits.t().contiguous().t()) is None  # not contiguous
    # several draws: the entropy of the mean probabilities, in torch ops
    three = torch.randn(3, 8, 4)
    p = three.softmax(-1).mean(0)
    torch.testing.assert_close(batch_entropy(three), -(p * p.log()).sum(-1).mean())
    assert batch_entropy(logits.half()).dtype == torch.float16  # other dtypes: torch ops


# --------------------------------------------------------------------------- the factors' power -1/2 and apply


@needs_cc
@pytest.mark.parametrize("threads", [1, 2])
def test_the_power_minus_half_is_within_a_few_ulps_of_the_exact_value(threads):
    k = _native.kernels()
    gen = torch.Generator().manual_seed(0)
    x = torch.exp(torch.randn(100_003, generator=gen, dtype=torch.float64) * 20).float()  # 1e-39 .. 1e39
    x[:7] = torch.tensor([0.0, 1e-45, 1e-40, 1.1754944e-38, 1.0, 4.0, 3.4e38])  # zero, subnormals, edges
    lo, hi = 1e-30, 1e30
    y = x.clone()
    n = x.numel()
    f64 = {"dtype": torch.float64}
    sums, mins, maxs = torch.zeros(1, **f64), torch.zeros(1, **f64), torch.zeros(1, **f64)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        k.factors(
            torch.tensor([n]),
            torch.ones(1, dtype=torch.int8),
            _native.POWERS[-0.5],
            torch.tensor([lo], **f64),
            torch.tensor([hi], **f64),
            y,
            sums,
            mins,
            maxs,
        )
    finally:
        torch.set_num_threads(before)
    exact = x.double().rsqrt().clamp(lo, hi)  # 1 / sqrt(0) = inf, clamped
    rel = ((y.double() - exact) / exact).abs()
    assert float(rel.max()) < 2.0**-21  # the correctly rounded float32 value is within 2^-24
    assert float(y[0]) == pytest.approx(hi, rel=1e-6) and float(y[5]) == 0.5
    assert float(sums[0]) == pytest.approx(float(y.double().sum()), rel=1e-5)
    assert (float(mins[0]), float(maxs[0])) == (float(y.min()), float(y.max()))


@needs_cc
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_apply_renormalises_and_steps_as_scale_then_torch_lerp(dtype, threads):
    k = _native.kernels()
    gen = torch.Generator().manual_seed(1)
    sizes = [70_000, 300, 40_000, 7]
    n = sum(sizes)
    f = torch.rand(n, generator=gen, dtype=dtype) * 3
    before = torch.randn(n, generator=gen, dtype=dtype)
    theta = before + torch.randn(n, generator=gen, dtype=dtype) * 1e-3
    op = torch.tensor([1, 2, 1, 0], dtype=torch.int8)  # op 2 (factors 1) and 0 (held) are not scaled
    c = torch.tensor([0.5, 7.0, 1.25, 9.0], dtype=torch.float64)
    want_f = f.clone()
    k.scale(torch.tensor(sizes), op, c, want_f)
    want = torch.lerp(before, theta, want_f)
    got_f, got = f.clone(), theta.clone()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        k.apply(torch.tensor(sizes), op, c, got_f, before, got)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(got_f, want_f)
    # the same formula as ATen's vectorised lerp; its scalar tail may round without FMA (an ulp)
    torch.testing.assert_close(got, want, rtol=0, atol=4 * torch.finfo(dtype).eps)
    assert (got == want).double().mean() > 0.999


@needs_cc
def test_a_step_that_raises_leaves_the_pending_renormalisation_to_the_next_read():
    torch.manual_seed(0)
    bnn = bayesian(torch.nn.Sequential(torch.nn.Linear(200, 100), torch.nn.Linear(100, 3)), num_data=100)
    opt = torch.optim.Adam(bnn.parameters(), lr=1e-3)
    mod = Modulator(GradSigmaRatio(warmup=0), sigma=bnn).attach(opt)
    x, y = torch.randn(16, 200), torch.randint(0, 3, (16,))
    fused = mod._mode.targets[0].fused
    for i in range(3):
        opt.zero_grad()
        bnn.loss(x, y).backward()
        if (
            i == 2
        ):  # the step raises after the rule's update (a pre-hook after the modulator's): never applied
            handle = opt.register_step_pre_hook(mock.Mock(side_effect=RuntimeError("boom")))
            with pytest.raises(RuntimeError, match="boom"):
                opt.step()
            handle.remove()
        else:
            opt.step()
    assert fused._pending is not None  # the compiled path deferred the renormalisation
    (s,) = mod.last_scale  # a read finishes it
    sizes = bnn.posterior.sizes
    means = torch.stack([seg.mean() for seg in s.reshape(-1).split(list(sizes))])
    torch.testing.assert_close(means, torch.ones_like(means), rtol=1e-5, atol=0)  # renormalised: mean 1
    assert fused._pending is None


@needs_cc
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 15, 16, 1_000_003])
def test_the_snapshot_copies_exactly_aligned_or_not(threads, dtype, n):
    k = _native.kernels()
    src = torch.randn(n + 3, dtype=dtype)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for offset in (0, 1):  # a view one element in is not 64-byte aligned: the plain copy runs
            a = src[offset : offset + n]
            dst = torch.full((n + 1,), float("nan"), dtype=dtype)[offset : offset + n]
            k.snapshot(a, dst)
            assert torch.equal(dst, a)
    finally:
        torch.set_num_threads(old)


@needs_cc
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_factors_applied_without_being_written_out_are_the_same_state(dtype):
    """apply_ leaves the renormalisation unwritten while nothing reads the factors: a later non-finite segment
    keeps its old factors renormalised, and every read (states, flush) sees what the plain path computes."""
    rule = GradSigmaRatio(warmup=0)
    sizes = [40_000, 300, 35_000]
    n = sum(sizes)
    lazy = FusedRule(rule, sizes, [rule.init(torch.zeros(k, dtype=dtype)) for k in sizes])
    plain = FusedRule(rule, sizes, [rule.init(torch.zeros(k, dtype=dtype)) for k in sizes])
    gen = torch.Generator().manual_seed(3)
    theta_a = torch.randn(n, generator=gen, dtype=dtype)
    theta_b = theta_a.clone()
    for step in range(5):
        g = torch.randn(n, generator=gen, dtype=dtype)
        if step == 3:
            g[sizes[0] + 5] = float("nan")  # the middle segment is held at its factors of step 2
        sigma = torch.rand(n, generator=gen, dtype=dtype) + 0.1
        delta = torch.randn(n, generator=gen, dtype=dtype) * 1e-3
        before_a, before_b = theta_a.clone(), theta_b.clone()
        lazy.update(g, sigma.clone(), defer=True)
        theta_a += delta
        lazy.apply_(before_a, theta_a)
        s = plain.update(g, sigma.clone())
        theta_b += delta
        torch.lerp(before_b, theta_b, s, out=theta_b)
        if step != 3:
            assert lazy._pending is not None  # applied, not written out
    tol = {"rtol": 2e-6, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-14}
    torch.testing.assert_close(theta_a, theta_b, **tol)
    for x, y in zip(lazy.states, plain.states):  # a read writes them out
        torch.testing.assert_close(x.scale, y.scale, **tol)
        assert float(x.nonfinite) == float(y.nonfinite)
    assert lazy._pending is None
    assert [float(s.nonfinite) for s in lazy.states] == [0.0, 1.0, 0.0]
