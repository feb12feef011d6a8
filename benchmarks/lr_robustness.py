"""How wide a range of base learning rates trains well, with and without the LR modulator.

Grid: base LR × method × seed on a task (sklearn digits, or FSDD log-mel features with
``--task fsdd``, official split, flattened). Every run trains the same MLP
(hidden 128-128) for the same number of epochs with minibatch 64 and reports the final
test accuracy, NLL, ECE and the number of steps until the test accuracy (evaluated at the
end of every epoch) first reaches 95% of the best final accuracy of the whole grid.

Methods:
  adam-constant    deterministic MLP, Adam, constant LR
  adam-cosine      deterministic MLP, Adam, cosine decay to 0 over the run
  adam-plateau     deterministic MLP, Adam, ReduceLROnPlateau on the epoch's mean training loss
  bnn              uncertlr BNN (N(0, 1) prior, kl_weight 0.1 as in the demo), Adam, constant LR
  bnn+g1(k=-0.5)   bnn + Modulator(Ratio(kappa=-0.5)) on the batch's predictive entropy
  bnn+g1(k=+0.5)   bnn + Modulator(Ratio(kappa=+0.5))
  bnn+p2           bnn + Modulator(GradSigmaRatio()) with σ = the posterior std
  ivon             ivon-opt's IVON (ess = N, 1 MC sample), constant LR (skipped if not installed)

The BNN variants use a constant base LR so that the modulator is the only thing adapting
the step. The *working LR range* of a method is the ratio max/min of the contiguous block
of grid LRs, around its best LR, whose seed-mean accuracy is at least ``target`` (default:
95% of the best seed-mean accuracy of any method at any LR); 1.0 means one grid point, 0
means none.

Usage:
    python benchmarks/lr_robustness.py                # full grid (7 LRs × 8 methods × 3 seeds)
    python benchmarks/lr_robustness.py --quick        # smoke run (2 LRs, 1 seed, 3 epochs)
    python benchmarks/lr_robustness.py --lrs 1e-3 1e-2 --seeds 0 --methods adam-constant bnn+g1(k=-0.5)
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks._common import RESULTS_DIR, base_parser, print_table, write_results  # noqa: E402
from uncertlr import metrics, priors  # noqa: E402
from uncertlr.modulation import GradSigmaRatio, Ratio  # noqa: E402
from uncertlr.torch import Modulator, batch_entropy, bayesian  # noqa: E402

LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
METHODS = (
    "adam-constant",
    "adam-cosine",
    "adam-plateau",
    "bnn",
    "bnn+g1(k=-0.5)",
    "bnn+g1(k=+0.5)",
    "bnn+p2",
    "ivon",
)
HIDDEN = (128, 128)
BATCH = 64


def load_task(name: str, data_dir: Path | None) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)`` as float32 / int64 tensors."""
    if name == "digits":
        from uncertlr.data import load_digits

        s = load_digits(seed=0)
        return tuple(torch.from_numpy(a) for a in (s.x_train, s.y_train, s.x_test, s.y_test))
    if name == "fsdd":
        # FSDD official split, 40-band log-mel x 64 frames (floored 40 dB below each peak, as in
        # examples/speech_digits.py), standardised per band on the training set, then flattened.
        from uncertlr.data import LogMel, load_fsdd

        s = load_fsdd(data_dir, features=LogMel(n_mels=40, num_frames=64, top_db=40.0))
        mu = s.x_train.mean(axis=(0, 2), keepdims=True)
        sd = s.x_train.std(axis=(0, 2), keepdims=True) + 1e-6

        def flat(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(((a - mu) / sd).reshape(len(a), -1).astype(np.float32))

        return flat(s.x_train), torch.from_numpy(s.y_train), flat(s.x_test), torch.from_numpy(s.y_test)
    raise SystemExit(f"unknown task {name!r}; use digits or fsdd")


class Run:
    """One training run: ``step(xb, yb)`` trains one minibatch, ``probs(x)`` gives ``[S, N, C]``."""

    def __init__(self, method: str, lr: float, n_in: int, n_out: int, num_data: int, total_steps: int):
        from uncertlr_models import MLP

        self.method, self.sched, self.plateau, self.mod, self.bnn = method, None, None, None, None
        net = MLP(n_in, HIDDEN, n_out)
        if method.startswith("adam"):
            self.net = net
            self.opt = torch.optim.Adam(net.parameters(), lr=lr)
            if method == "adam-cosine":
                self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, total_steps)
            elif method == "adam-plateau":
                self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt, factor=0.5, patience=2)
        elif method.startswith("bnn"):
            self.bnn = bayesian(
                net, num_data=num_data, prior=priors.Normal(1.0), kl_weight=0.1, init_scale=1e-3
            )
            self.opt = torch.optim.Adam(self.bnn.parameters(), lr=lr)
            if method.startswith("bnn+g1"):
                kappa = -0.5 if "k=-" in method else 0.5
                self.mod = Modulator(Ratio(kappa=kappa), record=False).attach(self.opt)
            elif method == "bnn+p2":
                self.mod = Modulator(GradSigmaRatio(), sigma=self.bnn, record=False).attach(self.opt)
        elif method == "ivon":
            import ivon

            self.net = net
            self.opt = ivon.IVON(net.parameters(), lr=lr, ess=num_data)
        else:
            raise ValueError(f"unknown method {method!r}")

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> float:
        self.opt.zero_grad()
        if self.method == "ivon":
            with self.opt.sampled_params(train=True):
                loss = F.cross_entropy(self.net(xb), yb)
                loss.backward()
        elif self.bnn is not None:
            terms = self.bnn.elbo(xb, yb)
            loss = terms.loss
            loss.backward()
            if self.mod is not None and not self.mod.per_parameter:
                self.mod.observe(batch_entropy(terms.outputs))
        else:
            loss = F.cross_entropy(self.net(xb), yb)
            loss.backward()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss {value}")
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        return value

    def end_epoch(self, mean_loss: float) -> None:
        if self.plateau is not None:
            self.plateau.step(mean_loss)

    @torch.no_grad()
    def probs(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        if self.bnn is not None:
            return self.bnn.predict(x, num_samples=num_samples)
        if self.method == "ivon":
            outs = []
            for _ in range(num_samples):
                with self.opt.sampled_params():
                    outs.append(torch.softmax(self.net(x), -1))
            return torch.stack(outs)
        return torch.softmax(self.net(x), -1)[None]


def train_one(method, lr, seed, data, *, epochs, num_samples, eval_samples) -> dict[str, Any]:
    x, y, xt, yt = data
    torch.manual_seed(seed)
    steps_per_epoch = math.ceil(len(x) / BATCH)
    run = Run(method, lr, x.shape[1], int(y.max()) + 1, len(x), epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    curve: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    diverged = False
    try:
        for epoch in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            losses = [run.step(x[idx], y[idx]) for idx in order.split(BATCH)]
            run.end_epoch(statistics.fmean(losses))
            acc = float((run.probs(xt, eval_samples).mean(0).argmax(-1) == yt).float().mean())
            curve.append(((epoch + 1) * steps_per_epoch, acc))
    except FloatingPointError:
        diverged = True
    row: dict[str, Any] = {"method": method, "lr": lr, "seed": seed, "diverged": diverged, "curve": curve}
    if diverged:
        row.update(accuracy=float("nan"), nll=float("nan"), ece=float("nan"))
    else:
        p = run.probs(xt, num_samples).numpy()
        labels = yt.numpy()
        row.update(
            accuracy=float(metrics.accuracy(p, labels)),
            nll=float(metrics.nll(p, labels)),
            ece=float(metrics.ece(p, labels)),
        )
    row["seconds"] = time.perf_counter() - t0
    return row


def lr_ranges(rows: list[dict[str, Any]], lrs: list[float], target: float) -> dict[str, dict[str, Any]]:
    """Per method: seed-mean accuracy per LR, best LR, and the working-range width around it."""
    out = {}
    for m in dict.fromkeys(r["method"] for r in rows):
        means = []
        for lr in lrs:
            accs = [r["accuracy"] for r in rows if r["method"] == m and r["lr"] == lr]
            accs = [a if math.isfinite(a) else 0.0 for a in accs]
            means.append(statistics.fmean(accs) if accs else float("nan"))
        finite = [a if math.isfinite(a) else -1.0 for a in means]
        best = int(np.argmax(finite))
        lo = hi = best
        if finite[best] >= target:
            while lo > 0 and finite[lo - 1] >= target:
                lo -= 1
            while hi < len(lrs) - 1 and finite[hi + 1] >= target:
                hi += 1
            width = lrs[hi] / lrs[lo]
        else:
            width = 0.0
        out[m] = {"mean_accuracy": means, "best_lr": lrs[best], "best_accuracy": means[best], "range": width}
    return out


def plot(rows, lrs, ranges, target, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from uncertlr.diagnostics.plots import save_figure

    fig, ax = plt.subplots(figsize=(10.5, 5), layout="constrained")
    for m, info in ranges.items():
        sd = []
        for lr in lrs:
            accs = [
                r["accuracy"] if math.isfinite(r["accuracy"]) else 0.0
                for r in rows
                if r["method"] == m and r["lr"] == lr
            ]
            sd.append(statistics.pstdev(accs) if len(accs) > 1 else 0.0)
        mean = np.asarray(info["mean_accuracy"])
        style = "-" if m.startswith("bnn+") else "--"
        ax.errorbar(
            lrs, mean, yerr=sd, marker="o", ls=style, capsize=2, label=f"{m} (range {info['range']:.0f}×)"
        )
    ax.axhline(target, color="grey", lw=0.8, ls=":", label=f"target {target:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("base learning rate")
    ax.set_ylabel("final test accuracy (mean ± sd over seeds)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_ylim(0, 1.02)
    save_figure(fig, path)


def main(argv=None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--task", default="digits", choices=("digits", "fsdd"))
    p.add_argument("--lrs", type=float, nargs="+", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=None, choices=METHODS)
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 30, quick 3)")
    p.add_argument("--num-samples", type=int, default=16, help="posterior samples for the final metrics")
    p.add_argument("--target", type=float, default=None, help="accuracy target (default 0.95 × best mean)")
    p.add_argument(
        "--png", type=Path, default=None, help="plot path (default benchmarks/results/lr_robustness_TASK.png)"
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lrs = sorted(args.lrs or ((1e-3, 1e-2) if args.quick else LRS))
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    epochs = args.epochs or (3 if args.quick else 30)
    methods = list(args.methods or METHODS)
    if "ivon" in methods:
        try:
            import ivon  # noqa: F401
        except ImportError:
            print("ivon-opt is not installed (make bench-deps): skipping the ivon baseline")
            methods.remove("ivon")
    data = load_task(args.task, args.data_dir)
    grid = [(m, lr, s) for s in seeds for m in methods for lr in lrs]

    from uncertlr._progress import progress_bar

    rows = []
    with progress_bar() as bar:
        task = bar.add_task(f"lr robustness ({args.task})", total=len(grid), info="")
        for m, lr, s in grid:
            rows.append(
                train_one(m, lr, s, data, epochs=epochs, num_samples=args.num_samples, eval_samples=4)
            )
            bar.update(task, advance=1, info=f"{m} lr={lr:g} seed={s}: acc {rows[-1]['accuracy']:.3f}")

    means = [
        statistics.fmean(
            [
                r["accuracy"] if math.isfinite(r["accuracy"]) else 0.0
                for r in rows
                if r["method"] == m and r["lr"] == lr
            ]
        )
        for m in methods
        for lr in lrs
    ]
    best_acc = max(means)
    target = args.target if args.target is not None else 0.95 * best_acc
    for r in rows:
        hit = [step for step, acc in r["curve"] if acc >= 0.95 * best_acc]
        r["steps_to_95pct_best"] = hit[0] if hit else None
    ranges = lr_ranges(rows, lrs, target)
    strict = lr_ranges(rows, lrs, 0.99 * best_acc)  # a second, stricter reading of the same runs
    summary = [
        {
            "method": m,
            "best_lr": info["best_lr"],
            "best_accuracy": info["best_accuracy"],
            "range": info["range"],
            "range_99pct": strict[m]["range"],
            "range_vs_adam_constant": (info["range"] / ranges["adam-constant"]["range"])
            if ranges.get("adam-constant", {}).get("range")
            else None,
        }
        for m, info in ranges.items()
    ]
    print_table(
        f"LR robustness on {args.task}: {len(lrs)} LRs × {len(seeds)} seeds × {epochs} epochs, target accuracy {target:.3f}",
        summary,
        [
            ("method", "method", "s"),
            ("best_lr", "best LR", "g"),
            ("best_accuracy", "acc at best LR", ".3f"),
            ("range", "working LR range (×)", ".1f"),
            ("range_vs_adam_constant", "vs adam-constant", ".2f"),
            ("range_99pct", "range at 99% of best (×)", ".1f"),
        ],
    )
    per_lr = [
        {
            "method": m,
            "lr": lr,
            **{
                k: statistics.fmean([r[k] for r in rows if r["method"] == m and r["lr"] == lr])
                for k in ("accuracy", "nll", "ece")
            },
        }
        for m in methods
        for lr in lrs
    ]
    print_table(
        "seed-mean final test metrics",
        per_lr,
        [
            ("method", "method", "s"),
            ("lr", "lr", "g"),
            ("accuracy", "accuracy", ".3f"),
            ("nll", "NLL", ".3f"),
            ("ece", "ECE", ".3f"),
        ],
    )
    png = args.png or RESULTS_DIR / f"lr_robustness_{args.task}.png"
    plot(
        rows,
        lrs,
        ranges,
        target,
        png,
        f"{args.task}: final accuracy vs base LR ({len(seeds)} seeds, {epochs} epochs)",
    )
    print(f"wrote {png}")
    write_results(
        f"lr_robustness_{args.task}",
        rows,
        args.json,
        config={
            "task": args.task,
            "lrs": lrs,
            "seeds": seeds,
            "epochs": epochs,
            "methods": methods,
            "batch": BATCH,
            "hidden": list(HIDDEN),
            "target": target,
            "best_mean_accuracy": best_acc,
        },
        summary=summary,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
