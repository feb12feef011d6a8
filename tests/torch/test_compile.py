"""torch.compile of a BNN: no graph breaks, the same numbers as eager, checks that still fire without host reads."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from uncertlr.torch import _checks, bayesian


def _bnn(**kw):
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    return bayesian(net, num_data=50, init_scale=0.05, **kw)


@pytest.mark.parametrize("validate", [True, False])
def test_loss_compiles_without_graph_breaks(validate):
    bnn = _bnn(validate=validate)
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    bnn.loss(x, y)  # the first eager call checks values on the host
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explained = torch._dynamo.explain(bnn.loss)(x, y)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1
    # nothing for the user to read: array-api-compat's namespace lookup made Dynamo warn about lru_cache
    assert not [str(w.message)[:120] for w in caught if "Dynamo" in str(w.message)]


def test_compiled_loss_and_gradients_equal_eager():
    """aot_eager keeps ATen's kernels, so the same seed gives the same draw and bit-close numbers."""
    bnn = _bnn()
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    torch._dynamo.reset()
    compiled = torch.compile(bnn.loss, backend="aot_eager", fullgraph=True)
    out = {}
    for name, fn in (("eager", bnn.loss), ("compiled", compiled)):
        torch.manual_seed(3)
        loss = fn(x, y, num_particles=2)
        out[name] = (loss.detach(), torch.autograd.grad(loss, [bnn.posterior.loc, bnn.posterior.log_scale]))
    torch.testing.assert_close(out["compiled"][0], out["eager"][0])
    for a, b in zip(out["compiled"][1], out["eager"][1]):
        torch.testing.assert_close(a, b)


def test_compiled_checks_still_fire():
    bnn = _bnn()
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    torch._dynamo.reset()
    compiled = torch.compile(bnn.loss, backend="aot_eager", fullgraph=True)
    compiled(x, y)
    with pytest.raises(RuntimeError, match=r"labels must lie in \[0, 3\)"):
        compiled(x, torch.tensor([0, 1, 2, 3, 0]))
    with pytest.raises(RuntimeError, match="x contains NaN or inf"):
        compiled(torch.full((5, 6), float("nan")), y)


@pytest.mark.parametrize("likelihood", ["categorical", "normal"])
def test_device_side_checks_name_the_problem(monkeypatch, likelihood):
    """The path an accelerator takes after its first call, forced on the CPU: asserts, no host reads."""
    bnn = _bnn(likelihood=likelihood)
    x = torch.randn(5, 6)
    y = torch.randint(0, 3, (5,)) if likelihood == "categorical" else torch.randn(5, 3)
    bnn.loss(x, y)
    monkeypatch.setattr(_checks, "host_reads", lambda ref, checked_before: False)
    bnn.loss(x, y)
    bnn.predict(x, num_samples=2)
    with pytest.raises(RuntimeError, match="x contains NaN or inf"):
        bnn.loss(torch.full((5, 6), float("inf")), y)
    if likelihood == "categorical":
        with pytest.raises(RuntimeError, match=r"labels must lie in \[0, 3\)"):
            bnn.loss(x, torch.tensor([0, -1, 2, 1, 0]))
    else:
        with pytest.raises(RuntimeError, match="targets contain NaN or inf"):
            bnn.loss(x, torch.full((5, 3), float("nan")))
    with torch.no_grad():
        bnn.posterior.loc.fill_(float("nan"))
    assert not torch.isfinite(bnn.loss(x, y))  # a diverged posterior: returned for StepGuard to skip
    with pytest.raises(RuntimeError, match="outputs are not finite"):
        bnn.predict(x, num_samples=2)


def test_host_reads_only_where_they_are_free():
    cpu = torch.zeros(2)
    assert _checks.host_reads(cpu, checked_before=False) and _checks.host_reads(cpu, checked_before=True)
    meta = torch.zeros(2, device="meta")  # stands in for an accelerator: only the first call reads
    assert _checks.host_reads(meta, checked_before=False)
    assert not _checks.host_reads(meta, checked_before=True)
