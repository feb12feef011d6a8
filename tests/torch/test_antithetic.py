"""Antithetic training noise of the mean-field BNN: exact N(0, 1) per step, paired across steps, resumable."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch import nn

from uncertlr.torch import bayesian
from uncertlr.torch.checkpoint import load_checkpoint, save_checkpoint


def _bnn(**kw):
    return bayesian(nn.Sequential(nn.Linear(40, 30), nn.Tanh(), nn.Linear(30, 3)), num_data=100, **kw)


def _spy(bnn) -> list[torch.Tensor]:
    """From now on, the noise ``sign * eps`` of every call of the posterior's ``sample_kl``, in order."""
    seen: list[torch.Tensor] = []
    orig = bnn.posterior.sample_kl

    def spy(eps, *a):
        seen.append(a[-1] * eps.detach().clone())  # the last argument is the sign
        return orig(eps, *a)

    bnn.posterior.sample_kl = spy
    return seen


def _noises(bnn, steps: int, inputs: int = 40) -> list[torch.Tensor]:
    """The noise each of ``steps`` training calls handed the posterior."""
    x, y = torch.randn(4, inputs), torch.randint(0, 3, (4,))
    seen = _spy(bnn)
    for _ in range(steps):
        bnn.loss(x, y)
    del bnn.posterior.sample_kl
    return seen


def test_steps_come_in_negated_pairs_and_pairs_are_independent(two_threads):
    torch.manual_seed(0)
    e = _noises(_bnn(), 6)
    assert torch.equal(e[1], -e[0]) and torch.equal(e[3], -e[2]) and torch.equal(e[5], -e[4])
    firsts = torch.stack([e[0], e[2], e[4]]).numpy()
    assert not np.allclose(firsts[0], firsts[1])
    # independent pairs: no correlation between the draws that open them
    assert abs(np.corrcoef(firsts[0], firsts[1])[0, 1]) < 5 / np.sqrt(firsts.shape[1])
    # independent noise when asked
    torch.manual_seed(0)
    f = _noises(_bnn(antithetic=False), 2)
    assert not torch.allclose(f[1], -f[0])


def test_every_step_is_exactly_standard_normal(two_threads):
    """The opening and the closing draws of many pairs, each pooled: N(0, 1) by Kolmogorov-Smirnov."""
    torch.manual_seed(1)
    e = torch.stack(_noises(_bnn(), 40)).double().numpy()  # 40 steps x 1,323 weights
    for part in (e[0::2], e[1::2]):
        assert stats.kstest(part.ravel(), "norm").pvalue > 1e-3
        assert abs(part.mean()) < 5 / np.sqrt(part.size)


def test_the_paired_loss_is_an_unbiased_estimate_of_the_elbo():
    """The mean of many training losses (in pairs) against a 4,000-particle vectorised estimate."""
    torch.manual_seed(2)
    bnn = bayesian(nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)), num_data=40, init_scale=0.3)
    x, y = torch.randn(10, 5), torch.randint(0, 3, (10,))
    many = torch.stack([bnn.loss(x, y).detach() for _ in range(400)])
    with torch.no_grad():
        vec = bnn.loss(x, y, num_particles=4000)
    # the pairs' means vary less than independent draws' would: the mean is within 4 s.e. of a pair mean
    pair_means = many.view(200, 2).mean(1)
    assert abs(float(pair_means.mean() - vec)) < 4 * float(pair_means.std()) / np.sqrt(200) + 1e-3


