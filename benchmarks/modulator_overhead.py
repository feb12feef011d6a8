"""Step time with the LR modulator relative to the same step without it, in one process.

Network: 784-400-400-10 ReLU MLP, batch 128, synthetic data, Adam. Every modulated step
includes computing its signal (batch predictive entropy from the logits the training pass
already produced) and the modulator's bookkeeping (``record=True``, the default, which
reads the factor back for ``history``). Each repeat times many short interleaved blocks (each
function in every position of the order equally often); a row's ratio in one repeat is the median
over blocks of its block time / the matching unmodulated baseline's time in the same block (paired:
a shared machine's slow spells, seconds long, fall on both); the table shows the median over
repeats, and the smallest and largest.

Rows:
  deterministic                 plain MLP + Adam (baseline for the next four)
  deterministic (A/A)           a second copy of the baseline: its ratio is the noise floor
  deterministic + G1            global Ratio rule, softmax-entropy signal
  deterministic + P2 (noise σ)  per-parameter GradSigmaRatio, σ from the gradient-noise estimate
  deterministic + P1 (noise σ)  per-parameter SigmaRatio, σ from the gradient-noise estimate
  bnn                           uncertlr.torch.bayesian(...) + Adam (baseline for the next three)
  bnn (A/A)                     a second copy of the BNN baseline (noise floor)
  bnn + G1                      global Ratio rule, predictive entropy of the ELBO's own outputs
  bnn + P2                      per-parameter GradSigmaRatio with σ = the posterior std
  bnn + P2 (σ recomputed)       the same without the posterior's cached σ (an exp per weight per step,
                                as before the third session): what the cache saves
  bnn, fused Adam (+ G1, + P2)  the BNN rows with Adam(fused=True), as the app pipeline trains (--fused)

Targets: <= 1.05 for global rules, <= 1.15 for per-parameter rules.

Usage:
    python benchmarks/modulator_overhead.py            # full run
    python benchmarks/modulator_overhead.py --quick    # smoke run
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks._common import base_parser, interleaved_blocks, print_table, setup_clock, write_results  # noqa: E402
from benchmarks.step_time import BATCH, NUM_DATA, mlp  # noqa: E402
from uncertlr import priors  # noqa: E402
from uncertlr.modulation import GradSigmaRatio, Ratio, SigmaRatio  # noqa: E402
from uncertlr.torch import Modulator, batch_entropy, bayesian  # noqa: E402

TARGETS = {"global": 1.05, "per-parameter": 1.15}


def det_step(x, y, rule=None):
    torch.manual_seed(0)
    net = mlp()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    mod = Modulator(rule).attach(opt) if rule is not None else None
    needs_signal = mod is not None and not mod.per_parameter

    def step():
        opt.zero_grad()
        logits = net(x)
        F.cross_entropy(logits, y).backward()
        if needs_signal:
            mod.observe(batch_entropy(logits))
        opt.step()

    return step


def bnn_step(x, y, rule=None, cached_scale=True, fused=None):
    torch.manual_seed(0)
    bnn = bayesian(mlp(), num_data=NUM_DATA, prior=priors.Normal(1.0), init_scale=1e-3)
    if not cached_scale:  # σ = exp(log σ) afresh every step instead of the last sample's
        post = bnn.posterior
        post.detached_scale = lambda floor=True: (post.scale.detach(), True)
    opt = torch.optim.Adam(bnn.parameters(), lr=1e-3, fused=fused)
    mod = None
    if rule is not None:
        per_param = bool(getattr(rule, "per_parameter", False))
        mod = Modulator(rule, sigma=bnn if per_param else None).attach(opt)
    needs_signal = mod is not None and not mod.per_parameter

    def step():
        opt.zero_grad()
        terms = bnn.elbo(x, y)
        terms.loss.backward()
        if needs_signal:
            mod.observe(batch_entropy(terms.outputs))
        opt.step()

    return step


def main(argv=None) -> int:
    p = base_parser(__doc__.splitlines()[0], timing=True)
    p.add_argument("--repeats", type=int, default=None, help="independent measurements (default 3, quick 1)")
    p.add_argument(
        "--fused",
        action="store_true",
        help="add the BNN rows with torch's fused Adam kernel (Adam(fused=True), as the app pipeline trains)",
    )
    args = p.parse_args(argv)
    clock = setup_clock(args)
    torch.manual_seed(0)
    x, y = torch.randn(BATCH, 784), torch.randint(0, 10, (BATCH,))
    groups = {
        "deterministic": {
            "deterministic": (lambda: det_step(x, y), None),
            "deterministic (A/A)": (lambda: det_step(x, y), "noise floor"),
            "deterministic + G1": (lambda: det_step(x, y, Ratio()), "global"),
            "deterministic + P2 (noise σ)": (lambda: det_step(x, y, GradSigmaRatio()), "per-parameter"),
            "deterministic + P1 (noise σ)": (lambda: det_step(x, y, SigmaRatio()), "per-parameter"),
        },
        "bnn": {
            "bnn": (lambda: bnn_step(x, y), None),
            "bnn (A/A)": (lambda: bnn_step(x, y), "noise floor"),
            "bnn + G1": (lambda: bnn_step(x, y, Ratio()), "global"),
            "bnn + P2": (lambda: bnn_step(x, y, GradSigmaRatio()), "per-parameter"),
            "bnn + P2 (σ recomputed)": (
                lambda: bnn_step(x, y, GradSigmaRatio(), cached_scale=False),
                "per-parameter",
            ),
        },
    }
    if args.fused:
        groups["bnn, fused Adam"] = {
            "bnn, fused Adam": (lambda: bnn_step(x, y, fused=True), None),
            "bnn, fused Adam (A/A)": (lambda: bnn_step(x, y, fused=True), "noise floor"),
            "bnn, fused Adam + G1": (lambda: bnn_step(x, y, Ratio(), fused=True), "global"),
            "bnn, fused Adam + P2": (lambda: bnn_step(x, y, GradSigmaRatio(), fused=True), "per-parameter"),
        }
    repeats = args.repeats or (1 if args.quick else 3)
    blocks, steps = (5, 10) if args.quick else (42, 10)
    rows = []
    for baseline, members in groups.items():
        fns = {name: build() for name, (build, _) in members.items()}
        runs = [interleaved_blocks(fns, blocks=blocks, steps=steps, clock=clock) for _ in range(repeats)]
        for name, (_, kind) in members.items():
            ratios = [statistics.median(t / b for t, b in zip(r[name], r[baseline])) for r in runs]
            ratio = statistics.median(ratios)
            ms = statistics.median(statistics.median(r[name]) for r in runs) * 1e3
            target = TARGETS.get(kind) if kind else None
            rows.append(
                {
                    "method": name,
                    "baseline": baseline,
                    "kind": kind or "baseline",
                    "ms_per_step": ms,
                    "ratio": ratio,
                    "ratio_min": min(ratios),
                    "ratio_max": max(ratios),
                    "target": target,
                    "met": None if target is None else ratio <= target,
                }
            )
    print_table(
        f"Modulator overhead (batch {BATCH}, {torch.get_num_threads()} threads, "
        f"{'CPU' if args.cpu_time else 'wall'} clock, {repeats} repeats × {blocks} blocks × {steps} steps)",
        rows,
        [
            ("method", "method", "s"),
            ("ms_per_step", "ms/step", ".2f"),
            ("ratio", "ratio", ".3f"),
            ("ratio_min", "min", ".3f"),
            ("ratio_max", "max", ".3f"),
            ("target", "target", ".2f"),
        ],
    )
    write_results(
        "modulator_overhead",
        rows,
        args.json,
        config={
            "blocks": blocks,
            "steps": steps,
            "repeats": repeats,
            "ratio": "median over blocks of the paired block-time ratio; median over repeats",
            "clock": "thread CPU time" if args.cpu_time else "wall",
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
