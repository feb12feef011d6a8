"""Deep ensembles and MC dropout: independent members, exact predictive shapes, dropout statistics."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from uncertlr import metrics
from uncertlr.likelihoods import NormalPrediction
from uncertlr.torch import BNN, Ensemble, MCDropout, PointNetwork, bayesian, deep_ensemble, mc_dropout


def _mlp(d_in=4, d_out=3, hidden=16):
    return torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, d_out))


# --------------------------------------------------------------------------- ensembles


def test_members_are_independent_copies_and_the_original_is_untouched():
    net = _mlp()
    before = [p.detach().clone() for p in net.parameters()]
    ens = deep_ensemble(net, size=4, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    firsts = [m.net[0].weight for m in ens.members]
    assert all(not torch.equal(firsts[0], w) for w in firsts[1:])
    # the same seed gives the same ensemble; the global RNG is left as it was
    state = torch.random.get_rng_state()
    again = deep_ensemble(net, size=4, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a.net[0].weight, b.net[0].weight) for a, b in zip(ens.members, again.members))


def test_joint_training_equals_training_each_member_alone():
    """Σ of member losses: one Adam over all members gives each member exactly its solo trajectory."""
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    ens = deep_ensemble(_mlp(), size=3, seed=0)
    solo = [PointNetwork(copy.deepcopy(m.net)) for m in ens.members]
    opt = torch.optim.Adam(ens.parameters(), lr=1e-2)
    opts = [torch.optim.Adam(s.parameters(), lr=1e-2) for s in solo]
    for _ in range(5):
        opt.zero_grad()
        ens.loss(x, y).backward()
        opt.step()
        for s, o in zip(solo, opts):
            o.zero_grad()
            s.loss(x, y).backward()
            o.step()
    for m, s in zip(ens.members, solo):
        for a, b in zip(m.parameters(), s.parameters()):
            assert torch.allclose(a, b, atol=1e-6)


def test_predict_stacks_one_draw_per_member_and_matches_the_members():
    ens = deep_ensemble(_mlp(), size=5, seed=0)
    x = torch.randn(7, 4)
    probs = ens.predict(x, num_samples=100)
    assert probs.shape == (5, 7, 3)
    for m, p in zip(ens.members, probs):
        assert torch.allclose(p, torch.softmax(m.net(x), -1))
    terms = ens.elbo(x, torch.randint(0, 3, (7,)))
    assert terms.outputs.shape == (5, 7, 3) and float(terms.kl) == 0.0


def test_ensemble_of_bnns():
    ens = deep_ensemble(lambda: bayesian(_mlp(), num_data=50), size=3, seed=0)
    assert all(isinstance(m, BNN) for m in ens.members)
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    terms = ens.elbo(x, y, num_particles=2)
    assert terms.outputs.shape == (6, 6, 3)
    assert torch.allclose(
        terms.loss, sum(m.elbo(x, y).loss for m in ens.members), atol=5.0
    )  # same KL, noisy NLL
    assert ens.predict(x, num_samples=7).shape == (9, 6, 3)  # ceil(7 / 3) = 3 draws per member
    sig = ens.parameter_scale()
    assert set(map(id, sig)) == {id(m.posterior.loc) for m in ens.members}


def test_regression_ensemble_predicts_a_normal_prediction():
    ens = deep_ensemble(_mlp(d_out=1), size=3, likelihood="normal")
    pred = ens.predict(torch.randn(5, 4))
    assert isinstance(pred, NormalPrediction) and pred.mean.shape == (3, 5, 1)
    assert torch.allclose(pred.variance, torch.ones_like(pred.variance))  # learned noise starts at 1
    d = metrics.predictive_variance(pred.mean, pred.variance)
    assert float(d.epistemic.min()) > 0


def test_parameter_scale_is_the_spread_over_members():
    ens = deep_ensemble(_mlp(), size=4, seed=0)
    sig = ens.parameter_scale()
    w = torch.stack([m.net[0].weight.detach() for m in ens.members])
    for m in ens.members:
        assert torch.equal(sig[m.net[0].weight], w.std(0))


def test_ensemble_refuses_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        deep_ensemble(_mlp(), size=1)
    with pytest.raises(ValueError, match="reset_parameters"):
        deep_ensemble(torch.nn.ReLU(), size=2)
    with pytest.raises(TypeError, match="needs a factory"):
        deep_ensemble(bayesian(_mlp(), num_data=10), size=2)
    with pytest.raises(TypeError, match="must return a torch.nn.Module"):
        deep_ensemble(lambda: 3, size=2)
    with pytest.raises(ValueError, match="same likelihood"):
        Ensemble([PointNetwork(_mlp()), PointNetwork(_mlp(), "normal")])
    with pytest.raises(ValueError, match="labels|label"):
        deep_ensemble(_mlp(), size=2).loss(torch.randn(3, 4), torch.tensor([0, 1, 7]))


# --------------------------------------------------------------------------- MC dropout


def test_added_dropout_skips_the_input_layer_and_leaves_the_original():
    net = _mlp()
    model = mc_dropout(net, p=0.3)
    assert isinstance(model, MCDropout) and model.dropped == ["2"]
    assert not net[2]._forward_pre_hooks  # the user's network has no hook
    x = torch.randn(5, 4)
    model.eval()
    assert torch.equal(model.net(x), net(x))  # eval without sampling: no dropout


def test_predict_draws_independent_masks_with_the_right_rate():
    """Each draw drops the head's input features with probability p (inverted scaling keeps the mean)."""
    lin = torch.nn.Linear(1, 2000, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    head = torch.nn.Linear(2000, 1, bias=False)
    with torch.no_grad():
        head.weight.fill_(1.0 / 2000)
    model = mc_dropout(torch.nn.Sequential(lin, head), p=0.25, likelihood="normal")
    pred = model.predict(torch.ones(3, 1), num_samples=400)
    m = pred.mean[..., 0]
    assert m.shape == (400, 3)
    assert abs(float(m.mean()) - 1.0) < 0.01  # E[z / (1 - p)] = 1
    # Var of the mean of 2000 inverted-dropout units: p / (1 - p) / 2000
    assert abs(float(m.var()) / (0.25 / 0.75 / 2000) - 1.0) < 0.2
    assert not torch.equal(m[:, 0], m[:, 1])  # every input gets its own masks


def test_own_dropout_layers_are_used_and_batchnorm_stays_in_eval():
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3)
    )
    model = mc_dropout(net, p=None)
    stats = net[1].running_mean.clone()
    probs = model.predict(torch.randn(6, 4), num_samples=20)
    assert probs.shape == (20, 6, 3) and float(metrics.mutual_information(probs).mean()) > 0
    assert torch.equal(model.net[1].running_mean, stats)  # no BatchNorm update while sampling
    with pytest.raises(ValueError, match="needs dropout added with p="):
        model.parameter_scale()


def test_parameter_scale_of_dropout():
    model = mc_dropout(_mlp(), p=0.2)
    sig = model.parameter_scale()
    w = model.net[2].weight
    assert list(sig) == [w]
    assert torch.allclose(sig[w], w.detach().abs() * math.sqrt(0.2 / 0.8))


def test_multi_particle_elbo_and_errors():
    model = mc_dropout(_mlp(), p=0.5)
    terms = model.elbo(torch.randn(5, 4), torch.randint(0, 3, (5,)), num_particles=3)
    assert terms.outputs.shape == (3, 5, 3)
    with pytest.raises(ValueError, match="no dropout layer"):
        mc_dropout(_mlp(), p=None)
    with pytest.raises(ValueError, match=r"dropout rate in \(0, 1\)"):
        mc_dropout(_mlp(), p=1.0)
    with pytest.raises(ValueError, match="single Linear/Conv"):
        mc_dropout(torch.nn.Linear(3, 2), p=0.1)