@settings(max_examples=12, deadline=None)
@given(k=st.integers(2, 7), seed=st.integers(0, 2**31 - 1))
def test_particles_are_half_draws_and_their_negations(k, seed):
    torch.manual_seed(seed)
    bnn = _bnn()
    seen = _spy(bnn)
    bnn.loss(torch.randn(4, 40), torch.randint(0, 3, (4,)), num_particles=k)
    eps = seen[0]
    h = (k + 1) // 2
    assert eps.shape == (k, bnn.posterior.num_params)
    assert torch.equal(eps[h:], -eps[: k // 2])
    assert len({tuple(r[:3].tolist()) for r in eps[:h]}) == h  # the first half are distinct draws
    assert bnn.noise_pair.tolist()[0] == 0  # particles do not touch the pairing across steps


def test_evaluation_calls_draw_fresh_noise_and_leave_the_pairing_alone():
    torch.manual_seed(3)
    bnn = _bnn()
    x, y = torch.randn(4, 40), torch.randint(0, 3, (4,))
    first = _noises(bnn, 1)[0]
    with torch.no_grad():  # a validation loss between two steps
        bnn.loss(x, y)
    bnn.eval()
    bnn.loss(x, y)
    bnn(x)
    bnn.predict(x, num_samples=3)
    bnn.train()
    assert torch.equal(_noises(bnn, 1)[0], -first)


@pytest.mark.parametrize("width", [30, 400])  # 1,323 weights (torch.randn) and 161,203 (two generators)
def test_a_state_saved_mid_pair_resumes_with_the_same_negation(tmp_path, width):
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(400, width), nn.Tanh(), nn.Linear(width, 3))
    bnn = bayesian(net, num_data=100)
    x, y = torch.randn(4, 400), torch.randint(0, 3, (4,))
    opened = _noises(bnn, 1, inputs=400)[0]
    path = save_checkpoint(tmp_path / "c.pt", model=bnn)
    torch.manual_seed(99)  # another RNG state, as in a new process
    other = bayesian(net, num_data=100)
    load_checkpoint(path, model=other)
    assert other._pair_eps is None  # the draw itself is not in the file: it is made again from its seed
    seen = _spy(other)
    other.loss(x, y)
    assert torch.equal(seen[0], -opened)
    # the same through a plain state_dict round trip
    third = bayesian(net, num_data=100)
    third.load_state_dict(bnn.state_dict())
    assert third._pair == bnn._pair


def test_states_without_the_pairing_load_both_ways(tmp_path):
    """A model saved with independent noise (or before antithetic noise existed) loads into a paired one."""
    torch.manual_seed(5)
    plain = _bnn(antithetic=False)
    paired = _bnn()
    _noises(paired, 1)  # mid-pair
    paired.load_state_dict(plain.state_dict())
    assert paired._pair == (0, 0) and paired.noise_pair.tolist() == [0, 0]
    path = save_checkpoint(tmp_path / "plain.pt", model=plain)
    load_checkpoint(path, model=paired)
    plain.load_state_dict(paired.state_dict())  # and a paired state into an unpaired model
    load_checkpoint(save_checkpoint(tmp_path / "paired.pt", model=paired), model=plain)
    with pytest.raises(ValueError, match="missing"):  # other entries stay required
        state = paired.state_dict()
        del state["posterior.loc"]
        torch.save(state, tmp_path / "bad.pt")
        from uncertlr.torch.checkpoint import _check_model

        _check_model(state, paired)


def test_lowrank_guides_draw_independent_noise():
    torch.manual_seed(6)
    bnn = _bnn(guide="lowrank", rank=2)
    assert not bnn.antithetic and "noise_pair" not in bnn.state_dict()


def test_compiled_loss_keeps_the_pairing_and_equals_eager():
    """Under torch.compile the pairing runs in an opaque op: the same noise, step for step, as eager."""
    import copy

    torch.manual_seed(7)
    eager = _bnn()
    compiled_bnn = copy.deepcopy(eager)
    assert compiled_bnn._handle != eager._handle  # a copy pairs its own steps
    x, y = torch.randn(4, 40), torch.randint(0, 3, (4,))
    torch._dynamo.reset()
    compiled = torch.compile(compiled_bnn.loss, backend="aot_eager", fullgraph=True)
    for step in range(4):
        out = {}
        for name, fn, bnn in (("eager", eager.loss, eager), ("compiled", compiled, compiled_bnn)):
            torch.manual_seed(100 + step)
            loss = fn(x, y)
            out[name] = (
                loss.detach(),
                torch.autograd.grad(loss, [bnn.posterior.loc, bnn.posterior.log_scale]),
            )
            assert bnn.noise_pair.tolist()[0] == (step + 1) % 2
        torch.testing.assert_close(out["compiled"][0], out["eager"][0])
        for a, b in zip(out["compiled"][1], out["eager"][1]):
            torch.testing.assert_close(a, b)
    assert compiled_bnn._pair == eager._pair


def test_a_pair_survives_a_dtype_change_mid_pair():
    """``bnn.double()`` between the two steps of a pair: the closing step negates the same draw, in float64."""
    torch.manual_seed(8)
    bnn = _bnn()
    opened = _noises(bnn, 1)[0]
    bnn.double()
    seen = _spy(bnn)
    bnn.loss(torch.randn(4, 40, dtype=torch.float64), torch.randint(0, 3, (4,)))
    assert seen[0].dtype == torch.float64
    assert torch.equal(seen[0], -opened.double())  # the kept draw, cast
