"""uncertlr.torch.bayesian: exactness against Pyro and autograd, layer coverage, selection, bad input."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive, TraceMeanField_ELBO
from torch import nn

from uncertlr import likelihoods, metrics, priors, select
from uncertlr.torch import BNN, NormalPrediction, bayesian
from uncertlr.torch._rnn import vmappable_rnns


def mlp(i=5, h=7, o=3):
    return nn.Sequential(nn.Linear(i, h), nn.Tanh(), nn.Linear(h, o))


def _pyro_loss_at(bnn: BNN, x, y, eps):
    """Pyro's TraceMeanField_ELBO (analytic KL) with the guide replayed at loc + scale * eps."""
    w = bnn.posterior.unflatten(bnn.posterior.loc + bnn.posterior.scale * eps)
    tr = poutine.trace(bnn.guide).get_trace(x, y)
    for n in w:
        tr.nodes[n]["value"] = w[n]
    replayed = poutine.replay(bnn.guide, trace=tr)
    return TraceMeanField_ELBO().differentiable_loss(bnn.model, replayed, x, y) / bnn.num_data


CASES = [
    ("categorical", priors.FanInNormal()),
    ("categorical", priors.Normal(scale=0.3, centered=True)),
    ("normal", priors.Normal(scale=0.7)),
    ("normal", priors.FanInNormal(gain=2.0, centered=True)),
]


