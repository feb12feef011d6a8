"""Reference architectures: shapes, input checks, and that each one wraps with uncertlr.torch.bayesian."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from uncertlr.torch import bayesian
from uncertlr_models import MLP, ImageCNN, ResNet18, SpeechCNN, SpeechCRNN, TransformerClassifier

CASES = [
    (lambda: MLP(64, (16,), 10), (6, 1, 8, 8)),
    (lambda: ImageCNN(1, 10, channels=(8, 8)), (6, 1, 8, 8)),
    (lambda: ImageCNN(1, 10, channels=(4, 8, 8)), (3, 1, 28, 28)),
    (lambda: SpeechCNN(16, 10, channels=(4, 8)), (6, 16, 20)),
    (lambda: SpeechCRNN(16, 10, channels=(4,), hidden=8), (6, 16, 20)),
    (lambda: ResNet18(10, 3, norm="group", width=8), (4, 3, 8, 8)),
    (lambda: TransformerClassifier(10, 10, d_model=16, heads=2, layers=1, max_len=8), (6, 8)),
]


@pytest.mark.parametrize(("make", "shape"), CASES)
def test_models_wrap_as_bnns_and_train(make, shape):
    torch.manual_seed(0)
    x = torch.randint(0, 10, shape) if len(shape) == 2 else torch.randn(*shape)  # token ids or features
    y = torch.randint(0, 10, (shape[0],))
    net = make()
    assert net(x).shape == (shape[0], 10)
    bnn = bayesian(net, num_data=100)
    assert len(bnn.random_names) == len(list(net.parameters()))
    probs = bnn.predict(x, num_samples=4)
    assert probs.shape == (4, shape[0], 10)
    torch.testing.assert_close(probs.sum(-1), torch.ones(4, shape[0]))
    assert (probs.std(0) > 0).any()  # samples differ
    # the vectorised multi-particle ELBO (vmap over weights, GRU included) trains
    opt = torch.optim.Adam(bnn.parameters(), lr=1e-2)
    first = None
    for _ in range(12):
        opt.zero_grad()
        loss = bnn.loss(x, y, num_particles=2)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < first


def test_input_checks():
    with pytest.raises(ValueError, match=r"expected features \[B, 40, frames\]"):
        SpeechCNN(40)(torch.zeros(2, 32, 64))
    with pytest.raises(ValueError, match="need at least 8 bands"):
        SpeechCNN(4, channels=(4, 4, 4))
    with pytest.raises(ValueError, match="at least one convolution block"):
        ImageCNN(channels=())
    with pytest.raises(ValueError, match=r"expected images \[B, C, H, W\]"):
        ResNet18()(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="norm must be"):
        ResNet18(norm="layer")
    with pytest.raises(ValueError, match="multiple of heads"):
        TransformerClassifier(10, 2, d_model=10, heads=4)
    with pytest.raises(ValueError, match="T <= 8"):
        TransformerClassifier(10, 2, d_model=8, heads=2, max_len=8)(torch.zeros(2, 9, dtype=torch.long))


def test_resnet18_has_torchvisions_layout():
    """torchvision's resnet18() has 11,689,512 parameters (ImageNet stem, 1000 classes) and 62 weight tensors."""
    net = ResNet18(1000, stem="imagenet")
    assert sum(p.numel() for p in net.parameters()) == 11_689_512
    assert len(list(net.parameters())) == 62
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 4),
    h=st.integers(2, 9),
    w=st.integers(2, 9),
    lead=st.booleans(),
    nan=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_maxpool2x2_takes_the_same_maxima_as_nn_maxpool2d(n, c, h, w, lead, nan, seed):
    """Without autograd (the pairwise-maximum path) the output equals nn.MaxPool2d(2)'s bit for bit, odd sizes
    floored, NaN propagated, batched or not; with autograd it is nn.MaxPool2d itself (values and gradients)."""
    from uncertlr_models._pool import MaxPool2x2

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*((n,) if lead else ()), c, h, w, generator=g)
    if nan:
        x.view(-1)[int(torch.randint(0, x.numel(), (1,), generator=g))] = float("nan")
    ours, ref = MaxPool2x2(), torch.nn.MaxPool2d(2)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0, equal_nan=True)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours(a).nan_to_num().sum().backward()
    ref(b).nan_to_num().sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("make", "shape"),
    [(lambda: SpeechCNN(16, 10, channels=(4, 8)), (5, 16, 21)), (lambda: ImageCNN(1, 10), (5, 1, 9, 9))],
)
def test_reference_cnns_predict_exactly_as_with_nn_maxpool2d(make, shape):
    """SpeechCNN and ImageCNN pool with MaxPool2x2: their no-grad outputs equal the same weights with nn.MaxPool2d."""
    from uncertlr_models._pool import MaxPool2x2

    torch.manual_seed(0)
    net, x = make(), torch.randn(*shape)
    pools = [m for m in net.modules() if isinstance(m, MaxPool2x2)]
    assert pools
    with torch.no_grad():
        ours = net(x)
        for parent in net.modules():
            for name, child in parent.named_children():
                if isinstance(child, MaxPool2x2):
                    setattr(parent, name, torch.nn.MaxPool2d(2))
        torch.testing.assert_close(ours, net(x), rtol=0, atol=0)
