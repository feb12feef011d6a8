"""bayesian(net, inputs=..., output=...): several inputs, dict batches, output objects, clear refusals."""

from __future__ import annotations

from collections import OrderedDict, namedtuple
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from uncertlr.torch import bayesian
from uncertlr.torch._adapters import Adapter
from uncertlr_models import TinyTextTransformer

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(2, 4)

    def forward(self, x1, x2, scale=1.0):
        return (self.a(x1) + self.b(x2)) * scale


@dataclass
class Out:
    logits: torch.Tensor
    extra: torch.Tensor


class ModelOutputLike(OrderedDict):
    """Like transformers' ModelOutput: a dict whose keys are also attributes."""

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError as e:
            raise AttributeError(k) from e


def _wrapped(kind):
    class Wrapped(TwoInputs):
        def forward(self, x1, x2):
            z = super().forward(x1, x2)
            return {
                "dict": {"logits": z, "h": z},
                "dataclass": Out(z, z),
                "modeloutput": ModelOutputLike(loss=None, logits=z),
                "tuple": (z.sum(), z),
                "namedtuple": namedtuple("R", "hidden logits")(z, z),
            }[kind]

    return Wrapped()


def _same_weights_reference(bnn, x1, x2):
    """The plain net with the posterior means: what the BNN computes at sigma -> 0."""
    net = bnn.mean_network()
    out = net(x1, x2)
    return bnn.adapter.logits(out)


@pytest.mark.parametrize(
    "inputs, make_batch",
    [
        ("positional", lambda x1, x2: (x1, x2)),
        ("keywords", lambda x1, x2: {"x1": x1, "x2": x2}),
        (("x1", "x2"), lambda x1, x2: {"x1": x1, "x2": x2, "labels": torch.zeros(len(x1))}),
        (lambda b: ((b["p"],), {"x2": b["q"]}), lambda x1, x2: {"p": x1, "q": x2}),
    ],
)
def test_several_inputs_give_the_nets_outputs(inputs, make_batch):
    torch.manual_seed(0)
    x1, x2 = torch.randn(5, 3), torch.randn(5, 2)
    bnn = bayesian(TwoInputs(), num_data=50, inputs=inputs, init_scale=1e-8)
    out = bnn.sample_outputs(make_batch(x1, x2), num_samples=3)
    ref = bnn.mean_network()(x1, x2)
    assert out.shape == (3, 5, 4)
    torch.testing.assert_close(out, ref.expand(3, 5, 4), atol=1e-5, rtol=0)
    # training works the same way: the ELBO's gradient reaches both input layers
    terms = bnn.elbo(make_batch(x1, x2), torch.randint(0, 4, (5,)), num_particles=2)
    terms.loss.backward()
    assert terms.outputs.shape == (2, 5, 4)
    assert float(bnn.posterior.loc.grad.abs().sum()) > 0


@pytest.mark.parametrize(
    "kind, output",
    [
        ("dict", "logits"),
        ("dataclass", "logits"),
        ("modeloutput", "logits"),
        ("tuple", 1),
        ("tuple", -1),
        ("namedtuple", "logits"),
        ("dict", lambda r: r["logits"]),
    ],
)
def test_output_objects(kind, output):
    torch.manual_seed(0)
    x1, x2 = torch.randn(6, 3), torch.randn(6, 2)
    bnn = bayesian(_wrapped(kind), num_data=50, inputs="positional", output=output, init_scale=1e-8)
    probs = bnn.predict((x1, x2), num_samples=4)
    ref = torch.softmax(_same_weights_reference(bnn, x1, x2), -1)
    torch.testing.assert_close(probs, ref.expand(4, 6, 4), atol=1e-5, rtol=0)


def test_pyro_model_and_guide_take_structured_batches():
    pyro = pytest.importorskip("pyro")
    bnn = bayesian(_wrapped("dataclass"), num_data=20, inputs="keywords", output="logits")
    batch, y = {"x1": torch.randn(4, 3), "x2": torch.randn(4, 2)}, torch.randint(0, 4, (4,))
    loss = pyro.infer.TraceMeanField_ELBO().differentiable_loss(bnn.model, bnn.guide, batch, y)
    assert torch.isfinite(loss)


