"""How wide a range of base learning rates trains well: LR modulator variants against schedules and LR-free optimizers.

Grid: base LR {1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1} × method × seed on one task per
invocation (``--task``: digits, fsdd, diabetes, hetero, transformer; see
``benchmarks/_lr_tasks.py``). Methods (``benchmarks/_lr_methods.py``):

  adam-constant, adam-cosine        deterministic net, Adam, constant LR / cosine decay to 0
  adam-plateau(val)                 Adam + ReduceLROnPlateau on a 15% validation split (trains on 85%)
  schedulefree, prodigy, dog, ivon  Schedule-Free AdamW, Prodigy, DoG, IVON (the ``bench`` extra)
  adam+uplateau                     Adam + UncertaintyPlateau on the softmax entropy (or noise variance)
  bnn                               uncertlr BNN, Adam, constant LR
  bnn+g1                            + Modulator(Ratio(κ=-0.5)) on the batch entropy / predictive variance
  bnn+uplateau                      + UncertaintyPlateau (armed; patience = cooldown = the task's epochs)
  bnn+uwarmup+uplateau              + UncertaintyWarmup(start 0.1, release 0.5, 2-epoch horizon) × the plateau
  bnn+scalecap                      + LayerScaleCap(1e-3): per layer, the posterior log-std step
                                    is cut to an RMS of 1e-3 (the posteriors' means keep Adam's step)
  bnn+uplateau+scalecap             both
  bnn+lr-matched                    the BNN at a constant LR = base LR × the mean factor that the
                                    ``--matched`` variant applied in the same (LR, seed) run

Per run: the final test metric (classification: accuracy, NLL, ECE with 15 bins; regression:
NLL per point, RMSE and the coverage error — mean |coverage − nominal| of the central 10…90%
intervals — in the ``ece`` field), the steps until the per-epoch test score first reached 95% of
the task's best, and the mean, min and max of the factor the modulator applied.

Score (higher is better): accuracy; for regression, the NLL improvement over predicting the
training mean and variance (nats per point). ``range_95`` of a method is max/min of the
contiguous block of grid LRs around its best LR whose seed-mean score is at least 95% of the
task's best seed-mean score (1 = one grid point, 0 = none); ``mean over grid`` is the seed-mean
score averaged over all 7 LRs (an area under the score-vs-LR curve).

JSON (``--json PATH``): ``{"summary": [{"task", "method", "modulated", "range_95", "best_lr",
"best_metric"}, ...], "details": [...], "rows": [...], "config": {...}, "machine": {...},
"load": {...}}``; ``best_metric`` is the seed-mean accuracy (classification) or NLL (regression)
at the best LR.

Usage:
    python benchmarks/lr_robustness.py --task digits                 # 7 LRs × 14 methods × 3 seeds
    python benchmarks/lr_robustness.py --quick                       # digits, 7 LRs, 1 seed, 8 epochs
    python benchmarks/lr_robustness.py --task fsdd --methods adam-constant bnn bnn+uplateau
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import RESULTS_DIR, base_parser, print_table, write_results  # noqa: E402
from benchmarks._lr_methods import METHODS, OPTIONAL, Run  # noqa: E402
from benchmarks._lr_tasks import TASKS, load_task  # noqa: E402
from uncertlr import metrics  # noqa: E402

LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
EVAL_SAMPLES, FINAL_SAMPLES = 4, 16


# --------------------------------------------------------------------------- scoring


def regression_scores(mean: Any, var: Any, y: Any) -> dict[str, float]:
    """NLL (mixture over samples), RMSE and the coverage error of central intervals (moment-matched)."""
    from scipy.stats import norm

    m, v, t = (np.asarray(a, dtype=np.float64) for a in (mean, var, y))
    nll = float(metrics.gaussian_nll(m, v, t))
    mu = m.mean(0)
    sd = np.sqrt(v.mean(0) + m.var(0))
    levels = np.linspace(0.1, 0.9, 9)
    z = np.abs(t - mu) / sd
    cover = [float(np.mean(z <= norm.ppf(0.5 + lv / 2))) for lv in levels]
    return {
        "nll": nll,
        "rmse": float(np.sqrt(np.mean((mu - t) ** 2))),
        "ece": float(np.mean(np.abs(np.asarray(cover) - levels))),
    }


def reference_nll(task: Any) -> float:
    """NLL of predicting the training mean and variance for every test point."""
    y = task.y_train.double()
    return float(metrics.gaussian_nll(y.mean().expand(1, *task.y_test.shape).numpy(),
                                      np.full((1, *task.y_test.shape), float(y.var())),
                                      task.y_test.double().numpy()))  # fmt: skip


def score(task: Any, row: dict[str, Any], ref: float) -> float:
    """Higher is better: accuracy, or the NLL improvement over the reference floored at 0 (no better than
    predicting the training mean); a diverged run scores 0."""
    v = row["nll"] if task.regression else row["accuracy"]
    if not math.isfinite(v):
        return 0.0
    return max(ref - v, 0.0) if task.regression else v


# --------------------------------------------------------------------------- one run


def train_one(task: Any, method: str, lr: float, seed: int, *, epochs: int, matched: dict) -> dict[str, Any]:
    torch.manual_seed(seed)
    x, y = task.x_train, task.y_train
    xv = yv = None
    if method == "adam-plateau(val)":
        x, y, xv, yv = task.split_validation()
    spe = task.steps_per_epoch(len(x))
    row: dict[str, Any] = {"task": task.name, "method": method, "lr": lr, "seed": seed}
    matched_lr = None
    if method == "bnn+lr-matched":
        if (lr, seed) not in matched:
            return {**row, "skipped": "no matched run"}
        matched_lr = lr * matched[(lr, seed)]
        row["matched_lr"] = matched_lr
    run = Run(method, lr, task, num_data=len(x), total_steps=epochs * spe, matched_lr=matched_lr)
    gen = torch.Generator().manual_seed(seed)
    curve: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    diverged = False
    try:
        for epoch in range(epochs):
            run.train_mode(True)
            for idx in torch.randperm(len(x), generator=gen).split(task.batch):
                run.step(x[idx], y[idx])
            run.train_mode(False)
            run.end_epoch(run.val_loss(xv, yv) if xv is not None else None)
            curve.append(((epoch + 1) * spe, _epoch_metric(task, run)))
    except (FloatingPointError, ValueError) as exc:  # a non-finite loss (the BNN names it a ValueError)
        if isinstance(exc, ValueError) and "not finite" not in str(exc):
            raise
        diverged = True
    row.update(diverged=diverged, curve=curve)
    if diverged:
        row.update(accuracy=float("nan"), nll=float("nan"), ece=float("nan"))
    else:
        row.update(_final_metrics(task, run))
    f, vf = run.factors(), run.variance_factors()
    if vf:
        row["variance_factor_mean"] = statistics.fmean(vf)
    row.update(
        factor_mean=statistics.fmean(f) if f else None,
        factor_min=min(f) if f else None,
        factor_max=max(f) if f else None,
        seconds=time.perf_counter() - t0,
    )
    return row


def _epoch_metric(task: Any, run: Run) -> float:
    p = run.predict(task.x_test, EVAL_SAMPLES)
    if task.regression:
        m, v = p
        if not (bool(torch.isfinite(m).all()) and bool(torch.isfinite(v).all()) and bool((v > 0).all())):
            return float("nan")
        return float(metrics.gaussian_nll(m.double(), v.double(), task.y_test.double()))
    return float((p.mean(0).argmax(-1) == task.y_test).float().mean())


def _final_metrics(task: Any, run: Run) -> dict[str, float]:
    p = run.predict(task.x_test, FINAL_SAMPLES)
    if task.regression:
        if not all(bool(torch.isfinite(a).all()) for a in p):
            return {"nll": float("nan"), "rmse": float("nan"), "ece": float("nan"), "accuracy": float("nan")}
        return regression_scores(p[0], p[1], task.y_test)
    probs, labels = p.double().numpy(), task.y_test.numpy()
    if not np.isfinite(probs).all():
        return {"accuracy": float("nan"), "nll": float("nan"), "ece": float("nan")}
    return {
        "accuracy": float(metrics.accuracy(probs, labels)),
        "nll": float(metrics.nll(probs, labels)),
        "ece": float(metrics.ece(probs, labels)),
    }


# --------------------------------------------------------------------------- summaries


def lr_ranges(rows: list[dict[str, Any]], lrs: list[float], target: float, key: str = "score") -> dict:
    """Per method: seed-mean ``key`` per LR, the best LR and the width of the contiguous block around
    it whose seed-mean is ``>= target`` (max/min LR; 1.0 = one grid point, 0.0 = none reaches it).
    A non-finite value counts as 0."""
    out = {}
    for m in dict.fromkeys(r["method"] for r in rows):
        means = []
        for lr in lrs:
            vals = [r[key] for r in rows if r["method"] == m and r["lr"] == lr]
            vals = [v if math.isfinite(v) else 0.0 for v in vals]
            means.append(statistics.fmean(vals) if vals else float("nan"))
        finite = [v if math.isfinite(v) else -math.inf for v in means]
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
        out[m] = {"means": means, "best_lr": lrs[best], "best": means[best], "range": width}
    return out


def summarize(task: Any, rows: list[dict[str, Any]], lrs: list[float]) -> tuple[list, list, float]:
    """``(summary rows of the JSON contract, detail rows, the task's best seed-mean score)``."""
    ref = reference_nll(task) if task.regression else 0.0
    done = [r for r in rows if "skipped" not in r]
    for r in done:
        r["score"] = score(task, r, ref)
    methods = list(dict.fromkeys(r["method"] for r in done))
    ranges = lr_ranges(done, lrs, -math.inf)
    best = max(info["best"] for info in ranges.values())
    ranges = lr_ranges(done, lrs, 0.95 * best)
    for r in done:
        hit = [s for s, v in r["curve"] if (ref - v if task.regression else v) >= 0.95 * best]
        r["steps_to_95pct_best"] = hit[0] if hit else None
    metric = "nll" if task.regression else "accuracy"
    summary, details = [], []
    for m in methods:
        info = ranges[m]
        at_best = [r for r in done if r["method"] == m and r["lr"] == info["best_lr"]]

        def mean_of(k: str, rs: list = at_best) -> float | None:
            vals = [r[k] for r in rs if r.get(k) is not None and math.isfinite(r[k])]
            return statistics.fmean(vals) if vals else None

        vals = [r[metric] for r in at_best]
        se = statistics.stdev(vals) / math.sqrt(len(vals)) if len(vals) > 1 else None
        summary.append({
            "task": task.name,
            "method": m,
            "modulated": any(r.get("factor_mean") is not None for r in done if r["method"] == m),
            "range_95": info["range"],
            "best_lr": info["best_lr"],
            "best_metric": statistics.fmean(vals),
        })  # fmt: skip
        mine = [r for r in done if r["method"] == m]
        details.append({
            "task": task.name, "method": m, "metric": metric, "se_at_best": se,
            "ece_at_best": mean_of("ece"), "nll_at_best": mean_of("nll"),
            "steps_to_95_at_best": mean_of("steps_to_95pct_best"),
            "mean_score_over_grid": statistics.fmean(info["means"]),
            "score_per_lr": info["means"],
            "factor_mean": mean_of("factor_mean", mine), "factor_min": min(
                (r["factor_min"] for r in mine if r.get("factor_min") is not None), default=None),
            "factor_max": max((r["factor_max"] for r in mine if r.get("factor_max") is not None), default=None),
            "diverged_runs": sum(bool(r.get("diverged")) for r in mine),
        })  # fmt: skip
    return summary, details, best


def plot(task: Any, rows: list, lrs: list, details: list, best: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from uncertlr.diagnostics.plots import save_figure

    fig, ax = plt.subplots(figsize=(11, 5), layout="constrained")
    # 15+ methods: tab10 would repeat colours; tab20's ten dark shades first, then its ten light ones
    colors = [c for pair in (0, 1) for c in plt.get_cmap("tab20").colors[pair::2]]
    for i, d in enumerate(details):
        sd = [
            statistics.pstdev(v) if len(v := [r["score"] for r in rows
                                              if r["method"] == d["method"] and r["lr"] == lr
                                              and "score" in r]) > 1 else 0.0
            for lr in lrs
        ]  # fmt: skip
        style = "-" if d["method"].startswith("bnn") else "--"
        ax.errorbar(lrs, d["score_per_lr"], yerr=sd, marker="o", ms=3, ls=style, capsize=2, label=d["method"],
                    color=colors[i % 20])  # fmt: skip
    ax.axhline(0.95 * best, color="grey", lw=0.8, ls=":", label="95% of the best")
    ax.set_xscale("log")
    ax.set_xlabel("base learning rate (Prodigy, DoG: multiplier × 1e-3)")
    ax.set_ylabel("test NLL gain over the mean predictor" if task.regression else "final test accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    save_figure(fig, path)


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--task", default="digits", choices=TASKS)
    p.add_argument("--lrs", type=float, nargs="+", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=None, choices=METHODS)
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the task's)")
    p.add_argument(
        "--matched", default="bnn+uplateau", help="the variant bnn+lr-matched copies the mean factor of"
    )
    p.add_argument(
        "--png", type=Path, default=None, help="plot (default benchmarks/results/lr_robustness_TASK.png)"
    )
    p.add_argument(
        "--from-json", type=Path, default=None, help="summarise the runs of an earlier --json file again"
    )
    args = p.parse_args(argv)
    if args.quick and args.task != "digits":
        p.error("--quick runs the digits task only")
    torch.set_num_threads(args.threads or 1)
    task = load_task(args.task, args.data_dir)
    lrs = sorted(args.lrs or LRS)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    epochs = args.epochs or (task.quick_epochs if args.quick else task.epochs)
    methods = list(args.methods or METHODS)
    for m, mod in OPTIONAL.items():
        if m in methods:
            try:
                __import__(mod)
            except ImportError:
                print(f"{mod} is not installed (pip install 'uncertlr[bench]'): skipping {m}")
                methods.remove(m)
    if "bnn+lr-matched" in methods:  # the matched control runs after the variant it copies
        methods.remove("bnn+lr-matched")
        methods.append("bnn+lr-matched")
        if args.matched not in methods:
            methods.insert(0, args.matched)
    grid = [(m, lr, s) for m in methods for s in seeds for lr in lrs]

    from uncertlr._progress import progress_bar

    if args.from_json is not None:
        old = json.loads(args.from_json.read_text())
        rows, load = old["rows"], old["load"]
        lrs, seeds, epochs = old["config"]["lrs"], old["config"]["seeds"], old["config"]["epochs"]
        methods = old["config"]["methods"]
        return _report(args, task, rows, lrs, seeds, epochs, methods, load)
    load0, cpu0, t0 = os.getloadavg(), time.process_time(), time.perf_counter()
    rows: list[dict[str, Any]] = []
    matched: dict[tuple[float, int], float] = {}
    # every finished run is appended here at once, so an interrupted grid loses nothing
    partial = (args.json or RESULTS_DIR / f"lr_robustness_{task.name}.json").with_suffix(".partial.jsonl")
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text("")
    with progress_bar() as bar:
        job = bar.add_task(f"lr robustness ({args.task})", total=len(grid), info="")
        for m, lr, s in grid:
            row = train_one(task, m, lr, s, epochs=epochs, matched=matched)
            if m == args.matched and row.get("factor_mean") is not None:
                matched[(lr, s)] = row["factor_mean"]
            rows.append(row)
            with partial.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            what = "nll" if task.regression else "accuracy"
            bar.update(
                job, advance=1, info=f"{m} lr={lr:g} seed={s}: {what} {row.get(what, float('nan')):.3f}"
            )
    load = {"loadavg_start": load0, "loadavg_end": os.getloadavg(),
            "cpu_seconds": time.process_time() - cpu0, "wall_seconds": time.perf_counter() - t0}  # fmt: skip
    return _report(args, task, rows, lrs, seeds, epochs, methods, load)


def _report(
    args: Any, task: Any, rows: list, lrs: list, seeds: list, epochs: int, methods: list, load: dict
) -> int:
    """Print the tables, draw the plot and write the JSON of a finished grid."""
    summary, details, best = summarize(task, rows, lrs)
    by = {d["method"]: d for d in details}
    adam = next((s["range_95"] for s in summary if s["method"] == "adam-constant"), None)
    table = [{**s, **by[s["method"]], "vs_adam": s["range_95"] / adam if adam else None} for s in summary]
    metric = "NLL" if task.regression else "accuracy"
    print_table(
        f"LR robustness on {task.name}: {len(lrs)} LRs × {len(seeds)} seeds × {epochs} epochs "
        f"(target: 95% of the best score {best:.3f}; {load['wall_seconds']:.0f} s, "
        f"load {load['loadavg_start'][0]:.1f}–{load['loadavg_end'][0]:.1f})",
        table,
        [("method", "method", "s"), ("range_95", "range (95%)", ".0f"), ("vs_adam", "vs adam", ".2f"),
         ("best_lr", "best LR", "g"), ("best_metric", f"{metric} at best", ".3f"),
         ("se_at_best", "± se", ".3f"), ("ece_at_best", "ECE at best", ".3f"),
         ("mean_score_over_grid", "mean over grid", ".3f"), ("steps_to_95_at_best", "steps to 95%", ".0f"),
         ("factor_mean", "factor mean", ".2f"), ("factor_min", "min", ".3f"), ("factor_max", "max", ".2f")],
    )  # fmt: skip
    per_lr = [
        {"method": d["method"], **{f"{lr:g}": v for lr, v in zip(lrs, d["score_per_lr"])}} for d in details
    ]
    print_table("seed-mean score per base LR", per_lr,
                [("method", "method", "s")] + [(f"{lr:g}", f"{lr:g}", ".3f") for lr in lrs])  # fmt: skip
    png = args.png or RESULTS_DIR / f"lr_robustness_{task.name}.png"
    done = [r for r in rows if "score" in r]
    plot(
        task,
        done,
        lrs,
        details,
        best,
        png,
        f"{task.name}: score vs base LR ({len(seeds)} seeds, {epochs} epochs)",
    )
    print(f"wrote {png}")
    write_results(
        f"lr_robustness_{task.name}",
        rows,
        args.json,
        summary=summary,
        details=details,
        load=load,
        config={"task": task.name, "lrs": lrs, "seeds": seeds, "epochs": epochs, "methods": methods,
                "batch": task.batch, "kl_weight": task.kl_weight, "matched": args.matched,
                "best_score": best, "threads": torch.get_num_threads(), "quick": args.quick},
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
