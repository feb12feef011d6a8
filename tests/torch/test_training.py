"""The explicit fit helper: history, hooks, refusal to apply a non-finite step."""

from __future__ import annotations

import pytest
import torch

from uncertlr.torch import bayesian, fit


def test_fit_records_history_and_calls_before_step():
    bnn = bayesian(torch.nn.Linear(4, 3), num_data=40)
    opt = torch.optim.SGD(bnn.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    seen = []
    hist = fit(
        bnn.elbo,
        opt,
        torch.randn(40, 4),
        torch.randint(0, 3, (40,)),
        epochs=2,
        batch_size=16,
        scheduler=sched,
        before_step=lambda t: seen.append(t.outputs.shape),
        progress=False,
    )
    assert [h["step"] for h in hist] == list(range(6))
    assert [h["lr"] for h in hist] == [0.1, 0.1, 0.05, 0.05, 0.05, 0.025]
    assert seen[0] == (1, 16, 3) and len(seen) == 6


def test_non_finite_steps_are_skipped_counted_and_eventually_diagnosed():
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    before = [p.clone() for p in net.parameters()]
    hist = fit(
        lambda xb, yb: (net(xb) * float("nan")).sum(),
        opt,
        torch.randn(8, 2),
        torch.zeros(8),
        epochs=1,
        batch_size=4,
        progress=False,
        max_consecutive_skips=3,
    )
    assert [h["skipped"] for h in hist] == [1.0, 1.0]
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert opt.state == {} or all(len(s) == 0 for s in opt.state.values())  # optimizer state untouched too
    with pytest.raises(
        FloatingPointError, match="3 optimizer steps in a row were skipped because the loss is NaN"
    ):
        fit(
            lambda xb, yb: (net(xb) * float("nan")).sum(),
            opt,
            torch.randn(16, 2),
            torch.zeros(16),
            epochs=1,
            batch_size=4,
            progress=False,
            max_consecutive_skips=3,
        )


def test_one_bad_batch_is_skipped_and_training_continues():
    torch.manual_seed(0)
    bnn = bayesian(torch.nn.Linear(3, 2), num_data=32)
    x, y = torch.randn(32, 3), torch.randint(0, 2, (32,))
    bnn.validate = False  # let the NaN reach the loss, as it would from a corrupted batch

    def step(xb, yb):
        if step.calls == 2:
            xb = xb.clone()
            xb[0, 0] = float("inf")
        step.calls += 1
        return bnn.elbo(xb, yb)

    step.calls = 0
    snapshots = []
    opt = torch.optim.SGD(bnn.parameters(), lr=0.1)
    hist = fit(
        step,
        opt,
        x,
        y,
        epochs=1,
        batch_size=8,
        progress=False,
        on_step=lambda s: snapshots.append([p.detach().clone() for p in bnn.parameters()]),
    )
    assert [h["skipped"] for h in hist] == [0.0, 0.0, 1.0, 0.0]
    assert all(torch.equal(a, b) for a, b in zip(snapshots[1], snapshots[2]))  # the bad step changed nothing
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[2], snapshots[3]))
    assert all(torch.isfinite(p).all() for p in bnn.parameters())
