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


def _graph(t: torch.Tensor) -> set[str]:
    """The names of the autograd nodes behind ``t``."""
    seen, todo = set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and type(node).__name__ not in seen:
            seen.add(type(node).__name__)
            todo += [n for n, _ in node.next_functions]
    return seen


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 4),
    h=st.integers(2, 9),
    w=st.integers(2, 9),
    lead=st.booleans(),
    nan=st.booleans(),
    ties=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_maxpool2x2_takes_the_same_maxima_as_nn_maxpool2d(n, c, h, w, lead, nan, ties, dtype, seed):
    """Without autograd (the pairwise-maximum path) and with it (the channels-last path for [N, C, H, W] on a
    CPU) the output and the gradient equal nn.MaxPool2d(2)'s bit for bit: odd sizes floored, NaN propagated,
    ties (a ReLU's zeros) sent to the same input of the window, batched or not."""
    from uncertlr_models._pool import MaxPool2x2

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*((n,) if lead else ()), c, h, w, generator=g, dtype=dtype)
    if ties:
        x = x.relu().round()
    if nan:
        x.view(-1)[int(torch.randint(0, x.numel(), (1,), generator=g))] = float("nan")
    ours, ref = MaxPool2x2(), torch.nn.MaxPool2d(2)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0, equal_nan=True)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = ours(a), ref(b)
    assert "_ChannelsLastMaxPoolBackward" in _graph(out)  # the channels-last path, batched or not
    torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)
    weights = torch.randn(expected.shape, generator=g, dtype=dtype)
    (out.nan_to_num() * weights).sum().backward()
    (expected.nan_to_num() * weights).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


def test_maxpool2x2_keeps_a_channels_last_input_channels_last():
    """A channels-last network stays channels-last through the pool (as with nn.MaxPool2d), values and
    gradients unchanged."""
    from uncertlr_models._pool import MaxPool2x2

    x = torch.randn(3, 5, 8, 6).relu().round().contiguous(memory_format=torch.channels_last)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = MaxPool2x2()(a), torch.nn.MaxPool2d(2)(b)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    weights = torch.randn(expected.shape).contiguous(memory_format=torch.channels_last)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    assert a.grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


@pytest.mark.parametrize("lead", [(2, 3), (3,)], ids=["batched", "unbatched"])
def test_maxpool2x2_under_vmap_with_autograd_equals_a_loop(lead):
    """A BNN's particles vmap the network with autograd on: the pool's vmap rule folds the vmapped dimension
    into the batch, and values and gradients equal nn.MaxPool2d(2) applied slice by slice."""
    from torch.func import vmap

    from uncertlr_models._pool import MaxPool2x2

    g = torch.Generator().manual_seed(0)
    x = torch.randn(*lead, 4, 7, 6, generator=g).relu().round()
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = vmap(MaxPool2x2(), randomness="different")(a)
    assert "_ChannelsLastMaxPoolBackward" in _graph(out)
    expected = torch.stack([torch.nn.MaxPool2d(2)(t) for t in b])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    weights = torch.randn(expected.shape, generator=g)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("make", "shape"),
    [(lambda: SpeechCNN(16, 10, channels=(4, 8)), (5, 16, 21)), (lambda: ImageCNN(1, 10), (5, 1, 9, 9))],
)
def test_reference_cnns_predict_and_train_exactly_as_with_nn_maxpool2d(make, shape):
    """SpeechCNN and ImageCNN pool with MaxPool2x2: their no-grad outputs, and a BNN's two-particle (vmapped)
    ELBO gradients, equal those of the same weights with nn.MaxPool2d."""
    from uncertlr_models._pool import MaxPool2x2

    torch.manual_seed(0)
    net, x = make(), torch.randn(*shape)
    y = torch.randint(0, 10, (shape[0],))
    pools = [m for m in net.modules() if isinstance(m, MaxPool2x2)]
    assert pools

    def outputs_and_gradients(net):
        bnn = bayesian(net, num_data=100, init_scale=0.1)
        torch.manual_seed(1)
        bnn.loss(x, y, num_particles=2).backward()
        with torch.no_grad():
            return net(x), [p.grad for p in bnn.parameters()]

    ours, ours_grads = outputs_and_gradients(net)
    for parent in net.modules():
        for name, child in parent.named_children():
            if isinstance(child, MaxPool2x2):
                setattr(parent, name, torch.nn.MaxPool2d(2))
    ref, ref_grads = outputs_and_gradients(net)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    for a, b in zip(ours_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
