"""Predict and training time of the reference CNNs with ``MaxPool2x2`` against the same weights with ``nn.MaxPool2d(2)``.

``uncertlr_models.SpeechCNN`` and ``ImageCNN`` pool with ``MaxPool2x2``, which takes the same maxima and
gradients as ``nn.MaxPool2d(2)``: without autograd as two pairwise ``torch.maximum`` passes, with autograd on a
CPU in channels-last order with ATen's own backward (PyTorch's CPU ``max_pool2d`` on a contiguous
``[N, C, H, W]`` tensor was as costly as the convolutions around it). For each network, in one process and
interleaved blocks: the deterministic forward pass (eval, no grad), ``bayesian(net).predict(x, num_samples=S)``,
a deterministic training step (cross-entropy, forward and backward) and a BNN training step (``bnn.loss``,
one particle, forward and backward), each with both pools; outputs and gradients are checked equal bit for bit
before timing. Ratio = ``MaxPool2x2`` time / ``nn.MaxPool2d`` time (< 1: faster).

Usage::

    python benchmarks/maxpool.py --cpu-time     # one thread, CPU clock
    python benchmarks/maxpool.py --quick        # smoke run
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks._common import base_parser, interleaved_medians, print_table, setup_clock, write_results  # noqa: E402
from uncertlr.torch import bayesian  # noqa: E402
from uncertlr_models import ImageCNN, SpeechCNN  # noqa: E402
from uncertlr_models._pool import MaxPool2x2  # noqa: E402


def _with_nn_pool(net: nn.Module) -> nn.Module:
    """The same network (shared weights) with every ``MaxPool2x2`` replaced by ``nn.MaxPool2d(2)``."""
    import copy

    other = copy.deepcopy(net)
    for parent in other.modules():
        for name, child in parent.named_children():
            if isinstance(child, MaxPool2x2):
                setattr(parent, name, nn.MaxPool2d(2))
    return other


def cases(quick: bool) -> dict[str, tuple[Callable[[], nn.Module], torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    n = 32 if quick else 256
    return {
        "SpeechCNN (40 mels x 64 frames)": (lambda: SpeechCNN(40, 10), torch.randn(n, 40, 64, generator=g)),
        "ImageCNN (28x28)": (lambda: ImageCNN(1, 10), torch.randn(n, 1, 28, 28, generator=g)),
    }


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0], timing=True)
    p.add_argument("--samples", type=int, default=8, help="posterior samples of bnn.predict")
    p.add_argument("--batch", type=int, default=64, help="batch size of the training steps")
    args = p.parse_args(argv)
    clock = setup_clock(args)
    blocks, steps = (3, 2) if args.quick else (7, 3)
    rows = []
    for name, (make, x) in cases(args.quick).items():
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(3)
        net = make().eval()
        ref = _with_nn_pool(net).eval()
        bnn, bnn_ref = bayesian(net, num_data=1000), bayesian(ref, num_data=1000)
        bnn_ref.load_state_dict(bnn.state_dict())
        xs = x[: max(1, len(x) // 4)]  # BNN predictions: S x N inputs
        xt, yt = x[: args.batch], torch.randint(0, 10, (min(args.batch, len(x)),), generator=g)
        with torch.no_grad():
            if not torch.equal(net(x), ref(x)):
                raise AssertionError(f"{name}: MaxPool2x2 and nn.MaxPool2d outputs differ")
            torch.manual_seed(1)
            a = bnn.predict(xs, num_samples=args.samples)
            torch.manual_seed(1)
            if not torch.equal(a, bnn_ref.predict(xs, num_samples=args.samples)):
                raise AssertionError(f"{name}: the BNNs' predictions differ")

        def fwd(m: nn.Module) -> Callable[[], object]:
            def f() -> object:
                with torch.no_grad():
                    return m(x)

            return f

        def pred(b) -> Callable[[], object]:  # type: ignore[no-untyped-def]
            return lambda: b.predict(xs, num_samples=args.samples)

        def train_step(m: nn.Module) -> Callable[[], object]:
            def f() -> object:
                m.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(m(xt), yt)
                loss.backward()
                return loss

            return f

        def bnn_step(b) -> Callable[[], object]:  # type: ignore[no-untyped-def]
            def f() -> object:
                b.zero_grad(set_to_none=True)
                loss = b.loss(xt, yt)
                loss.backward()
                return loss

            return f

        net.train(), ref.train()
        for make_step, what, left, right in (
            (train_step, "training step", net, ref),
            (bnn_step, "BNN training step", bnn, bnn_ref),
        ):
            torch.manual_seed(2)
            make_step(left)()
            torch.manual_seed(2)
            make_step(right)()
            for p_ours, p_ref in zip(left.parameters(), right.parameters(), strict=True):
                if not torch.equal(p_ours.grad, p_ref.grad):
                    raise AssertionError(f"{name}: {what} gradients differ")

        t = interleaved_medians(
            {
                "fwd": fwd(net),
                "fwd_ref": fwd(ref),
                "bnn": pred(bnn),
                "bnn_ref": pred(bnn_ref),
                "train": train_step(net),
                "train_ref": train_step(ref),
                "bnn_train": bnn_step(bnn),
                "bnn_train_ref": bnn_step(bnn_ref),
            },
            blocks=blocks,
            steps=steps,
            warmup=2,
            clock=clock,
        )
        for what, ours, base, count in (
            ("forward (eval)", "fwd", "fwd_ref", len(x)),
            (f"bnn.predict (S={args.samples})", "bnn", "bnn_ref", len(xs)),
            ("training step (fwd + bwd)", "train", "train_ref", len(xt)),
            ("BNN training step (bnn.loss, fwd + bwd)", "bnn_train", "bnn_train_ref", len(xt)),
        ):
            rows.append(
                {
                    "network": name,
                    "what": what,
                    "inputs": count,
                    "nn_maxpool2d_ms": 1000 * t[base],
                    "maxpool2x2_ms": 1000 * t[ours],
                    "ratio": t[ours] / t[base],
                }
            )
    print_table(
        "MaxPool2x2 vs nn.MaxPool2d(2): predict and training time (same weights, outputs and gradients)",
        rows,
        [
            ("network", "network", "s"),
            ("what", "what", "s"),
            ("inputs", "inputs", "d"),
            ("nn_maxpool2d_ms", "nn.MaxPool2d ms", ".1f"),
            ("maxpool2x2_ms", "MaxPool2x2 ms", ".1f"),
            ("ratio", "ratio", ".3f"),
        ],
    )
    write_results("maxpool", rows, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
