"""Predict time of the reference CNNs with ``MaxPool2x2`` against the same weights with ``nn.MaxPool2d(2)``.

``uncertlr_models.SpeechCNN`` and ``ImageCNN`` pool with ``MaxPool2x2``, which takes the same maxima as
``nn.MaxPool2d(2)`` but, without autograd, as two pairwise ``torch.maximum`` passes (PyTorch's CPU
``max_pool2d`` on ``[N, C, H, W]`` was as costly as the convolutions around it). Training is unchanged
(autograd on: ``nn.MaxPool2d`` itself). For each network, in one process and interleaved blocks: the
deterministic forward pass (eval, no grad) and ``bayesian(net).predict(x, num_samples=S)``, each with both
pools; the outputs are checked equal bit for bit before timing. Ratio = ``MaxPool2x2`` time / ``nn.MaxPool2d``
time (< 1: faster).

Usage::

    python benchmarks/predict_pool.py --cpu-time     # one thread, CPU clock
    python benchmarks/predict_pool.py --quick        # smoke run
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
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=8, help="posterior samples of bnn.predict")
    args = p.parse_args(argv)
    clock = setup_clock(args)
    blocks, steps = (3, 2) if args.quick else (7, 3)
    rows = []
    for name, (make, x) in cases(args.quick).items():
        torch.manual_seed(0)
        net = make().eval()
        ref = _with_nn_pool(net).eval()
        bnn, bnn_ref = bayesian(net, num_data=1000), bayesian(ref, num_data=1000)
        bnn_ref.load_state_dict(bnn.state_dict())
        xs = x[: max(1, len(x) // 4)]  # BNN predictions: S x N inputs
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

        t = interleaved_medians(
            {"fwd": fwd(net), "fwd_ref": fwd(ref), "bnn": pred(bnn), "bnn_ref": pred(bnn_ref)},
            blocks=blocks,
            steps=steps,
            warmup=2,
            clock=clock,
        )
        for what, ours, base, count in (
            ("forward (eval)", "fwd", "fwd_ref", len(x)),
            (f"bnn.predict (S={args.samples})", "bnn", "bnn_ref", len(xs)),
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
        "predict time, MaxPool2x2 vs nn.MaxPool2d(2) (same weights, same outputs)",
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
    write_results("predict_pool", rows, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