def test_transformer_with_attention_mask():
    torch.manual_seed(0)
    net = TinyTextTransformer(vocab_size=20, num_classes=3)
    ids = torch.randint(1, 20, (4, 6))
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[:, 4:] = 0
    bnn = bayesian(net, num_data=100, inputs=("input_ids", "attention_mask"), output="logits")
    batch = {"input_ids": ids, "attention_mask": mask}
    torch.manual_seed(1)
    p = bnn.predict(batch, num_samples=5)
    assert p.shape == (5, 4, 3)
    # the mask is honoured: changing padded tokens does not change any weight sample's prediction
    other = {
        "input_ids": torch.where(mask.bool(), ids, torch.randint(1, 20, ids.shape)),
        "attention_mask": mask,
    }
    torch.manual_seed(1)
    torch.testing.assert_close(bnn.predict(other, num_samples=5), p, atol=1e-5, rtol=0)
    bnn.loss(batch, torch.randint(0, 3, (4,))).backward()


@pytest.mark.parametrize(
    "kwargs, batch, err, match",
    [
        ({}, {"x1": torch.randn(2, 3)}, TypeError, "inputs='keywords'"),
        ({}, (torch.randn(2, 3), torch.randn(2, 2)), TypeError, "inputs='positional'"),
        ({"inputs": "positional"}, {"x1": 1}, TypeError, "tuple or list"),
        ({"inputs": ("x1", "x2")}, {"x1": torch.randn(2, 3)}, KeyError, r"no \['x2'\]"),
        (
            {"inputs": "keywords"},
            {"x1": torch.randn(2, 3), "x2": torch.randn(3, 2)},
            ValueError,
            "batch axis",
        ),
        (
            {"inputs": "keywords"},
            {"x1": torch.randn(2, 3), "x2": torch.full((2, 2), float("nan"))},
            ValueError,
            r"x\['x2'\] contains NaN",
        ),
        (
            {"inputs": "keywords"},
            {"x1": torch.randn(2, 3).double(), "x2": torch.randn(2, 2)},
            TypeError,
            r"x\['x1'\] has dtype torch.float64",
        ),
    ],
)
def test_bad_batches_are_named(kwargs, batch, err, match):
    bnn = bayesian(TwoInputs(), num_data=10, **kwargs)
    with pytest.raises(err, match=match):
        bnn.predict(batch, num_samples=2)


def test_output_object_without_output_is_a_clear_error():
    bnn = bayesian(_wrapped("modeloutput"), num_data=10, inputs="positional")
    with pytest.raises(
        TypeError, match=r"ModelOutputLike, not a tensor \(fields: loss, logits\).*output='logits'"
    ):
        bnn.predict((torch.randn(2, 3), torch.randn(2, 2)))
    bnn = bayesian(_wrapped("dataclass"), num_data=10, inputs="positional", output="logit")
    with pytest.raises(KeyError, match=r"output='logit'.*fields: logits, extra"):
        bnn.predict((torch.randn(2, 3), torch.randn(2, 2)))
    bnn = bayesian(_wrapped("tuple"), num_data=10, inputs="positional", output=2)
    with pytest.raises(IndexError, match="tuple of 2"):
        bnn.predict((torch.randn(2, 3), torch.randn(2, 2)))


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"inputs": "kwargs"}, ValueError, "'positional', 'keywords'"),
        ({"inputs": ()}, ValueError, "non-empty"),
        ({"inputs": 3}, TypeError, "inputs must be"),
        ({"output": True}, TypeError, "output must be"),
        ({"output": 1.5}, TypeError, "output must be"),
    ],
)
def test_bad_adapter_declarations(kwargs, err, match):
    with pytest.raises(err, match=match):
        Adapter(**kwargs)