@pytest.mark.parametrize("lik, prior", CASES)
def test_loss_and_gradients_equal_pyro_trace_meanfield_elbo(lik, prior):
    out = 3 if lik == "categorical" else 2
    bnn = bayesian(mlp(o=out), num_data=50, prior=prior, likelihood=lik, init_scale=0.1, kl_weight=0.5)
    x = torch.randn(6, 5)
    y = torch.randint(0, 3, (6,)) if lik == "categorical" else torch.randn(6, 2)
    # two training steps: the first draws eps, the second (antithetic) takes -eps
    for step, sign in ((1, 1.0), (2, -1.0)):
        terms = bnn.elbo(x, y)
        g_fast = torch.autograd.grad(terms.loss, list(bnn.parameters()))
        if step == 1:
            seed, eps = bnn._pair_eps
            # the draw is a function of the seed kept in the state dict, N(0, 1) noise of its own generator
            assert bnn.noise_pair.tolist() == [1, seed]
            g = torch.Generator().manual_seed(seed)
            torch.testing.assert_close(
                eps, torch.randn(bnn.posterior.num_params, generator=g), rtol=0, atol=0
            )
        else:
            assert bnn.noise_pair.tolist() == [0, seed] and bnn._pair_eps is None
        ref = _pyro_loss_at(bnn, x, y, sign * eps)
        g_ref = torch.autograd.grad(ref, list(bnn.parameters()))
        assert terms.loss.item() == pytest.approx(ref.item(), rel=1e-5)
        for a, b in zip(g_fast, g_ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # independent noise: the step draws torch.randn from the default generator
    bnn = bayesian(mlp(o=out), num_data=50, prior=prior, likelihood=lik, init_scale=0.1, antithetic=False)
    assert "noise_pair" not in bnn.state_dict()
    torch.manual_seed(1)
    terms = bnn.elbo(x, y)
    torch.manual_seed(1)
    ref = _pyro_loss_at(bnn, x, y, torch.randn(1, bnn.posterior.num_params)[0])
    assert terms.loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_analytic_kl_matches_torch_distributions():
    bnn = bayesian(mlp(), num_data=10, prior=priors.FanInNormal(gain=1.5), init_scale=0.05)
    with torch.no_grad():
        bnn.posterior.log_scale.uniform_(-4, -1)
    terms = bnn.elbo(torch.randn(4, 5), torch.randint(0, 3, (4,)))
    post = bnn.posterior
    q = torch.distributions.Normal(post.loc, post.scale)
    p = torch.distributions.Normal(torch.zeros_like(post.loc), bnn.prior_prec.rsqrt())
    assert terms.kl.item() == pytest.approx(torch.distributions.kl_divergence(q, p).sum().item(), rel=1e-5)


def test_fused_backward_equals_autograd_reference():
    """The hand-written backward against autograd through the plain formula, several particles."""
    bnn = bayesian(mlp(), num_data=30, prior=priors.Normal(scale=0.5, centered=True), init_scale=0.2)
    with torch.no_grad():
        bnn.posterior.loc.add_(0.1 * torch.randn_like(bnn.posterior.loc))
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    torch.manual_seed(3)
    terms = bnn.elbo(x, y, num_particles=4)
    g_fast = torch.autograd.grad(terms.loss, [bnn.posterior.loc, bnn.posterior.log_scale])
    torch.manual_seed(3)
    half = torch.randn(2, bnn.posterior.num_params)
    eps = torch.cat([half, -half])  # antithetic particles: two draws and their negations
    loc, log_scale = bnn.posterior.loc, bnn.posterior.log_scale
    w = loc + log_scale.exp() * eps
    losses = [nn.functional.cross_entropy(bnn._call(bnn.posterior.unflatten(w[k]), x), y) for k in range(4)]
    sp, mp = bnn.prior_prec.rsqrt(), bnn.prior_loc
    kl = (sp.log() - log_scale + (log_scale.exp() ** 2 + (loc - mp) ** 2) / (2 * sp**2) - 0.5).sum()
    ref = torch.stack(losses).mean() + kl / 30
    g_ref = torch.autograd.grad(ref, [loc, log_scale])
    assert terms.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    # the vectorised particles do not broadcast into a [K, K, B] likelihood (Pyro pitfall)
    assert terms.outputs.shape == (4, 8, 3)


def test_loss_is_an_unbiased_estimate():
    bnn = bayesian(mlp(), num_data=40, init_scale=0.3)
    x, y = torch.randn(10, 5), torch.randint(0, 3, (10,))
    with torch.no_grad():
        many = torch.stack([bnn.loss(x, y) for _ in range(400)])
        vec = bnn.loss(x, y, num_particles=4000)
    assert many.mean().item() == pytest.approx(vec.item(), abs=4 * many.std().item() / math.sqrt(400))


def test_scale_mixture_prior_kl_is_unbiased():
    pr = priors.ScaleMixtureNormal(pi=0.3, scale1=1.0, scale2=0.05)
    bnn = bayesian(nn.Linear(3, 2), num_data=5, prior=pr, init_scale=0.2)
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    with torch.no_grad():
        est = torch.stack([bnn.elbo(x, y).kl for _ in range(3000)])
        post = bnn.posterior
        w = post.loc + post.scale * torch.randn(200000, post.num_params)
        q = torch.distributions.Normal(post.loc, post.scale)
        mix = torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(torch.tensor([0.3, 0.7])),
            torch.distributions.Normal(torch.zeros(2), torch.tensor([1.0, 0.05])),
        )
        ref = (q.log_prob(w).sum(-1) - mix.log_prob(w).sum(-1)).mean()
    assert est.mean().item() == pytest.approx(ref.item(), abs=5 * est.std().item() / math.sqrt(3000) + 1e-3)


# --------------------------------------------------------------------------- the user's net and Pyro state


def test_user_net_is_never_mutated():
    net = mlp()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    bnn = bayesian(net, num_data=10)
    opt = torch.optim.Adam(bnn.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        bnn.loss(torch.randn(4, 5), torch.randint(0, 3, (4,))).backward()
        opt.step()
    assert all(isinstance(p, nn.Parameter) for p in net.parameters()) and len(list(net.parameters())) == 4
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])


