"""The explicit fit helper: history, hooks, refusal to apply a non-finite step."""

from __future__ import annotations

import pytest
import torch

from uncertlr.torch import bayesian
from uncertlr.torch.training import fit


def test_fit_records_history_and_calls_before_step():
    bnn = bayesian(torch.nn.Linear(4, 3), num_data=40)
    opt = torch.optim.SGD(bnn.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    seen = []
    hist = fit(bnn.elbo, opt, torch.randn(40, 4), torch.randint(0, 3, (40,)), epochs=2, batch_size=16,
               scheduler=sched, before_step=lambda t: seen.append(t.outputs.shape), progress=False)
    assert [h["step"] for h in hist] == list(range(6))
    assert [h["lr"] for h in hist] == [0.1, 0.1, 0.05, 0.05, 0.05, 0.025]
    assert seen[0] == (1, 16, 3) and len(seen) == 6


def test_fit_refuses_a_non_finite_loss_without_stepping():
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [p.clone() for p in net.parameters()]
    with pytest.raises(FloatingPointError, match="not applied"):
        fit(lambda xb, yb: (net(xb) * float("nan")).sum(), opt, torch.randn(8, 2), torch.zeros(8), epochs=1,
            batch_size=4, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
