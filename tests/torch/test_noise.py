"""The mean-field step's noise (uncertlr.torch._noise): exact N(0, 1), reproducible, the same compiled and eager."""

from __future__ import annotations

import multiprocessing

import numpy as np
import torch
from scipy import stats

from uncertlr.torch import _noise, bayesian


def test_split_draw_is_standard_normal_and_independent_across_halves(two_threads):
    torch.manual_seed(0)
    eps = _noise.standard_normal(torch.zeros(200_000), None).double().numpy()
    first, second = eps[:100_000], eps[100_000:]
    for half in (first, second):  # each half is N(0, 1)
        assert stats.kstest(half, "norm").pvalue > 1e-3
        assert abs(half.mean()) < 5 / np.sqrt(half.size) and abs(half.var() - 1) < 5 * np.sqrt(2 / half.size)
    # the two generators are different streams: no correlation, not the same numbers
    assert abs(np.corrcoef(first, second)[0, 1]) < 5 / np.sqrt(first.size)
    assert not np.array_equal(first[:100], second[:100])
    # several particles, float64
    many = _noise.standard_normal(torch.zeros(2_000, dtype=torch.float64), 3)
    assert many.shape == (3, 2_000) and many.dtype == torch.float64
    assert stats.kstest(many.numpy().ravel(), "norm").pvalue > 1e-3


def test_split_draw_is_reproduced_by_manual_seed_and_advances(two_threads):
    like = torch.zeros(5_000)
    torch.manual_seed(3)
    a, b = _noise.standard_normal(like, None), _noise.standard_normal(like, None)
    torch.manual_seed(3)
    assert torch.equal(a, _noise.standard_normal(like, None)) and torch.equal(
        b, _noise.standard_normal(like, None)
    )
    assert not torch.equal(a, b)


def test_the_numbers_do_not_depend_on_the_thread_count(two_threads):
    """Checkpoints, resumes and DDP replicas may run with other thread counts: the stream is the seed's."""
    like = torch.zeros(5_001)
    draws = []
    for threads in (2, 1, 2):
        torch.set_num_threads(threads)
        torch.manual_seed(11)
        draws.append(_noise.standard_normal(like, 2))
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0], draws[2])


def test_small_draws_are_torch_randn():
    like = torch.zeros(50)
    torch.manual_seed(1)
    got = _noise.standard_normal(like, 2)
    torch.manual_seed(1)
    assert torch.equal(got, torch.randn(2, 50))


def _child_draw(queue):
    torch.set_num_threads(2)
    _noise.PARALLEL_MIN_ELEMENTS = 1000
    queue.put(float(_noise.standard_normal(torch.zeros(4_000), None).std()))


def test_a_forked_child_gets_its_own_helper_thread(two_threads):
    _noise.standard_normal(torch.zeros(4_000), None)  # the parent's helper thread exists now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_draw, args=(queue,))
    proc.start()
    std = queue.get(timeout=60)  # would hang if the child waited for the parent's thread
    proc.join(timeout=60)
    assert proc.exitcode == 0 and 0.9 < std < 1.1


def test_compiled_draw_is_the_custom_op_and_equals_eager(two_threads):
    like = torch.zeros(3_000)

    def draw(t):
        return _noise.standard_normal(t, 2)

    torch._dynamo.reset()
    graph = torch._dynamo.explain(draw)(like)
    assert graph.graph_break_count == 0
    assert "uncertlr.standard_normal" in str(graph.graphs[0].code)
    compiled = torch.compile(draw, backend="aot_eager", fullgraph=True)
    torch.manual_seed(5)
    got = compiled(like)
    torch.manual_seed(5)
    assert torch.equal(got, draw(like))


def test_bnn_training_is_reproducible_with_the_split_draw(two_threads):
    def run():
        torch.manual_seed(0)
        bnn = bayesian(torch.nn.Linear(40, 30), num_data=100)  # 1,230 random weights
        opt = torch.optim.Adam(bnn.parameters(), lr=1e-2)
        x, y = torch.randn(8, 40), torch.randint(0, 30, (8,))
        for _ in range(3):
            opt.zero_grad()
            bnn.loss(x, y).backward()
            opt.step()
        return bnn.posterior.loc.detach().clone()

    assert torch.equal(run(), run())