def test_two_bnns_share_no_state():
    a = bayesian(mlp(), num_data=10)
    b = bayesian(mlp(), num_data=10)
    opt = torch.optim.SGD(a.parameters(), lr=1.0)
    b_before = [p.clone() for p in b.parameters()]
    a.loss(torch.randn(4, 5), torch.randint(0, 3, (4,))).backward()
    opt.step()
    assert all(torch.equal(p, q) for p, q in zip(b.parameters(), b_before))
    assert not set(map(id, a.parameters())) & set(map(id, b.parameters()))
    assert len(pyro.get_param_store().keys()) == 0


def test_pyro_predictive_runs_the_same_model():
    bnn = bayesian(mlp(), num_data=10)
    x = torch.randn(6, 5)
    samples = Predictive(bnn.model, guide=bnn.guide, num_samples=7, return_sites=["obs", "0.weight"])(x)
    assert samples["obs"].shape == (7, 6)
    # Predictive keeps a singleton plate dimension on latent sites (a Pyro convention)
    assert samples["0.weight"].shape == (7, 1, 7, 5)


def test_state_dict_round_trip_reproduces_predictions():
    a = bayesian(mlp(), num_data=10, init_scale=0.1)
    with torch.no_grad():
        a.posterior.loc.add_(1.0)
    b = bayesian(mlp(), num_data=10, init_scale=0.1)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 5)
    torch.manual_seed(7)
    pa = a.predict(x, num_samples=5)
    torch.manual_seed(7)
    pb = b.predict(x, num_samples=5)
    torch.testing.assert_close(pa, pb)


# --------------------------------------------------------------------------- predict


def test_predict_is_vectorised_and_equals_per_sample_forward():
    bnn = bayesian(mlp(), num_data=10, init_scale=0.5)
    x = torch.randn(9, 5)
    torch.manual_seed(11)
    probs = bnn.predict(x, num_samples=6)
    torch.manual_seed(11)
    draws = bnn.sample_parameters(6)
    loop = torch.stack(
        [torch.softmax(bnn._call({k: v[s] for k, v in draws.items()}, x), -1) for s in range(6)]
    )
    assert probs.shape == (6, 9, 3)
    torch.testing.assert_close(probs, loop)
    assert torch.allclose(probs.sum(-1), torch.ones(6, 9))
    assert metrics.mutual_information(probs).min() >= 0


def test_predict_chunks_large_sample_counts(monkeypatch):
    import uncertlr.torch.bnn as mod

    monkeypatch.setattr(mod, "PREDICT_CHUNK_ELEMENTS", 100)
    bnn = bayesian(mlp(), num_data=10)
    assert bnn.predict(torch.randn(2, 5), num_samples=11).shape == (11, 2, 3)


def test_regression_prediction_and_noise_learning():
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 200)[:, None]
    y = 1.5 * x + 0.3 * torch.randn_like(x)
    bnn = bayesian(
        nn.Linear(1, 1), num_data=200, likelihood=likelihoods.Normal(init_scale=1.0), prior=priors.Normal(1.0)
    )
    opt = torch.optim.Adam(bnn.parameters(), lr=0.05)
    for _ in range(600):
        opt.zero_grad()
        bnn.loss(x, y).backward()
        opt.step()
    pred = bnn.predict(x, num_samples=50)
    assert isinstance(pred, NormalPrediction) and pred.mean.shape == (50, 200, 1)
    assert bnn.likelihood_module.noise_scale.item() == pytest.approx(0.3, abs=0.06)
    assert bnn.posterior_loc()["weight"].item() == pytest.approx(1.5, abs=0.1)
    d = metrics.predictive_variance(pred.mean, pred.variance)
    assert torch.all(d.epistemic < d.aleatoric)


