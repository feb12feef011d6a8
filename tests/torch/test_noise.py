"""The mean-field step's noise (uncertlr.torch._noise): exact N(0, 1), reproducible, the same compiled and eager."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from uncertlr.torch import _native, _noise, bayesian

needs_sampler = pytest.mark.skipif(
    not _noise._compiled_sampler() is not None,
    reason=f"no vectorised compiled sampler here ({_native.status()})",
)

# ----------------------------------------------------------------------------- an independent reference
# Philox4x32-10 in numpy (uint64 arithmetic, written from Salmon et al. 2011) and Box-Muller in float64


def _philox(ctr, key):
    mask, m0, m1 = np.uint64(0xFFFFFFFF), np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
    c = [np.asarray(w, dtype=np.uint64) for w in ctr]
    k0, k1 = (np.uint64(w) for w in key)
    for _ in range(10):
        p0, p1 = m0 * c[0], m1 * c[2]
        c = [
            ((p1 >> np.uint64(32)) ^ c[1] ^ k0) & mask,
            p1 & mask,
            ((p0 >> np.uint64(32)) ^ c[3] ^ k1) & mask,
            p0 & mask,
        ]
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & mask, (k1 + np.uint64(0xBB67AE85)) & mask
    return c


def _reference_normals(n, seed):
    """The sampler's documented sequence (``_native.c``): tiles of 16 blocks, Box-Muller per word pair."""
    tiles = -(-n // 64)
    b = np.arange(tiles * 16, dtype=np.uint64)
    zero = np.zeros_like(b)
    w = [
        x.reshape(tiles, 16)
        for x in _philox(
            [b & np.uint64(0xFFFFFFFF), b >> np.uint64(32), zero, zero], [seed & 0xFFFFFFFF, seed >> 32]
        )
    ]
    parts = []
    for h in (0, 1):
        u1 = ((w[2 * h] >> np.uint64(9)).astype(np.float64) * 2 + 1) * 2.0**-24
        u2 = (w[2 * h + 1] >> np.uint64(8)).astype(np.float64) * 2.0**-24
        r = np.sqrt(-2 * np.log(u1))
        parts += [r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)]
    return np.concatenate(parts, axis=1).ravel()[:n]


def _compiled(n, seed, threads=1):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = torch.empty(n)
        _native.kernels().normal(out, seed)
        return out.double().numpy()
    finally:
        torch.set_num_threads(before)


# Random123's known-answer vectors for philox4x32-10 (counter, key, result)
KNOWN_ANSWERS = [
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    (
        [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
        [0xA4093822, 0x299F31D0],
        [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
    ),
]


@pytest.mark.parametrize("ctr, key, expected", KNOWN_ANSWERS)
def test_philox_gives_the_known_answers(ctr, key, expected):
    got = _philox(ctr, key)
    assert [int(x) for x in got] == expected  # the reference is Philox4x32-10
    if _noise._compiled_sampler() is not None:
        assert _native.kernels().philox(torch.tensor(ctr), torch.tensor(key)).tolist() == expected


@needs_sampler
@pytest.mark.parametrize("seed", [0, 12345, 0xFEDCBA9876543210 % _noise.SEED_BOUND])
def test_compiled_sampler_is_its_documented_sequence_on_any_thread_count(seed):
    n = 100_003  # split over two threads, with a partial last tile
    ref = _reference_normals(n, seed)
    one, two = _compiled(n, seed, 1), _compiled(n, seed, 2)
    assert np.array_equal(one, two)
    np.testing.assert_allclose(one, ref, rtol=1e-6, atol=1e-6)  # float32 polynomials against float64 numpy


@needs_sampler
@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 300), seed=st.integers(0, _noise.SEED_BOUND - 1))
def test_a_shorter_draw_is_a_prefix_of_a_longer_one(n, seed):
    longer = _compiled(n + 70, seed)
    shorter = _compiled(n, seed)
    assert np.array_equal(shorter, longer[:n])
    np.testing.assert_allclose(shorter, _reference_normals(n, seed), rtol=1e-6, atol=1e-6)


@needs_sampler
def test_compiled_sampler_is_standard_normal_with_independent_pairs():
    z = _compiled(1_000_000, 7, 2)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(z.mean()) < 5 / np.sqrt(z.size) and abs(z.var() - 1) < 5 * np.sqrt(2 / z.size)
    assert abs(stats.kurtosis(z)) < 5 * np.sqrt(24 / z.size)
    # Box-Muller's cos and sin of one pair (tile positions 32 h + i and 32 h + 16 + i) are independent
    t = z.reshape(-1, 2, 2, 16)
    cos, sin = t[:, :, 0].ravel(), t[:, :, 1].ravel()
    for a, b in ((cos, sin), (cos**2, sin**2)):
        assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(a.size)
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 5 / np.sqrt(z.size)
    # the tails: |z| > 3 as often as N(0, 1) says (the largest possible |z| is 5.77)
    expected = 2 * stats.norm.sf(3) * z.size
    assert abs((np.abs(z) > 3).sum() - expected) < 5 * np.sqrt(expected)
    assert np.abs(z).max() < 5.78


@needs_sampler
def test_standard_normal_uses_the_compiled_sampler_for_large_float32_draws_only(monkeypatch):
    monkeypatch.setattr(_noise, "NATIVE_MIN_ELEMENTS", 1000)
    like = torch.zeros(3_000)
    torch.manual_seed(8)
    got = _noise.standard_normal(like, None)
    torch.manual_seed(8)
    seed = int(torch.randint(_noise.SEED_BOUND, (1,), dtype=torch.int64))
    assert np.array_equal(got.double().numpy(), _compiled(3_000, seed))
    assert np.array_equal(_noise.seeded_standard_normal(like, seed).double().numpy(), _compiled(3_000, seed))
    # float64, small draws and a build without a vectorised sampler: ATen's samplers
    torch.manual_seed(8)
    small = _noise.standard_normal(torch.zeros(500), None)
    torch.manual_seed(8)
    assert torch.equal(small, torch.randn(500))
    assert _noise._native_sampler(torch.zeros(3_000, dtype=torch.float64), 3_000) is None
    with mock.patch.object(_native.kernels(), "fast_normal", False):
        assert _noise._native_sampler(like, 3_000) is None


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
    like = torch.zeros(40_001)  # [2, P]: large enough for the compiled sampler to split it over threads
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


_FORK_SCRIPT = """
import multiprocessing, sys
import torch
from uncertlr.torch import _native

torch.set_num_threads(2)
parent = torch.empty(100_003)
_native.kernels().normal(parent, 5)  # an OpenMP region: the parent's pool exists now


def child(queue):
    out = torch.empty(100_003)
    _native.kernels().normal(out, 5)
    queue.put(bool((out.numpy() == parent.numpy()).all()))  # numpy: a torch op this large would hang here itself


ctx = multiprocessing.get_context("fork")
queue = ctx.Queue()
proc = ctx.Process(target=child, args=(queue,), daemon=True)  # a hung child must not hold the parent's exit
proc.start()
print("same numbers:", queue.get(timeout=60))
proc.join(timeout=60)
sys.exit(proc.exitcode)
"""


@needs_sampler
def test_a_forked_child_draws_on_its_one_thread_instead_of_hanging():
    """libgomp's pool does not survive fork: an OpenMP region in the child would wait for it forever.

    Run in a fresh interpreter: this worker's other threads (JAX's, the noise helper) make any fork risky.
    """
    res = subprocess.run([sys.executable, "-c", _FORK_SCRIPT], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0 and "same numbers: True" in res.stdout, res.stderr[-2000:]


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
