"""LastLayerMCMCSignal: NUTS on a torch network's last layer drives an uncertainty signal."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from uncertlr.data import load_digits, shuffle_pixels
from uncertlr.jax import LastLayerMCMCSignal


@pytest.fixture(scope="module")
def digits_features():
    """A small torch MLP trained briefly on digits; its tanh features for train, test and shuffled test."""
    torch.manual_seed(0)
    split = load_digits(seed=0)
    body = nn.Sequential(nn.Linear(64, 32), nn.Tanh())
    head = nn.Linear(32, 10)
    opt = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=3e-2)
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(head(body(x)), y).backward()
        opt.step()
    with torch.no_grad():
        f_train = body(x)
        f_test = body(torch.from_numpy(split.x_test))
        f_ood = body(torch.from_numpy(shuffle_pixels(split.x_test, seed=1)))
    return f_train, split.y_train, f_test, f_ood


@pytest.mark.parametrize("kind", ["entropy", "mutual_information"])
def test_signal_is_finite_and_higher_on_shuffled_pixels(digits_features, kind):
    f_train, y_train, f_test, f_ood = digits_features
    sig = LastLayerMCMCSignal(
        num_classes=10,
        kind=kind,
        refresh_every=3,
        num_warmup=60,
        num_samples=60,
        num_chains=2,
        max_reference=400,
        rng_key=0,
    )
    u_in = [sig(step, f_test[64 * step : 64 * (step + 1)], reference=(f_train, y_train)) for step in range(3)]
    assert sig.refreshes == 1  # steps 1, 2 reuse the posterior of step 0
    u_out = [sig.score(f_ood[64 * k : 64 * (k + 1)]) for k in range(3)]
    assert all(math.isfinite(u) and u >= 0 for u in u_in + u_out)
    assert min(u_out) > max(u_in)
    # the signal is the posterior-predictive quantity: recompute it independently from the draws
    s = sig.result.samples
    h = f_test[:64].numpy()
    logits = np.einsum("nd,sdc->snc", h, np.asarray(s["kernel"])) + np.asarray(s["bias"])[:, None]
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    pbar = p.mean(0)
    total = -(pbar * np.log(pbar)).sum(-1)
    expected = total if kind == "entropy" else total + (p * np.log(p)).sum(-1).mean(0)
    assert u_in[0] == pytest.approx(expected.mean(), rel=1e-3, abs=1e-5)
    # a refresh happens again after refresh_every steps, with the cost accounted
    first = np.asarray(sig.result.samples["kernel"])
    sig(3, f_test[:64], reference=(f_train, y_train))
    assert (
        sig.refreshes == 2
        and len(sig.refresh_seconds) == 2
        and sig.seconds == pytest.approx(sum(sig.refresh_seconds))
    )
    assert sig.result.mcmc.num_chains == 2 and sig.result.samples["kernel"].shape == first.shape
    assert not np.allclose(
        np.asarray(sig.result.samples["kernel"]), first
    )  # new draws, another reference subset


def test_bad_signal_input_is_named():
    with pytest.raises(ValueError, match="kind"):
        LastLayerMCMCSignal(num_classes=3, kind="variance")
    with pytest.raises(ValueError, match="refresh_every"):
        LastLayerMCMCSignal(num_classes=3, refresh_every=0)
    sig = LastLayerMCMCSignal(num_classes=3, num_warmup=10, num_samples=10, num_chains=1)
    with pytest.raises(ValueError, match="reference"):
        sig(0, np.zeros((4, 2), np.float32))
    with pytest.raises(RuntimeError, match="no posterior yet"):
        sig.score(np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="NaN or inf"):
        sig.refresh(np.full((6, 2), np.nan, np.float32), np.zeros(6, int))
    with pytest.raises(ValueError, match=r"features \[N, D\] and labels \[N\]"):
        sig.refresh(np.zeros((6, 2), np.float32), np.zeros(5, int))


def test_batch_signal_twins_match_torch_and_metrics():
    """uncertlr.jax.signals' batch signals: the torch names, the torch numbers, the metrics' decomposition."""
    import jax.numpy as jnp

    from uncertlr import metrics
    from uncertlr.jax import signals as js
    from uncertlr.torch import signals as ts

    names = {"batch_entropy", "batch_mutual_information", "batch_predictive_variance",
             "batch_epistemic_variance", "batch_aleatoric_variance"}  # fmt: skip
    assert names <= set(js.__all__) and names <= set(ts.__all__)
    g = torch.Generator().manual_seed(3)
    out = torch.randn(4, 6, 2, generator=g)
    noise = 0.2 + torch.rand(6, 2, generator=g)
    logits = torch.randn(4, 6, 5, generator=g)
    d = metrics.predictive_variance(out.numpy(), (noise**2).expand_as(out).numpy())
    np.testing.assert_allclose(float(js.batch_predictive_variance(jnp.asarray(out), jnp.asarray(noise))),
                               d.total.mean(), rtol=1e-5)  # fmt: skip
    pairs = [
        (
            ts.batch_predictive_variance(out, noise),
            js.batch_predictive_variance(jnp.asarray(out), jnp.asarray(noise)),
        ),
        (ts.batch_aleatoric_variance(out, 0.3), js.batch_aleatoric_variance(jnp.asarray(out), 0.3)),
        (ts.batch_epistemic_variance(out), js.batch_epistemic_variance(jnp.asarray(out))),
        (ts.batch_entropy(logits), js.batch_entropy(jnp.asarray(logits))),
        (ts.batch_entropy(logits[0]), js.batch_entropy(jnp.asarray(logits[0]))),
        (ts.batch_mutual_information(logits), js.batch_mutual_information(jnp.asarray(logits))),
    ]
    for t, j in pairs:
        np.testing.assert_allclose(float(t), float(j), rtol=2e-5)
    for fn in (js.batch_entropy, js.batch_mutual_information):
        with pytest.raises(ValueError, match="regression mean"):
            fn(jnp.zeros((2, 8, 1)))
    with pytest.raises(ValueError, match="broadcast"):
        js.batch_predictive_variance(jnp.zeros((2, 3)), jnp.ones(4))