def test_conjugate_linear_regression_posterior():
    """Known noise, N(0, 1) prior: the Gaussian mean-field optimum of a 1-D model is the exact posterior."""
    torch.manual_seed(0)
    n, noise = 50, 0.5
    x = torch.randn(n, 1)
    y = 0.8 * x[:, 0] + noise * torch.randn(n)
    net = nn.Linear(1, 1, bias=False)
    bnn = bayesian(
        net, num_data=n, likelihood=likelihoods.Normal(scale=noise), prior=priors.Normal(1.0), init_scale=0.1
    )
    opt = torch.optim.Adam(bnn.parameters(), lr=0.02)
    for _ in range(3000):
        opt.zero_grad()
        bnn.loss(x, y[:, None], num_particles=8).backward()
        opt.step()
    prec = 1.0 + (x[:, 0] ** 2).sum() / noise**2
    mean = (x[:, 0] * y).sum() / noise**2 / prec
    assert bnn.posterior_loc()["weight"].item() == pytest.approx(mean.item(), abs=0.02)
    assert bnn.posterior_scale()["weight"].item() == pytest.approx(prec.rsqrt().item(), rel=0.1)


# --------------------------------------------------------------------------- layer coverage


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c2 = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.c1 = nn.Conv1d(4, 4, 3)
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.c2(x))).mean(-1)
        return self.fc(self.ln(self.c1(h).mean(-1)))


class SeqNet(nn.Module):
    def __init__(self, kind, **kw):
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.rnn = getattr(nn, kind)(6, 8, batch_first=True, **kw)
        d = 2 if kw.get("bidirectional") else 1
        self.fc = nn.Linear(8 * d, 3)

    def forward(self, x):
        h, _ = self.rnn(self.emb(x))
        return self.fc(h[:, -1])


class AttnNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h, _ = self.att(x, x, x)
        return self.fc(h.mean(1))


NETS = {
    "conv_bn_ln": (ConvNet, lambda: torch.randn(6, 1, 8, 8)),
    "lstm": (lambda: SeqNet("LSTM", num_layers=2), lambda: torch.randint(0, 20, (6, 5))),
    "gru_bi": (lambda: SeqNet("GRU", bidirectional=True), lambda: torch.randint(0, 20, (6, 5))),
    "rnn_relu": (lambda: SeqNet("RNN", nonlinearity="relu"), lambda: torch.randint(0, 20, (6, 5))),
    "attention": (AttnNet, lambda: torch.randn(6, 4, 8)),
}


@pytest.mark.parametrize("kind", list(NETS))
def test_layer_types_train_and_predict(kind):
    make, data = NETS[kind]
    bnn = bayesian(make(), num_data=60, init_scale=0.01)
    x, y = data(), torch.randint(0, 3, (6,))
    opt = torch.optim.Adam(bnn.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = bnn.loss(x, y)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < first
    probs = bnn.predict(x, num_samples=4)
    assert probs.shape == (4, 6, 3) and torch.isfinite(probs).all()
    if kind != "conv_bn_ln":  # BatchNorm with batch statistics cannot run several draws at once
        assert bnn.elbo(x, y, num_particles=3).outputs.shape == (3, 6, 3)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_vmappable_rnn_matches_native(kind, batch_first):
    rnn = getattr(nn, kind)(5, 7, num_layers=2, bidirectional=True, batch_first=batch_first)
    x = torch.randn(3, 4, 5)
    ref_out, ref_h = rnn(x)
    with vmappable_rnns(rnn):
        out, h = rnn(x)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for a, b in zip(h if kind == "LSTM" else (h,), ref_h if kind == "LSTM" else (ref_h,)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert "forward" not in rnn.__dict__  # native forward restored


def test_batchnorm_with_several_particles_is_refused_clearly():
    bnn = bayesian(ConvNet(), num_data=10)
    with pytest.raises(ValueError, match="BatchNorm"):
        bnn.loss(torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,)), num_particles=2)


# --------------------------------------------------------------------------- selection and priors


def test_last_layer_selection_keeps_the_rest_deterministic():
    bnn = bayesian(mlp(), num_data=10, select=select.last_layer())
    assert bnn.random_names == ["2.weight", "2.bias"]
    det = dict(bnn.net.named_parameters())
    assert set(det) == {"0.weight", "0.bias"}
    w0 = det["0.weight"].clone()
    opt = torch.optim.SGD(bnn.parameters(), lr=0.5)
    bnn.loss(torch.randn(4, 5), torch.randint(0, 3, (4,))).backward()
    opt.step()
    assert not torch.equal(w0, det["0.weight"])  # deterministic weights are trained by the same optimizer


