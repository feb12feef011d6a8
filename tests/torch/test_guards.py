"""Issue 13: bad data raise a named ValueError; a diverging optimizer is skipped and counted; softmax outputs warn."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from uncertlr import likelihoods
from uncertlr.torch import bayesian, fit


class Gain(nn.Module):
    """Multiplies by a settable gain: a stand-in for weights that blow up for one step."""

    def __init__(self):
        super().__init__()
        self.gain = 1.0

    def forward(self, x):
        return x * self.gain


def _net(out=3):
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, out), Gain())


def _data(n=32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_a_transient_blow_up_is_skipped_and_counted_then_training_goes_on():
    x, y = _data()
    bnn = bayesian(_net(), num_data=len(x))
    gain = bnn.net[3]
    opt = torch.optim.Adam(bnn.parameters(), lr=1e-2)
    calls = [0]

    def step(xb, yb):
        calls[0] += 1
        gain.gain = float("inf") if calls[0] == 3 else 1.0  # the third step's outputs overflow
        return bnn.elbo(xb, yb)

    hist = fit(step, opt, x, y, epochs=2, batch_size=8, progress=False)
    assert [h["skipped"] for h in hist] == [0, 0, 1, 0, 0, 0, 0, 0]
    assert all(torch.isfinite(p).all() for p in bnn.parameters())


def test_diverged_parameters_are_skipped_until_the_guard_stops_with_a_diagnosis():
    x, y = _data()
    bnn = bayesian(_net(), num_data=len(x))
    with torch.no_grad():
        bnn.posterior.loc.mul_(1e37)  # finite, but the outputs (and the KL) overflow
    terms = bnn.elbo(x[:8], y[:8])  # not a ValueError: the inputs are fine
    assert not torch.isfinite(terms.loss)
    before = bnn.posterior.loc.detach().clone()
    opt = torch.optim.SGD(bnn.parameters(), lr=0.1)
    with pytest.raises(
        FloatingPointError, match="3 optimizer steps in a row were skipped.*too large to square"
    ):
        fit(bnn.elbo, opt, x, y, epochs=1, batch_size=8, max_consecutive_skips=3, progress=False)
    assert torch.equal(bnn.posterior.loc, before)  # no step was applied
    with pytest.raises(ValueError, match="posterior's means or scales are extreme"):
        bnn.predict(x, num_samples=2)


def test_inputs_that_overflow_the_network_are_named():
    x, y = _data(8)
    bnn = bayesian(_net(), num_data=8)
    huge = x.sign() * 3e38  # finite float32 inputs; no weighted sum of them fits in float32
    with pytest.raises(
        ValueError, match=r"overflows on these inputs \(largest \|x\| = 3e\+38\).*standardise the inputs"
    ):
        bnn.elbo(huge, y)
    bnn.net[3].gain = 1e3  # now the outputs themselves overflow (predict minds only non-finite outputs)
    with pytest.raises(
        ValueError, match=r"prediction is not finite: the network overflows.*standardise the inputs"
    ):
        bnn.predict(huge, num_samples=2)
    assert torch.isfinite(bnn.predict(x, num_samples=2)).all()


def test_targets_whose_square_overflows_are_named():
    x, _ = _data(8)
    reg = bayesian(_net(1), num_data=8, likelihood=likelihoods.Normal())
    with pytest.raises(
        ValueError, match=r"targets are too large .*largest \|y\| = 1e\+30.*standardise the targets"
    ):
        reg.elbo(x, torch.full((8, 1), 1e30))
    assert torch.isfinite(reg.elbo(x, torch.full((8, 1), 1e3)).loss)


def test_a_network_ending_in_softmax_gets_one_warning():
    x, y = _data(8)
    probs_net = nn.Sequential(nn.Linear(5, 3), nn.Softmax(dim=-1))
    bnn = bayesian(probs_net, num_data=8)
    with pytest.warns(
        UserWarning, match="outputs look like probabilities.*remove the network's last softmax"
    ):
        bnn.elbo(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bnn.elbo(x, y)  # once per BNN
    with pytest.warns(UserWarning, match="look like probabilities"):
        bayesian(probs_net, num_data=8).predict(x, num_samples=2)
    for fine in (nn.Sequential(nn.Linear(5, 3), nn.LogSoftmax(dim=-1)), nn.Linear(5, 3)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            b = bayesian(fine, num_data=8)
            b.elbo(x, y)
            b.predict(x, num_samples=2)
