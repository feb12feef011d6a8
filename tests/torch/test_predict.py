"""Bounded-memory prediction (issue 13): chunks over draws and inputs give the same numbers as one pass."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import uncertlr.torch.bnn as bnn_mod
from uncertlr import _spec, likelihoods
from uncertlr._spec import chunk_plan
from uncertlr.torch import bayesian
from uncertlr.torch._predict import activation_bytes_per_row


def _net(out=3):
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, out))


def _scripted_noise(bnn, eps):
    """Make ``bnn._noise(k)`` hand out consecutive rows of ``eps`` (so chunked and reference runs share draws)."""
    taken = [0]

    def noise(num):
        rows = eps[taken[0] : taken[0] + num]
        taken[0] += num
        return rows

    bnn._noise = noise
    return taken


@given(
    n=st.integers(1, 40),
    s=st.integers(1, 9),
    max_batch=st.one_of(st.none(), st.integers(1, 50)),
    weight_elements=st.sampled_from([1, 60, 200, 2**25]),
    budget=st.sampled_from([1, 500, 5_000, 2**28]),
    regression=st.booleans(),
)
def test_chunked_predict_equals_a_loop_over_draws(n, s, max_batch, weight_elements, budget, regression):
    torch.manual_seed(n * 100 + s)
    bnn = bayesian(
        _net(1 if regression else 3),
        num_data=10,
        init_scale=0.3,
        likelihood=likelihoods.Normal(scale=0.5) if regression else "categorical",
    )
    x = torch.randn(n, 5)
    eps = torch.randn(s, bnn.posterior.num_params)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bnn_mod, "PREDICT_CHUNK_ELEMENTS", weight_elements)
        mp.setattr(_spec, "MEMORY_BUDGET", budget)
        taken = _scripted_noise(bnn, eps)
        got = bnn.predict(x, num_samples=s, max_batch=max_batch)
    assert taken[0] == s  # every draw sampled once, however many input chunks it was applied to
    post = bnn.posterior
    w = post.loc + post.scale * eps
    ref = torch.stack([bnn._call(post.unflatten(w[i]), x) for i in range(s)]).detach()
    if regression:
        torch.testing.assert_close(got.mean, ref)
        torch.testing.assert_close(got.variance, torch.full_like(ref, 0.25))
    else:
        torch.testing.assert_close(got, torch.softmax(ref, -1))


@given(
    num_samples=st.integers(1, 10_000),
    num_rows=st.integers(1, 100_000),
    num_params=st.integers(1, 10**7),
    row_bytes=st.integers(1, 10**7),
    weight_elements=st.integers(1, 2**26),
    budget=st.integers(1, 2**30),
)
def test_chunk_plan_respects_both_budgets(
    num_samples, num_rows, num_params, row_bytes, weight_elements, budget
):
    plan = chunk_plan(
        num_samples=num_samples,
        num_rows=num_rows,
        num_params=num_params,
        row_bytes=row_bytes,
        weight_elements=weight_elements,
        memory_budget=budget,
    )
    assert 1 <= plan.draws <= num_samples and 1 <= plan.rows <= num_rows
    assert plan.draws * num_params <= weight_elements or plan.draws == 1
    assert plan.draws * plan.rows * row_bytes <= budget or (plan.draws == 1 and plan.rows == 1)
    # nothing is split that fits: one pass when the whole prediction is within both budgets
    if num_samples * num_params <= weight_elements and num_samples * num_rows * row_bytes <= budget:
        assert (plan.draws, plan.rows) == (num_samples, num_rows)


def test_activation_probe_counts_every_module_output():
    lin = nn.Linear(4, 3)
    assert activation_bytes_per_row(lin, lin, torch.zeros(10, 4)) == 4 * 4 + 3 * 4  # input row + output row
    seq = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    # input 4, linear 6, relu 6, linear 2, and the Sequential's own output 2 (float32)
    assert activation_bytes_per_row(seq, seq, torch.zeros(3, 4)) == 4 * (4 + 6 + 6 + 2 + 2)
    assert not seq._forward_hooks and not seq[0]._forward_hooks  # the hooks are gone


def test_large_inputs_are_split_into_row_chunks(monkeypatch):
    bnn = bayesian(_net(), num_data=10)
    calls = []
    real = bnn._call
    monkeypatch.setattr(bnn, "_call", lambda w, x: calls.append(x.shape[0]) or real(w, x))
    monkeypatch.setattr(_spec, "MEMORY_BUDGET", 64 * 1024)
    probs = bnn.predict(torch.randn(5000, 5), num_samples=16)
    assert probs.shape == (16, 5000, 3) and torch.allclose(probs.sum(-1), torch.ones(16, 5000))
    rows = calls[1:]  # after the probe
    assert max(rows) < 5000 and sum(rows) == 5000  # every input once per chunk of draws (one chunk here)
    with pytest.raises(ValueError, match="max_batch"):
        bnn.predict(torch.randn(3, 5), max_batch=0)
    assert bnn.sample_outputs(torch.randn(7, 5), num_samples=2, max_batch=3).shape == (2, 7, 3)


@pytest.mark.parametrize("free_gib", [0.05, 8.0, 140.0])
def test_accelerator_budgets_grow_with_free_memory_and_never_shrink(free_gib):
    from uncertlr._spec import ACCELERATOR_ACTIVATION_FRACTION, ACCELERATOR_WEIGHT_FRACTION, grown_budgets

    free = int(free_gib * 2**30)
    acts, weights = grown_budgets(free, memory_budget=256 << 20, weight_elements=2**25, element_size=4)
    assert acts == max(256 << 20, int(free * ACCELERATOR_ACTIVATION_FRACTION))
    assert weights == max(2**25, int(free * ACCELERATOR_WEIGHT_FRACTION) // 4)
    if free_gib > 100:  # a 32-draw ResNet-18 (11.2M weights) fits in one chunk on a large GPU
        assert weights // 11_200_000 >= 32


def test_device_chunk_plan_asks_for_free_memory_only_when_the_cpu_budgets_would_split_the_work(monkeypatch):
    from uncertlr._spec import device_chunk_plan
    from uncertlr.torch._predict import cuda_free_memory

    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (asked.append(dev), (64 << 30, 80 << 30))[1])
    cuda = torch.device("cuda", 0)
    assert cuda_free_memory(torch.device("cpu")) is None
    free = cuda_free_memory(cuda)
    kw = dict(weight_elements=2**25, memory_budget=256 << 20, max_batch=None, element_size=4)
    small = dict(num_samples=32, num_rows=128, num_params=478_410, row_bytes=4_000)  # the MLP: one pass
    assert device_chunk_plan(free, **small, **kw) == chunk_plan(
        **small, weight_elements=kw["weight_elements"], memory_budget=kw["memory_budget"]
    )
    assert asked == []
    big = dict(num_samples=32, num_rows=128, num_params=11_200_000, row_bytes=5_000_000)  # a ResNet-18
    cpu_plan = device_chunk_plan(None, **big, **kw)
    assert (cpu_plan.draws, cpu_plan.rows) == (2, 26) and asked == []  # ~80 passes with the CPU's budgets
    assert device_chunk_plan(lambda: None, **big, **kw) == cpu_plan  # a device that does not say
    # 64 GiB free: every draw at once (an eighth: 2.1G weights), 16 GiB of activations = 107 rows of 32 draws
    assert device_chunk_plan(free, **big, **kw) == (32, (16 << 30) // (32 * 5_000_000)) and asked == [cuda]