def test_select_by_name_and_custom_predicate():
    assert bayesian(mlp(), num_data=1, select=select.by_name("*.weight")).random_names == [
        "0.weight",
        "2.weight",
    ]
    assert bayesian(mlp(), num_data=1, select=lambda n, mod: n.startswith("0.")).random_names == [
        "0.weight",
        "0.bias",
    ]
    assert bayesian(ConvNet(), num_data=1, select=select.by_type(nn.Conv1d, nn.Conv2d)).random_names == [
        "c2.weight",
        "c2.bias",
        "c1.weight",
        "c1.bias",
    ]
    s = ~select.last_layer() & select.by_name("*.weight")
    assert bayesian(mlp(), num_data=1, select=s).random_names == ["0.weight"]
    with pytest.raises(ValueError, match="chose none"):
        bayesian(mlp(), num_data=1, select=select.by_name("nothing"))


def test_prior_scales_and_centring():
    net = mlp(i=16, h=4, o=3)
    bnn = bayesian(net, num_data=1, prior=priors.FanInNormal(gain=2.0, centered=True))
    sd = bnn.posterior.unflatten(bnn.prior_prec.rsqrt())
    assert torch.allclose(sd["0.weight"], torch.tensor(2.0 / 4.0))  # gain / sqrt(16)
    assert torch.allclose(sd["0.bias"], torch.tensor(2.0 / 4.0))  # a bias takes its layer's fan-in
    assert torch.allclose(sd["2.weight"], torch.tensor(1.0))  # 2 / sqrt(4)
    assert torch.equal(bnn.posterior.unflatten(bnn.prior_loc)["0.weight"], net[0].weight.detach())
    assert bayesian(net, num_data=1, prior=priors.Normal(0.2)).prior_loc is None
    # the default prior is the documented iid N(0, 1), whatever the layer widths
    default = bayesian(net, num_data=1)
    assert default.prior == priors.Normal(1.0)
    assert torch.equal(default.prior_prec, torch.ones_like(default.prior_prec))


def test_posterior_scale_and_mean_network():
    bnn = bayesian(mlp(), num_data=10, init_scale=0.02)
    scales = bnn.posterior_scale()
    assert list(scales) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert all(torch.allclose(s, torch.tensor(0.02)) for s in scales.values())
    spread = bnn.posterior_spread()
    assert set(spread) == {"0", "2"} and spread["0"].mean_scale == pytest.approx(0.02)
    det = bnn.mean_network()
    x = torch.randn(3, 5)
    torch.testing.assert_close(det(x), bnn._call(bnn.posterior_loc(), x))


def test_learns_a_separable_problem_with_calibrated_confidence():
    torch.manual_seed(0)
    x = torch.randn(400, 5)
    y = (x[:, 0] + x[:, 1] > 0).long()
    bnn = bayesian(mlp(o=2), num_data=400, init_scale=1e-3)
    opt = torch.optim.Adam(bnn.parameters(), lr=1e-2)
    for _ in range(300):
        idx = torch.randint(0, 400, (64,))
        opt.zero_grad()
        bnn.loss(x[idx], y[idx]).backward()
        opt.step()
    xt = torch.randn(400, 5)
    yt = (xt[:, 0] + xt[:, 1] > 0).long()
    probs = bnn.predict(xt, num_samples=30)
    assert float(metrics.accuracy(probs, yt)) > 0.93
    far = bnn.predict(10 * torch.randn(400, 5), num_samples=30)
    assert metrics.mutual_information(far).mean() > metrics.mutual_information(probs).mean()


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def clf():
    return bayesian(mlp(), num_data=10)


