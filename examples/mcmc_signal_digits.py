"""A torch training run on digits driven by an MCMC-informed uncertainty signal, and what it costs.

Every ``--refresh`` steps, :class:`uncertlr.jax.LastLayerMCMCSignal` runs NUTS (2 chains,
short warm-up) on a softmax head over the torch network's *current* penultimate features of
a reference subset of the training set; between refreshes it scores each batch's
posterior predictive entropy under the held draws. That signal drives the LR modulator
(``uncertlr.torch.Modulator(uncertlr.modulation.Ratio())``) in a training loop written out
by hand (the loop is yours: the modulator only needs ``observe`` before ``step``).

The same network is also trained without the signal (same seed, same batches) for the
cost comparison. Writes a run folder under ``--out`` through
:func:`uncertlr.app.pipeline.save`, like every other example (``metrics.json``,
``history.json``, ``predictions.npz``, ``reliability.png``, ``uncertainty.png``).

Usage:
    python examples/mcmc_signal_digits.py            # ~1-2 minutes on 2 CPU cores
    python examples/mcmc_signal_digits.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from uncertlr import runfolder
from uncertlr.app.pipeline import Results, results_table, save
from uncertlr.data import load_digits, shuffle_pixels
from uncertlr.jax import LastLayerMCMCSignal
from uncertlr.modulation import Ratio
from uncertlr.runfolder import classification_summary
from uncertlr.torch import Modulator


def make_net(seed: int) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.Tanh()), nn.Linear(32, 10)


def train(x, y, *, epochs, batch, lr, seed, signal=None, reference=None):
    body, head = make_net(seed)
    opt = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=lr)
    mod = Modulator(Ratio()).attach(opt) if signal is not None else None
    gen = torch.Generator().manual_seed(seed)
    history, step = [], 0
    t0 = time.perf_counter()
    for epoch in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            feats = body(x[idx])
            loss = nn.functional.cross_entropy(head(feats), y[idx])
            rec = {"step": step, "epoch": epoch, "loss": loss.item(), "lr": opt.param_groups[0]["lr"]}
            if signal is not None:
                ref = None
                if signal.needs_refresh(step):
                    with torch.no_grad():
                        ref = (body(reference[0]), reference[1])
                u = signal(step, feats, reference=ref)
                rec["signal"] = u
                if mod is not None:
                    mod.observe(u)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if mod is not None and mod.history:
                rec["scale"] = float(mod.history[-1]["scale"])
                rec["lr"] = float(mod.history[-1]["lr"])
            history.append(rec)
            step += 1
    seconds = time.perf_counter() - t0

    def predict(xx: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(head(body(xx)), -1)[None].numpy()

    return predict, history, seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=Path("runs"))
    p.add_argument("--epochs", type=int, default=None, help="default 30, quick 4")
    p.add_argument(
        "--refresh", type=int, default=None, help="steps between NUTS refreshes (default 100, quick 25)"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    epochs = args.epochs or (4 if args.quick else 30)
    refresh = args.refresh or (25 if args.quick else 100)
    from rich.console import Console

    console = Console()
    run = runfolder.new_run_dir(args.out, "mcmc_signal_digits")
    split = load_digits(seed=args.seed)
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    xt, xo = (
        torch.from_numpy(split.x_test),
        torch.from_numpy(shuffle_pixels(split.x_test, seed=args.seed + 1)),
    )
    ref_idx = torch.from_numpy(np.random.default_rng(args.seed).choice(len(x), 512, replace=False))
    reference = (x[ref_idx], y[ref_idx])

    results, histories, preds = {}, {}, {"labels": split.y_test}
    predict, histories["deterministic"], sec = train(x, y, epochs=epochs, batch=64, lr=1e-2, seed=args.seed)
    results["deterministic"] = {
        **classification_summary(predict(xt), split.y_test, predict(xo)),
        "seconds": sec,
    }
    preds["deterministic_test"], preds["deterministic_ood"] = predict(xt), predict(xo)

    sig = LastLayerMCMCSignal(
        num_classes=10,
        refresh_every=refresh,
        kind="entropy",
        num_warmup=100 if not args.quick else 40,
        num_samples=100 if not args.quick else 40,
        num_chains=2,
        max_reference=512,
        rng_key=args.seed,
    )
    predict, hist, sec = train(
        x, y, epochs=epochs, batch=64, lr=1e-2, seed=args.seed, signal=sig, reference=reference
    )
    name = "mcmc_signal"
    histories[name] = hist
    results[name] = {
        **classification_summary(predict(xt), split.y_test, predict(xo)),
        "seconds": sec,
        "signal_seconds": sig.seconds,
        "refreshes": sig.refreshes,
        "refresh_seconds": sig.refresh_seconds,
        "divergences": sig.divergences,
    }
    preds[f"{name}_test"], preds[f"{name}_ood"] = predict(xt), predict(xo)
    console.print(results_table(results, title="digits (torch) with a last-layer NUTS signal"))
    r = results[name]
    rest = r["refresh_seconds"][1:]
    console.print(
        f"signal cost: {r['refreshes']} NUTS refreshes took {r['signal_seconds']:.1f} s of {r['seconds']:.1f} s "
        f"({100 * r['signal_seconds'] / r['seconds']:.0f}%; first {r['refresh_seconds'][0]:.1f} s with compilation, "
        f"then {np.median(rest) if rest else float('nan'):.2f} s each); the run without it took "
        f"{results['deterministic']['seconds']:.1f} s; {r['divergences']} divergent transitions"
    )
    doc = {
        "task": "digits",
        "seed": args.seed,
        "config": {**vars(args), "out": str(args.out), "epochs": epochs, "refresh": refresh},
        "ood": "test images with shuffled pixels",
    }
    save(Results(results, preds, histories, ood="shuffled pixels"), run, doc=doc, console=console)
    console.print(f"run folder: [bold]{run}[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
