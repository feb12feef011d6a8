"""Spoken digits (FSDD): a deterministic CNN vs a Bayesian CNN (vs a Bayesian CNN with the LR modulator).

Trains on the Free Spoken Digit Dataset's official split (recordings 5-49 of every speaker
train, 0-4 test) from log-mel spectrograms, then asks what the uncertainty is good for:

* calibration on the test set (ECE, NLL, a reliability diagram) and accuracy per speaker;
* a **held-out speaker**: the same models retrained without one speaker, scored on that
  speaker's recordings (a speaker the network never heard);
* **noise**: the test recordings with white noise at falling signal-to-noise ratios (an SNR
  sweep): accuracy should fall and predictive entropy rise as the SNR falls;
* ``metrics.json`` (schema ``uncertlr.metrics/1``, the same as ``uncertlr demo``) scores the
  test set as in-distribution and the test recordings at ``--ood-snr`` dB as the
  out-of-distribution set (``auroc_mi``: how well mutual information tells them apart).

With ``--speaker-validated`` a fourth model, "bnn-spkval", is the BNN whose prior scale, KL weight
and initial σ are chosen on a *held-out training speaker* (:func:`uncertlr.model_selection.held_out_group_search`
over :data:`SPKVAL_GRID`, never looking at the held-out test speaker): the recipe that makes a BNN hold up
on unseen speakers in ``benchmarks/shift.py``.

The "bnn+modulator" model is the BNN with the LR modulator (``uncertlr.torch.Modulator``,
the G1 ratio rule driven by the batch predictive entropy). The three models are trained and
saved by the pipeline behind ``uncertlr demo`` (:mod:`uncertlr.app.pipeline`), which also
writes the diagnostics report.

Usage::

    python examples/speech_digits.py                    # full run (~3 min on 2 CPU cores)
    python examples/speech_digits.py --quick            # a subset, a few epochs (< 1 min)
    python examples/speech_digits.py --data-dir /data   # folder holding fsdd/recordings
    python examples/speech_digits.py --speaker-validated  # + a BNN with settings chosen on a held-out speaker

Data: ``--data-dir`` / ``$UNCERTLR_DATA`` (the folder holding ``fsdd/recordings``), else
``../shared/data`` beside a checkout; ``--download`` fetches FSDD (SHA-256 verified).
Features are cached under ``~/.cache/uncertlr/features`` (``--cache-dir``), never in the data folder.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uncertlr import metrics, runfolder
from uncertlr.app.pipeline import Method, NetFactory, Task, Trained, compare, results_table, save, train
from uncertlr.data import LogMel, add_noise, fix_length, load_fsdd, read_recordings
from uncertlr.diagnostics.plots import save_figure
from uncertlr.model_selection import GroupSearch, held_out_group_search
from uncertlr.modulation import G1

#: The BNN settings ``--speaker-validated`` chooses among: init σ x prior scale x KL weight (the corners of
#: ``benchmarks/shift.py``'s grid).
SPKVAL_GRID = {"init_scale": [1e-3, 3e-2], "prior_scale": [0.3, 1.0], "kl_weight": [0.1, 1.0]}


@dataclass(frozen=True)
class SpeechConfig:
    """Settings of the speech example (all recorded in ``metrics.json``)."""

    seed: int = 0
    model: str = "cnn"  # "cnn" or "crnn"
    n_mels: int = 40
    num_frames: int = 64
    top_db: float | None = 40.0  # floor every spectrogram 40 dB below its peak (see README "FSDD")
    epochs: int = 30
    det_epochs: int = 30
    heldout_epochs: int = 15
    batch_size: int = 64
    lr: float = 3e-3
    det_lr: float = 3e-3
    kl_weight: float = 0.1
    prior_scale: float = 1.0
    init_scale: float = 1e-3
    num_samples: int = 32
    snrs: tuple[float, ...] = (30.0, 20.0, 10.0, 5.0, 0.0, -5.0)
    ood_snr: float = 0.0
    held_out_speaker: str | None = None  # default: the last speaker in alphabetical order
    max_index: int | None = None  # keep recordings with index < max_index (a subset; None = all)
    modulator_warmup: int = 20
    speaker_validated: bool = False  # add "bnn-spkval" (settings chosen on a held-out training speaker)
    quick: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


QUICK = dict(
    epochs=8,
    det_epochs=8,
    heldout_epochs=4,
    num_samples=8,
    snrs=(20.0, 0.0, -5.0),
    max_index=25,
    quick=True,
    lr=5e-3,
    det_lr=5e-3,
)


def _net(cfg: SpeechConfig) -> NetFactory:
    from uncertlr_models import SpeechCNN, SpeechCRNN

    if cfg.model == "cnn":
        return lambda: SpeechCNN(cfg.n_mels, 10)
    if cfg.model == "crnn":
        return lambda: SpeechCRNN(cfg.n_mels, 10)
    raise ValueError(f"model must be 'cnn' or 'crnn'; got {cfg.model!r}")


def methods(cfg: SpeechConfig) -> list[Method]:
    """The deterministic CNN, the BNN and the BNN with the LR modulator, as the pipeline trains them."""
    det = Method(
        "deterministic", bayesian=False, epochs=cfg.det_epochs, lr=cfg.det_lr, batch_size=cfg.batch_size
    )
    bnn = Method(
        "bnn",
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        kl_weight=cfg.kl_weight,
        prior_scale=cfg.prior_scale,
        init_scale=cfg.init_scale,
        num_samples=cfg.num_samples,
    )
    return [det, bnn, replace(bnn, name="bnn+modulator", rule=G1(warmup=cfg.modulator_warmup))]


def speaker_validated(
    bnn: Method,
    x: torch.Tensor,
    y: torch.Tensor,
    speakers: np.ndarray,
    held_out: str,
    net: NetFactory,
    *,
    epochs: int,
    seed: int,
    grid: dict[str, list[Any]] | None = None,
    progress: bool = True,
) -> tuple[Method, GroupSearch]:
    """``bnn`` with the settings of ``grid`` (default :data:`SPKVAL_GRID`) that score the lowest NLL on speaker
    ``held_out`` after training ``epochs`` epochs on the other speakers of ``x``; named ``bnn-spkval``."""

    class Candidate:
        def __init__(self, **setting: Any) -> None:
            self.method = replace(bnn, name="bnn-spkval", epochs=epochs, **setting)

        def predict(self, xs: torch.Tensor, num_samples: int) -> Any:
            return self.trained.predict(xs)

    def fit_one(c: Candidate, xs: torch.Tensor, ys: torch.Tensor) -> None:
        c.trained = train(
            Task("fsdd-inner", xs, ys, xs[:1], ys[:1]), c.method, net, seed=seed, progress=False
        )

    search = held_out_group_search(
        Candidate, grid or SPKVAL_GRID, fit_one, x, y, speakers, held_out=[held_out],
        num_samples=bnn.num_samples, progress=progress,
    )  # fmt: skip
    return replace(bnn, name="bnn-spkval", **search.best), search


HELDOUT_VAL_FRACTION = 0.15


def _post_hoc(trained: Trained, task: Task, probs: torch.Tensor, num_samples: int) -> dict[str, float]:
    """For a deterministic net, two post-hoc methods on the held-out speaker, both fitted on the other speakers
    only: a temperature that grows with the net's feature density, fitted on their validation part
    (``*_density_ts``: :func:`uncertlr.calibration.fit_score_temperature` with
    :class:`uncertlr.torch.FeatureDensity`; the shift benchmark's ``deterministic+density-ts``), and last-layer
    Laplace around the trained net (``*_laplace``: :class:`uncertlr.torch.LastLayerLaplace`, the method that
    held up best on new speakers with this CNN in ``benchmarks/shift.py --tasks fsdd-cnn``). Nothing for a
    model with its own ``predict`` (BNNs)."""
    if hasattr(trained.model, "predict"):
        return {}
    from uncertlr.calibration import fit_score_temperature
    from uncertlr.torch import FeatureDensity, LastLayerLaplace

    assert task.x_val is not None and task.y_val is not None
    density = FeatureDensity(trained.model).fit(task.x_train, task.y_train)
    st = fit_score_temperature(
        trained.predict(task.x_val).numpy(), task.y_val.numpy(), density.score(task.x_val).numpy()
    )
    y = task.y_test.numpy()
    out = {}
    laplace = LastLayerLaplace(trained.model).fit(task.x_train, task.y_train)
    with torch.no_grad():
        scored = {
            "density_ts": st(probs.numpy(), density.score(task.x_test).numpy()),
            "laplace": laplace.predict(task.x_test, num_samples=num_samples).numpy(),
        }
    for key, q in scored.items():
        out[f"ece_{key}"] = float(metrics.ece(q, y))
        out[f"nll_{key}"] = float(metrics.nll(q, y))
    out["accuracy_laplace"] = float(metrics.accuracy(scored["laplace"], y))
    return out


def _standardise(train: np.ndarray) -> Callable[[np.ndarray], torch.Tensor]:
    """Per-band mean/std of the training features -> a function standardising any features."""
    mu = train.mean(axis=(0, 2), keepdims=True)
    sd = train.std(axis=(0, 2), keepdims=True) + 1e-6
    return lambda a: torch.from_numpy(((a - mu) / sd).astype(np.float32))


def _noisy_features(waves: Sequence[np.ndarray], feat: LogMel, snr: float, seed: int) -> np.ndarray:
    """Features of the recordings with white noise at ``snr`` dB over the whole (padded) window.

    The SNR is relative to the recording's own power (not diluted by the zero padding), and
    the noise also covers the padding, as it would in a real noisy recording.
    """
    rng = np.random.default_rng(seed)
    noisy = []
    for w in waves:
        power = float(np.mean(np.square(w, dtype=np.float64)))
        noisy.append(add_noise(fix_length(w, feat.num_samples), snr, rng=rng, signal_power=power))
    return feat(noisy).numpy()


MAIN_ROWS = (
    ("accuracy", "accuracy", ".4f"),
    ("ece", "ECE (15 bins)", ".4f"),
    ("nll", "NLL", ".4f"),
    ("brier", "Brier", ".4f"),
    ("entropy_in", "entropy, clean test", ".3f"),
    ("mi_in", "MI, clean test", ".4f"),
    ("entropy_ood", "entropy, noisy test", ".3f"),
    ("mi_ood", "MI, noisy test", ".4f"),
    ("auroc_mi", "clean vs noisy AUROC of MI", ".3f"),
    ("auroc_entropy", "clean vs noisy AUROC of entropy", ".3f"),
    ("heldout_accuracy", "held-out speaker: accuracy", ".3f"),
    ("heldout_ece", "held-out speaker: ECE", ".3f"),
    ("heldout_ece_ts", "held-out speaker: ECE, temperature", ".3f"),
    ("heldout_ece_density_ts", "held-out speaker: ECE, density temperature", ".3f"),
    ("heldout_ece_laplace", "held-out speaker: ECE, last-layer Laplace", ".3f"),
    ("heldout_entropy", "held-out speaker: entropy", ".3f"),
    ("heldout_mi", "held-out speaker: MI", ".4f"),
    ("seconds", "seconds (train + eval)", ".1f"),
)


def _snr_plot(sweep: dict[str, dict[str, dict[str, float]]], clean: dict[str, dict[str, float]]) -> Any:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for name, by_snr in sweep.items():
        levels = sorted(by_snr, key=float)  # the sweep runs from high to low SNR: draw left to right
        snrs = [float(s) for s in levels]
        xs = [*snrs, snrs[-1] + 10]  # the clean test set, drawn right of the highest SNR
        for ax, key in zip(axes, ("accuracy", "entropy", "mi"), strict=True):
            ys = [by_snr[s][key] for s in levels] + [clean[name][key]]
            ax.plot(xs, ys, marker="o", label=name)
    for ax, title in zip(
        axes, ("accuracy", "predictive entropy (nats)", "mutual information (nats)"), strict=True
    ):
        ax.set_title(title)
        ax.set_xlabel("SNR (dB); rightmost point: clean")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("FSDD test recordings with white noise: uncertainty should rise as the SNR falls")
    fig.tight_layout()
    return fig


def _per_speaker_plot(per: dict[str, dict[str, float]]) -> Any:
    import matplotlib.pyplot as plt

    speakers = sorted(next(iter(per.values())))
    fig, ax = plt.subplots(figsize=(1.6 * len(speakers) + 2, 3.5))
    width = 0.8 / len(per)
    for i, (name, accs) in enumerate(per.items()):
        ax.bar(np.arange(len(speakers)) + i * width, [accs[s] for s in speakers], width, label=name)
    ax.set_xticks(np.arange(len(speakers)) + width * (len(per) - 1) / 2, speakers)
    ax.set_ylim(min(0.8, min(min(a.values()) for a in per.values()) - 0.05), 1.0)
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy per speaker (official test split)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def run(
    cfg: SpeechConfig,
    *,
    out: str | Path = "runs",
    data_dir: str | None = None,
    cache_dir: str | None = None,
    download: bool = False,
    console: Any = None,
) -> Path:
    """Run the example; returns the run folder."""
    from rich.console import Console

    console = console or Console()
    t_start = time.perf_counter()
    feat = LogMel(n_mels=cfg.n_mels, num_frames=cfg.num_frames, top_db=cfg.top_db)
    keep = None if cfg.max_index is None else (lambda r: r.index < cfg.max_index)
    split = load_fsdd(
        data_dir, features=feat, keep=keep, cache_dir=cache_dir, download=download, progress=True
    )
    speakers = sorted(set(split.speakers_train))
    held = cfg.held_out_speaker or speakers[-1]
    if held not in speakers:
        raise ValueError(f"--held-out-speaker {held!r} is not in the data; speakers: {speakers}")
    run_dir = runfolder.new_run_dir(out, "speech-digits")
    std = _standardise(split.x_train)
    test_waves = read_recordings(split.test)
    noisy = {snr: std(_noisy_features(test_waves, feat, snr, cfg.seed + 1)) for snr in cfg.snrs}
    x_ood = (
        noisy[cfg.ood_snr] if cfg.ood_snr in noisy else std(_noisy_features(test_waves, feat, cfg.ood_snr, 7))
    )
    task = Task(
        "fsdd",
        std(split.x_train),
        torch.from_numpy(split.y_train),
        std(split.x_test),
        torch.from_numpy(split.y_test),
        x_ood,
        f"{cfg.ood_snr:g} dB SNR",
    )
    # held-out speaker: every recording of the other speakers trains, all of `held`'s test
    spk_split = load_fsdd(
        data_dir, features=feat, keep=keep, cache_dir=cache_dir, split="speaker", test_speakers=[held]
    )
    std_h = _standardise(spk_split.x_train)
    # a validation part of the other speakers' recordings (not `held`'s) for the temperatures below
    perm = np.random.default_rng(cfg.seed).permutation(len(spk_split.x_train))
    n_val = int(round(HELDOUT_VAL_FRACTION * len(perm)))
    fit_idx, val_idx = np.sort(perm[n_val:]), np.sort(perm[:n_val])
    x_h, y_h = std_h(spk_split.x_train), torch.from_numpy(spk_split.y_train)
    held_task = Task(
        "fsdd-speaker",
        x_h[fit_idx],
        y_h[fit_idx],
        std_h(spk_split.x_test),
        torch.from_numpy(spk_split.y_test),
        x_val=x_h[val_idx],
        y_val=y_h[val_idx],
    )
    console.print(
        f"[bold]FSDD spoken digits[/]: {len(task.x_train)} train / {len(task.x_test)} test recordings "
        f"(official split), speakers {', '.join(speakers)}; log-mel {feat.shape}; model {cfg.model}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
        + ("; [yellow]quick mode[/]" if cfg.quick else "")
    )

    per_speaker: dict[str, dict[str, float]] = {}
    sweep: dict[str, dict[str, dict[str, float]]] = {}
    heldout: dict[str, dict[str, float]] = {}
    net = _net(cfg)

    def after(trained: Trained, bar: Any) -> dict[str, float]:
        """The SNR sweep, and the same method retrained without ``held``."""
        name, yt = trained.method.name, task.y_test
        task_id = bar.add_task(f"{name}: SNR sweep", total=len(cfg.snrs), info="") if bar else None
        for snr in cfg.snrs:
            p = trained.predict(noisy[snr])
            d = metrics.uncertainty_decomposition(p)
            sweep.setdefault(name, {})[f"{snr:g}"] = {
                "accuracy": float(metrics.accuracy(p, yt)),
                "entropy": float(d.total.mean()),
                "mi": float(d.epistemic.mean()),
            }
            if bar:
                bar.update(task_id, advance=1)
        method_h = replace(trained.method, epochs=cfg.heldout_epochs)
        again = train(
            held_task, method_h, net, seed=cfg.seed, progress=bar or False, label=f" (without {held})"
        )
        ph = again.predict(held_task.x_test)
        # plain temperature (ece_ts, nll_ts) fitted on the other speakers' validation part
        sh = runfolder.classification_summary(
            ph, held_task.y_test, probs_val=again.predict(held_task.x_val), labels_val=held_task.y_val
        )
        heldout[name] = {
            **{k: sh[k] for k in ("accuracy", "ece", "nll", "ece_ts", "nll_ts")},
            "entropy": sh["entropy_in"],
            "mi": sh["mi_in"],
            **_post_hoc(again, held_task, ph, cfg.num_samples),
        }
        return {f"heldout_{k}": v for k, v in heldout[name].items()}

    chosen: dict[str, Any] = {}
    models = methods(cfg)
    if cfg.speaker_validated:  # chosen without `held`: among the other speakers, the first one is held out
        others = sorted(set(spk_split.speakers_train))
        spkval, search = speaker_validated(
            models[1],
            held_task.x_train,
            held_task.y_train,
            np.asarray(spk_split.speakers_train),
            others[0],
            net,
            epochs=cfg.heldout_epochs,
            seed=cfg.seed,
        )
        models.append(spkval)
        chosen = {"validation_speaker": others[0], "best": search.best, "grid": search.rows()}
        console.print(f"bnn-spkval: {search.best} (lowest NLL on speaker {others[0]}, {held} not used)")
    result = compare(task, models, net, seed=cfg.seed, after=after)
    for name in result.results:  # accuracy per speaker, from the saved test predictions
        hit = result.predictions[f"{name}_test"].mean(0).argmax(-1) == split.y_test
        per_speaker[name] = {s: float(hit[split.speakers_test == s].mean()) for s in speakers}
    clean = {
        n: {"accuracy": r["accuracy"], "entropy": r["entropy_in"], "mi": r["mi_in"]}
        for n, r in result.results.items()
    }
    console.print(
        results_table(
            result.results,
            rows=MAIN_ROWS,
            title=f"FSDD official split; noisy = test at {cfg.ood_snr:g} dB SNR; held-out speaker = {held}",
        )
    )
    spk_rows = tuple((s, s, ".3f") for s in speakers)
    console.print(
        results_table(per_speaker, rows=spk_rows, title="accuracy per speaker (official test split)")
    )
    snr_rows = []
    for snr in cfg.snrs:
        snr_rows += [
            (f"acc {snr:g}", f"{snr:g} dB: accuracy", ".3f"),
            (f"ent {snr:g}", f"{snr:g} dB: entropy", ".3f"),
        ]
    flat = {
        n: {
            **{f"acc {s}": v["accuracy"] for s, v in by.items()},
            **{f"ent {s}": v["entropy"] for s, v in by.items()},
        }
        for n, by in sweep.items()
    }
    console.print(results_table(flat, rows=snr_rows, title="SNR sweep (white noise on the test recordings)"))

    doc = {
        "task": "fsdd",
        "seed": cfg.seed,
        "config": asdict(cfg),
        "data": {
            "train": len(task.x_train),
            "test": len(task.x_test),
            "speakers": speakers,
            "split": "official (index 0-4 test)",
            "features": asdict(feat),
        },
        "ood": f"test recordings with white noise at {cfg.ood_snr:g} dB SNR",
        "held_out_speaker": {
            "speaker": held,
            "train": len(held_task.x_train),
            "validation": len(held_task.x_val),
            "test": len(held_task.x_test),
            "models": heldout,
        },
        "per_speaker_accuracy": per_speaker,
        "speaker_validated": chosen or None,
        "snr_sweep": {"clean": clean, "by_snr": sweep},
        "total_seconds": time.perf_counter() - t_start,
    }
    save(
        result,
        run_dir,
        doc=doc,
        inference=result.inference(num_samples=cfg.num_samples, seed=cfg.seed),
        console=console,
    )
    save_figure(_snr_plot(sweep, clean), run_dir / "snr_sweep.png")
    save_figure(_per_speaker_plot(per_speaker), run_dir / "per_speaker.png")
    console.print(
        f"run folder: [bold]{run_dir}[/] (metrics.json, history.json, predictions.npz, reliability.png, "
        f"snr_sweep.png, per_speaker.png, uncertainty.png, report.html); "
        f"{time.perf_counter() - t_start:.0f} s in all"
    )
    return run_dir


def _parser() -> argparse.ArgumentParser:
    d = SpeechConfig()
    p = argparse.ArgumentParser(
        prog="speech_digits.py",
        description="FSDD spoken digits: deterministic CNN vs Bayesian CNN (vs Bayesian CNN + LR modulator): "
        "calibration, per-speaker accuracy, a held-out speaker and an SNR sweep.",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder holding fsdd/recordings (default: $UNCERTLR_DATA, "
        "../shared/data beside the checkout, ~/.cache/uncertlr/data)",
    )
    p.add_argument(
        "--download", action="store_true", help="download FSDD first if missing (SHA-256 verified)"
    )
    p.add_argument(
        "--cache-dir", default=None, help="feature cache folder (default ~/.cache/uncertlr/features)"
    )
    p.add_argument("--out", default="runs", help="folder for run folders (default: runs)")
    p.add_argument("--quick", action="store_true", help="a subset and a few epochs: under a minute")
    p.add_argument("--model", choices=("cnn", "crnn"), default=d.model, help="network (default: cnn)")
    p.add_argument("--epochs", type=int, default=None, help=f"epochs of every model (default {d.epochs})")
    p.add_argument(
        "--kl-weight", type=float, default=None, help=f"KL weight of the BNN ELBO (default {d.kl_weight})"
    )
    p.add_argument(
        "--num-samples", type=int, default=None, help=f"posterior samples (default {d.num_samples})"
    )
    p.add_argument(
        "--held-out-speaker", default=None, help="speaker to hold out (default: last alphabetically)"
    )
    p.add_argument(
        "--speaker-validated",
        action="store_true",
        help="add bnn-spkval: the BNN with init σ, prior scale and KL weight chosen on a held-out training speaker",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return p


def main(argv: Sequence[str] | None = None) -> Path:
    """Command-line entry point; returns the run folder."""
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = SpeechConfig(
        seed=args.seed,
        model=args.model,
        held_out_speaker=args.held_out_speaker,
        speaker_validated=args.speaker_validated,
    )
    if args.quick:
        cfg = replace(cfg, **QUICK)
    if args.epochs is not None:
        cfg = replace(cfg, epochs=args.epochs, det_epochs=args.epochs)
    if args.kl_weight is not None:
        cfg = replace(cfg, kl_weight=args.kl_weight)
    if args.num_samples is not None:
        cfg = replace(cfg, num_samples=args.num_samples)
    return run(cfg, out=args.out, data_dir=args.data_dir, cache_dir=args.cache_dir, download=args.download)


if __name__ == "__main__":
    main(sys.argv[1:])
