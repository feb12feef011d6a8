"""Reference architectures: shapes, input checks, and that each one wraps with uncertlr.torch.bayesian."""

from __future__ import annotations

import pytest
import torch

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