@pytest.mark.parametrize(
    "x, y, err, match",
    [
        (torch.full((4, 5), float("nan")), torch.zeros(4, dtype=torch.long), ValueError, "NaN"),
        (torch.randn(4, 5), torch.tensor([0, 1, 2, 3]), ValueError, r"\[0, 3\)"),
        (torch.randn(4, 5), torch.tensor([0, 1, -1, 2]), ValueError, r"\[0, 3\)"),
        (torch.randn(4, 5), torch.zeros(4), TypeError, "integer"),
        (torch.randn(4, 5), torch.zeros(3, dtype=torch.long), ValueError, "batch size"),
        (torch.randn(4, 5, dtype=torch.float64), torch.zeros(4, dtype=torch.long), TypeError, "dtype"),
        (torch.randn(0, 5), torch.zeros(0, dtype=torch.long), ValueError, "non-empty"),
        (torch.randn(4, 7), torch.zeros(4, dtype=torch.long), ValueError, r"shape \(4, 7\)"),
        (np.zeros((4, 5), np.float32), torch.zeros(4, dtype=torch.long), TypeError, "torch.Tensor"),
    ],
)
def test_bad_training_input_is_named(clf, x, y, err, match):
    with pytest.raises(err, match=match):
        clf.loss(x, y)


def test_bad_regression_targets_and_arguments():
    reg = bayesian(nn.Linear(3, 1), num_data=10, likelihood="normal")
    with pytest.raises(ValueError, match="reshape"):
        reg.loss(torch.randn(4, 3), torch.randn(4))
    with pytest.raises(ValueError, match="NaN"):
        reg.loss(torch.randn(4, 3), torch.full((4, 1), float("inf")))
    with pytest.raises(ValueError, match="num_data"):
        bayesian(nn.Linear(3, 1), num_data=0)
    with pytest.raises(ValueError, match="num_particles"):
        reg.loss(torch.randn(4, 3), torch.randn(4, 1), num_particles=0)
    with pytest.raises(ValueError, match="init_scale"):
        bayesian(nn.Linear(3, 1), num_data=1, init_scale=-1.0)
    with pytest.raises(ValueError, match="likelihood"):
        bayesian(nn.Linear(3, 1), num_data=1, likelihood="poisson")
    with pytest.raises(ValueError, match="NaN or inf"):
        net = nn.Linear(3, 1)
        with torch.no_grad():
            net.weight[0, 0] = float("nan")
        bayesian(net, num_data=1)
    with pytest.raises(ValueError, match="positive"):
        priors.Normal(scale=0.0)


class _Tied(nn.Module):
    """Two square layers sharing one weight, then a head."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4, bias=False), nn.Linear(4, 4), nn.Linear(4, 3)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.head(torch.tanh(self.b(torch.tanh(self.a(x)))))


def test_tied_parameters_are_refused_as_random_and_stay_tied_when_deterministic():
    with pytest.raises(ValueError, match="tied parameters cannot be made random"):
        bayesian(_Tied(), num_data=10)
    bnn = bayesian(_Tied(), num_data=10, select=lambda n, mod: n.startswith(("head", "b.bias")))
    assert bnn.random_names == ["b.bias", "head.weight", "head.bias"]
    net = bnn.net  # bayesian() works on a copy
    assert net.a.weight is net.b.weight
    torch.manual_seed(0)
    x = torch.randn(5, 4)
    with torch.no_grad():  # the posterior mean: the network's own weights, the shared one in both layers
        net.a.weight.mul_(2.0)  # the deterministic tied weight is read from the module at every call
        loc = bnn.posterior.unflatten(bnn.posterior.loc)
        out = bnn._call(loc, x)
        h = torch.tanh(x @ net.a.weight.T)
        ref = torch.tanh(h @ net.a.weight.T + loc["b.bias"]) @ loc["head.weight"].T + loc["head.bias"]
    torch.testing.assert_close(out, ref)
