"""Host overhead of a training step: tiny networks, where the step is all Python and dispatch, on the CPU.

On a GPU the steps of `benchmarks/gpu.py` were bound by the host (an H200's ResNet-18 step spent
7–8 ms in kernels and 11–13 ms launching them; BENCHMARKS.md, "On a GPU"), so what a BNN, a
modulator or a per-parameter rule costs there is mostly their host work: the operators they
dispatch and the Python around them. This script measures that host work where it is cheap to
measure, on the CPU, with networks shaped like the GPU benchmark's (the same parameter tensors:
62 for the ResNet-18) but so small that their arithmetic is negligible. One process, interleaved
blocks, ratios against the deterministic step (and an A/A row for the noise floor):

  deterministic, deterministic A/A, bnn, bnn + G1, bnn + P2, bnn + P2 record=False (as gpu.py)
  bnn, tie_weights=True   the BNN calling functional_call with its alias search (before 2026-12-04)

The per-parameter rule runs the code an accelerator runs (``accelerator_paths``): its segment sums as one
multi-tensor norm and its factors computed on the device, not the CPU's host path (2026-12-05), which a GPU
never takes.

Usage:
    python benchmarks/host_overhead.py --cpu-time
    python benchmarks/host_overhead.py --quick
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks._common import (  # noqa: E402
    base_parser,
    interleaved_blocks,
    print_table,
    setup_clock,
    write_results,
)
from benchmarks.gpu import ratio_rows, step_fns  # noqa: E402
from uncertlr import priors  # noqa: E402
from uncertlr.torch import _fused, bayesian  # noqa: E402
from uncertlr_models import ResNet18, TransformerClassifier  # noqa: E402


def tiny_networks() -> dict[str, tuple[Callable[[], nn.Module], torch.Tensor, torch.Tensor]]:
    """name -> (factory, x, y): the GPU benchmark's layouts at a size where only the host work counts."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (2,), generator=g)
    return {
        "mlp (4 tensors)": (
            lambda: nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 10)),
            torch.randn(2, 8, generator=g),
            y,
        ),
        "resnet18 (62 tensors)": (lambda: ResNet18(10, width=4), torch.randn(2, 3, 8, 8, generator=g), y),
        "transformer (30 tensors)": (
            lambda: TransformerClassifier(100, 10, d_model=16, heads=2, layers=2, max_len=8),
            torch.randint(0, 100, (2, 8), generator=g),
            y,
        ),
    }


def tied_step(make: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """The plain BNN step with ``functional_call(..., tie_weights=True)``, the call before 2026-12-04."""
    torch.manual_seed(0)
    bnn = bayesian(make(), num_data=50_000, prior=priors.Normal(1.0), init_scale=1e-3)
    bnn._call = types.MethodType(  # type: ignore[method-assign]
        lambda self, w, xb: self.adapter.call(self.net, w, xb, tie_weights=True), bnn
    )
    opt = torch.optim.Adam(bnn.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        bnn.elbo(x, y).loss.backward()
        opt.step()

    return step


@contextlib.contextmanager
def accelerator_paths() -> Iterator[None]:
    """The fused per-parameter rules take, on the CPU, the paths they take on a GPU."""
    with (
        mock.patch.object(_fused, "MULTI_TENSOR_DEVICES", _fused.MULTI_TENSOR_DEVICES | {"cpu"}),
        mock.patch.object(_fused.FusedRule, "_factors_on_host", lambda *args: None),
        mock.patch.object(_fused.FusedRule, "_native_kernels", lambda *args: None),
    ):
        yield


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0], timing=True)
    args = p.parse_args(argv)
    clock = setup_clock(args)
    blocks, steps = (3, 5) if args.quick else (9, 30)
    cpu = torch.device("cpu")
    rows: list[dict] = []
    for name, (make, x, y) in tiny_networks().items():
        fns, notes = step_fns(make, x, y, cpu, False)
        fns["bnn, tie_weights=True"] = tied_step(make, x, y)
        with accelerator_paths():
            blocks_s = interleaved_blocks(fns, blocks=blocks, steps=steps, warmup=5, clock=clock)
        rows += ratio_rows(name, blocks_s, notes)
    for r in rows:
        r["us"] = 1e3 * r.pop("ms")
    print_table(
        f"host work of one training step on tiny networks ({blocks} interleaved blocks x {steps} steps)",
        rows,
        [
            ("network", "network", "s"),
            ("method", "method", "s"),
            ("us", "µs/step", ",.0f"),
            ("ratio", "ratio", ".2f"),
            ("ratio_min", "min", ".2f"),
            ("ratio_max", "max", ".2f"),
        ],
    )
    write_results("host_overhead_quick" if args.quick else "host_overhead", rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
