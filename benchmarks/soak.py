"""Soak test (not in CI): long CPU training of a BNN with the LR modulator.

Trains a Bayesian MLP (digits, 64-128-128-10, batch 64, Adam + cosine restarts every
epoch) with an LR modulator for ``--minutes`` (default 20) and records, once per window
(default 60 s): resident memory (RSS), steps per second, skipped (non-finite) steps and
non-finite modulator signals. Training keeps its per-step records as real runs do
(``fit``'s history and the modulator's ``history``), so RSS growth is expected to follow
the number of records; anything beyond that is a leak. ``--no-records`` keeps no per-step
records (``fit`` gets a fresh history every epoch, ``Modulator(record=False)``), so RSS should
stay flat: that run is the leak check.

Rows (one per window): ``minute``, ``steps``, ``steps_per_s``, ``rss_mb``, ``skipped``,
``nonfinite_signals``, ``loss``, ``accuracy`` (test set, at the end of the window).

Usage:
    python benchmarks/soak.py                      # 20 minutes, G1 modulator
    python benchmarks/soak.py --rule p2 --minutes 5
    python benchmarks/soak.py --no-records --minutes 5   # the leak check
    python benchmarks/soak.py --quick              # 20 seconds, 5 s windows
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import base_parser, print_table, write_results  # noqa: E402
from uncertlr import metrics, priors  # noqa: E402
from uncertlr.data import load_digits  # noqa: E402
from uncertlr.modulation import GradSigmaRatio, Ratio  # noqa: E402
from uncertlr.torch import (  # noqa: E402
    Modulator,
    batch_entropy,
    bayesian,
    fit,  # noqa: E402
)
from uncertlr_models import MLP  # noqa: E402

RULES = {"g1": lambda: Ratio(kappa=-0.5), "p2": lambda: GradSigmaRatio(kappa=-0.5)}


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux /proc; falls back to psutil)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    import psutil  # pragma: no cover

    return psutil.Process().memory_info().rss / 2**20  # pragma: no cover


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--window", type=float, default=60.0, help="seconds per reported window")
    p.add_argument("--rule", choices=sorted(RULES), default="g1")
    p.add_argument("--no-records", action="store_true", help="keep no per-step history (leak check)")
    args = p.parse_args(argv)
    if args.quick:
        args.minutes, args.window = 20 / 60, 5.0
    if args.threads:
        torch.set_num_threads(args.threads)

    s = load_digits(seed=0)
    x, y = torch.from_numpy(s.x_train), torch.from_numpy(s.y_train)
    xt, yt = torch.from_numpy(s.x_test), torch.from_numpy(s.y_test)
    torch.manual_seed(0)
    bnn = bayesian(
        MLP(64, (128, 128), 10), num_data=len(x), prior=priors.Normal(1.0), kl_weight=0.1, init_scale=1e-3
    )
    opt = torch.optim.Adam(bnn.parameters(), lr=1e-2)
    steps_per_epoch = math.ceil(len(x) / 64)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=10 * steps_per_epoch)
    rule = RULES[args.rule]()
    mod = Modulator(rule, sigma=bnn if rule.per_parameter else None, record=not args.no_records).attach(opt)
    gen = torch.Generator().manual_seed(0)
    history: list[dict[str, float]] = []
    steps_done = skipped = 0

    rows = []
    rss0 = rss_mb()
    print(
        f"soak: {args.minutes:g} min, rule {args.rule}, {torch.get_num_threads()} threads, RSS {rss0:.1f} MB"
    )
    t_start = time.perf_counter()
    end = t_start + 60 * args.minutes
    window_start, steps_at_window = t_start, 0
    minute = 0
    while True:
        epoch = fit(
            bnn.elbo,
            opt,
            x,
            y,
            epochs=1,
            batch_size=64,
            scheduler=sched,
            generator=gen,
            progress=False,
            history=None if args.no_records else history,
            before_step=lambda t: mod.observe(batch_entropy(t.outputs)),
        )
        steps_done += len(epoch) if args.no_records else 0
        skipped += int(sum(h["skipped"] for h in epoch)) if args.no_records else 0
        last_loss = epoch[-1]["loss"]
        now = time.perf_counter()
        if now - window_start >= args.window or now >= end:
            minute += 1
            with torch.no_grad():
                acc = metrics.accuracy(bnn.predict(xt, num_samples=16), yt)
            state = mod.state_dict()["rule_state"]
            nonfinite = (
                sum(float(st["nonfinite"]) for t in state for st in t)
                if rule.per_parameter
                else float(state["nonfinite"])
            )
            steps = steps_done if args.no_records else len(history)
            rows.append(
                {
                    "window": minute,
                    "minutes": round((now - t_start) / 60, 2),
                    "steps": steps,
                    "steps_per_s": (steps - steps_at_window) / (now - window_start),
                    "rss_mb": rss_mb(),
                    "skipped": skipped if args.no_records else int(sum(h["skipped"] for h in history)),
                    "nonfinite_signals": int(nonfinite),
                    "loss": last_loss,
                    "accuracy": float(acc),
                }
            )
            print(
                ", ".join(
                    f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rows[-1].items()
                ),
                flush=True,
            )
            window_start, steps_at_window = now, steps
        if now >= end:
            break

    # growth after the first window (which includes one-off allocations: optimizer state, predict buffers)
    rss_growth = rows[-1]["rss_mb"] - rows[0]["rss_mb"]
    growth_steps = max(1, rows[-1]["steps"] - rows[0]["steps"])
    records = len(history) + len(mod.history)
    summary = {
        "rule": args.rule,
        "minutes": args.minutes,
        "records": not args.no_records,
        "steps": rows[-1]["steps"],
        "rss_start_mb": rss0,
        "rss_end_mb": rows[-1]["rss_mb"],
        "rss_first_window_mb": rows[0]["rss_mb"],
        "rss_growth_mb_after_first_window": rss_growth,
        "rss_growth_kb_per_1000_steps": 1024 * rss_growth / growth_steps * 1000,
        "history_records": records,
        "skipped_steps": rows[-1]["skipped"],
        "nonfinite_signals": rows[-1]["nonfinite_signals"],
        "final_accuracy": rows[-1]["accuracy"],
        "steps_per_s_first_window": rows[0]["steps_per_s"],
        "steps_per_s_last_window": rows[-1]["steps_per_s"],
    }
    print_table(
        f"soak: BNN + {args.rule} modulator on digits, {args.minutes:g} min",
        rows,
        [
            ("minutes", "min", ".2f"),
            ("steps", "steps", "d"),
            ("steps_per_s", "steps/s", ".1f"),
            ("rss_mb", "RSS MB", ".1f"),
            ("skipped", "skipped", "d"),
            ("nonfinite_signals", "NaN signals", "d"),
            ("loss", "loss", ".3f"),
            ("accuracy", "test acc", ".3f"),
        ],
    )
    print(summary)
    name = f"soak-{args.rule}" + ("-no-records" if args.no_records else "") + ("-quick" if args.quick else "")
    write_results(name, rows, args.json, summary=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
