"""Would the local reparameterisation trick make the mean-field MLP step cheaper? (issue 17, a probe)

The eager BNN step on the 784-400-400-10 MLP costs 2.3-2.6x a deterministic Adam step, mostly
passes over the ``P`` weights (one normal draw per weight, the sample, the KL, Adam over twice the
parameters). The local reparameterisation trick (Kingma et al., 2015) draws the pre-activations
instead of the weights: ``h ~ N(x mu, x^2 sigma^2)`` per example, which removes the ``P``-sized
draw but adds a second matmul (``x^2 @ sigma^2``) forward and backward. This probe times three
hand-written steps in one process (no uncertlr code, so the comparison is of the estimators, not
of the library): a deterministic MLP, the weight-sampling mean-field step, and the same posterior
with the local trick; Adam and the analytic KL in both Bayesian steps.

Usage::

    python benchmarks/local_reparam.py --cpu-time
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks._common import base_parser, interleaved_medians, print_table, setup_clock, write_results  # noqa: E402

SIZES = (784, 400, 400, 10)
BATCH = 128


def _layers() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    w = [(torch.randn(o, i) * 0.05).requires_grad_() for i, o in zip(SIZES[:-1], SIZES[1:])]
    b = [torch.zeros(o, requires_grad=True) for o in SIZES[1:]]
    return w, b


def _kl(loc: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """KL(N(loc, exp(log_scale)^2) || N(0, 1)), summed."""
    s2 = torch.exp(2 * log_scale)
    return (0.5 * (s2 + loc * loc) - log_scale - 0.5).sum()


def steps(num_data: int = 60_000) -> dict[str, object]:
    """The three step functions, each on its own parameters and Adam."""
    x, y = torch.randn(BATCH, SIZES[0]), torch.randint(0, SIZES[-1], (BATCH,))
    w, b = _layers()
    det_opt = torch.optim.Adam([*w, *b], 1e-3)
    loc, bloc = _layers()
    rho = [torch.full_like(t, -7.0).requires_grad_() for t in loc]
    brho = [torch.full_like(t, -7.0).requires_grad_() for t in bloc]
    bnn_opt = torch.optim.Adam([*loc, *bloc, *rho, *brho], 1e-3)

    def det() -> None:
        h = x
        for i, (wi, bi) in enumerate(zip(w, b)):
            h = F.linear(h, wi, bi)
            h = torch.relu(h) if i < len(w) - 1 else h
        det_opt.zero_grad()
        F.cross_entropy(h, y).backward()
        det_opt.step()

    def bnn(local: bool) -> None:
        h, kl = x, torch.zeros(())
        for i, (m, r, bm, br) in enumerate(zip(loc, rho, bloc, brho)):
            if local:  # pre-activations ~ N(x mu + b, x^2 sigma^2 + sigma_b^2), one draw per example
                mu = F.linear(h, m, bm)
                var = F.linear(h * h, torch.exp(2 * r), torch.exp(2 * br))
                h = mu + var.sqrt() * torch.randn_like(mu)
            else:  # one weight draw for the batch
                wi = m + torch.exp(r) * torch.randn_like(m)
                h = F.linear(h, wi, bm + torch.exp(br) * torch.randn_like(bm))
            kl = kl + _kl(m, r) + _kl(bm, br)
            h = torch.relu(h) if i < len(loc) - 1 else h
        bnn_opt.zero_grad()
        (F.cross_entropy(h, y) + kl / num_data).backward()
        bnn_opt.step()

    return {
        "deterministic": det,
        "mean-field (weight draw)": lambda: bnn(False),
        "local reparameterisation": lambda: bnn(True),
    }


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0], timing=True)
    args = p.parse_args(argv)
    clock = setup_clock(args)
    torch.manual_seed(0)
    fns = steps()
    blocks, n = (3, 10) if args.quick else (7, 40)
    reps = [
        interleaved_medians(fns, blocks=blocks, steps=n, clock=clock) for _ in range(1 if args.quick else 3)
    ]
    rows = []
    for name in fns:
        ratios = [r[name] / r["deterministic"] for r in reps]
        rows.append(
            {
                "step": name,
                "ms_per_step": 1000 * sorted(r[name] for r in reps)[len(reps) // 2],
                "ratio": sorted(ratios)[len(ratios) // 2],
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
            }
        )
    print_table(
        "784-400-400-10 MLP, batch 128: step time by estimator",
        rows,
        [
            ("step", "step", "s"),
            ("ms_per_step", "ms/step", ".2f"),
            ("ratio", "ratio", ".2f"),
            ("ratio_min", "min", ".2f"),
            ("ratio_max", "max", ".2f"),
        ],
    )
    write_results("local_reparam", rows, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
