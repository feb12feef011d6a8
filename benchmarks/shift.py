"""Uncertainty under distribution shift: every uncertlr method against the deterministic net.

Methods (``benchmarks/_shift_methods.py``): ``deterministic``, ``mc-dropout``, ``ensemble`` (5
deterministic nets), ``laplace`` (last-layer, on the deterministic net), ``bnn`` (mean-field),
``bnn-lowrank`` (rank 10), ``bnn-ensemble`` (3 BNNs), and each of them after temperature
scaling fitted on a validation split (``<method>+ts``; ``<method>+ts-soften``: the same fit restricted to
``T >= 1``, ``fit_temperature(..., bounds=(1.0, 20.0))``, which never sharpens). Conditions:

* ``digits-clean`` / ``digits-corrupt``: sklearn digits, 5 corruptions (noise, blur, rotation,
  shift, contrast) × 5 severities of the test set; ``digits-far-ood``: shuffled pixels;
  ``digits-near-ood``: trained on digits 0-4, detect 5-9;
* ``fsdd-clean`` / ``fsdd-corrupt``: FSDD official split, 4 corruptions of the test waveforms (white noise,
  time shift, pitch/tempo, reverberation) × 5 severities; ``fsdd-loso``: leave one speaker out, five folds;
  the benchmark's MLP on log-mels averaged over 4 frames (``fsdd-cnn-*`` with ``--tasks fsdd-cnn``: the same
  conditions with the speech example's ``SpeechCNN`` on the full 40 × 64 log-mels);
* ``diabetes-shift`` (trained on the lower 70% of BMI) and ``toy-extrapolation`` (regression).

Each model is trained once per seed (and fold) and scored on every corruption of its test
set. ``--json PATH`` writes ``{"summary": [{"condition", "method", "accuracy", "nll", "ece",
"auroc", ...}], "rows": [...], "goals": {...}}``; ``summary`` rows average over seeds,
severities and folds and carry the standard error over seeds (``*_se``).

Usage::

    python benchmarks/shift.py --quick                 # digits only, one seed (< 5 min on 2 idle cores)
    python benchmarks/shift.py --png docs/shift.png    # everything, 3 seeds
    python benchmarks/shift.py --tune --tasks fsdd     # choose the BNN's init σ, prior scale, KL weight
    python benchmarks/shift.py --tune-det              # choose the deterministic nets' weight decay
    python benchmarks/shift.py --tune-loso             # diagnostic: the BNN grid on FSDD's held-out speakers
    python benchmarks/shift.py --tasks fsdd --speaker-validated   # bnn-spkval: settings chosen on a held-out speaker
    python benchmarks/shift.py --tasks digits --corruption-validated  # bnn-cval: chosen on held-out corruption kinds
    python benchmarks/shift.py --cross-fit 5 --methods deterministic bnn  # in-distribution ECE on every input
    python benchmarks/shift.py --tasks fsdd-cnn --methods deterministic laplace bnn   # FSDD with a CNN
    python benchmarks/shift.py --tasks fsdd --methods deterministic --slope-folds 5   # + density-ts-cv rows
    python benchmarks/shift.py --quick --add-to runs/demo-20261205-002307   # into a demo run's report
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks import _shift_data as D  # noqa: E402
from benchmarks._common import base_parser, print_table, write_results  # noqa: E402
from benchmarks._shift_methods import (  # noqa: E402
    METHODS,
    Config,
    classification_scores,
    ood_scores,
    regression_scores,
    train_methods,
)
from benchmarks._shift_report import (  # noqa: E402
    add_to_run,
    by_corruption,
    check_can_add,
    goals,
    loso_goal,
    plot,
    severity_curves,
    summarise,
    task_of,
    write_run,
)
from uncertlr import metrics  # noqa: E402
from uncertlr._progress import progress_task  # noqa: E402
from uncertlr.calibration import NEVER_SHARPEN, fit_score_temperature, fit_temperature  # noqa: E402

# BNN init σ, prior scale, KL weight: best validation NLL of `--tune --quick` (digits; BENCHMARKS.md).
DIGITS = Config(
    hidden=(128, 128),
    det_epochs=60,
    det_lr=3e-3,
    det_weight_decay=1e-3,  # best validation NLL of `--tune-det` (BENCHMARKS.md)
    bnn_epochs=150,
    bnn_lr=1e-2,
    init_scale=1e-2,
)
# FSDD's BNN init σ, prior scale and KL weight: best validation NLL of `--tune --tasks fsdd` (third session)
FSDD = Config(
    hidden=(128, 128),
    det_epochs=20,
    det_lr=1e-3,
    bnn_epochs=30,
    bnn_lr=3e-3,
    init_scale=1e-3,
    kl_weight=1.0,
    time_pool=4,
)
# FSDD with the speech example's CNN (`uncertlr_models.SpeechCNN` on the 40 x 64 log-mels, no time pooling)
# and the example's held-out-speaker settings (examples/speech_digits.py: 15 epochs, Adam 3e-3, KL weight
# 0.1, init σ 1e-3) for every method: chosen for the example, never on these test sets
FSDD_CNN = Config(
    hidden=(),
    det_epochs=15,
    det_lr=3e-3,
    bnn_epochs=15,
    bnn_lr=3e-3,
    init_scale=1e-3,
    kl_weight=0.1,
)
REGRESSION = Config(
    hidden=(50, 50),
    activation="tanh",
    batch_size=32,
    det_epochs=300,
    det_lr=3e-3,
    bnn_epochs=600,
    bnn_lr=1e-2,
    kl_weight=1.0,
    num_samples=64,
)
VAL_FRACTION = 0.15
SOFTEN = NEVER_SHARPEN  # the +ts-soften variants' temperature bounds: never sharpen


def _mlp(in_features: int, cfg: Config, out: int) -> Callable[[], torch.nn.Module]:
    from uncertlr_models import MLP

    return lambda: MLP(in_features, cfg.hidden, out, activation=cfg.activation)


def _val_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(VAL_FRACTION * n))
    return perm[k:], perm[:k]


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _ece_floor(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The ECE a perfectly calibrated model with these confidences scores on this test set, and the p-value."""
    c = metrics.ece_consistency(probs, labels)
    return {"ece_floor": c.expected, "ece_p": c.p_value}


def _score_all(
    fitted: dict[str, Any],
    x_val: torch.Tensor,
    y_val: np.ndarray,
    sets: dict[tuple, tuple[torch.Tensor, np.ndarray]],
    base: dict[str, Any],
    ood: dict[tuple, tuple[tuple, torch.Tensor]] | None = None,
) -> list[dict[str, Any]]:
    """Rows for every method (and its ``+ts`` variant) on every evaluation set ``{key: (x, labels)}``.

    ``key`` is ``(condition, corruption, severity)``; ``ood`` maps a condition key to ``(in-distribution
    key, x_ood)``.
    """
    rows = []
    for name, f in fitted.items():
        p_val = f.predict(x_val).numpy()
        temp = fit_temperature(p_val, y_val)
        soft = fit_temperature(p_val, y_val, bounds=SOFTEN)
        preds: dict[tuple, np.ndarray] = {}
        for key, (x, _) in sets.items():
            t0 = time.perf_counter()
            preds[key] = f.predict(x).numpy()
            ms = 1000 * (time.perf_counter() - t0) / len(x) * 1000
        # each variant maps (predictions, inputs) to predictions
        variants: list[tuple[str, Callable[[np.ndarray, torch.Tensor], np.ndarray], float]] = [
            (name, lambda p, x: p, temp.value),  # (the temperature its +ts variant uses)
            (f"{name}+ts", lambda p, x: temp(p), temp.value),
            (f"{name}+ts-soften", lambda p, x: soft(p), soft.value),
        ]
        for key, score in f.temperature_scores().items():  # a temperature that grows with each of its scores
            s_val = score(x_val)
            fits = {f"{name}+{key}-ts": fit_score_temperature(p_val, y_val, s_val)}
            if key in f.score_slopes:  # its slope from cross-fitted nets, only the intercept from x_val
                fits[f"{name}+{key}-ts-cv"] = fit_score_temperature(
                    p_val, y_val, s_val, slope=f.score_slopes[key]
                )
            for variant, st in fits.items():
                variants.append((variant, lambda p, x, st=st, score=score: st(p, score(x)), math.exp(st.a)))
        for variant, tf, t_value in variants:
            for key, (x, y) in sets.items():
                cond, corr, sev = key
                p = tf(preds[key], x)
                rows.append(
                    {
                        **base,
                        "condition": cond,
                        "method": variant,
                        "corruption": corr,
                        "severity": sev,
                        **classification_scores(p, y),
                        **(_ece_floor(p, y) if cond.endswith("-clean") else {}),
                        "train_s": f.train_seconds,
                        "predict_ms_per_1000": ms,
                        "temperature": t_value,
                    }
                )
            for key, (in_key, x_out) in (ood or {}).items():
                p_out = tf(f.predict(x_out).numpy(), x_out)
                p_in = tf(preds[in_key], sets[in_key][0])
                rows.append(
                    {
                        **base,
                        "condition": key[0],
                        "method": variant,
                        "corruption": key[1],
                        "severity": 0,
                        **classification_scores(p_in, sets[in_key][1]),
                        **ood_scores(p_in, p_out),
                        "train_s": f.train_seconds,
                        "predict_ms_per_1000": ms,
                        "temperature": t_value,
                    }
                )
        for (
            score_name,
            score,
        ) in f.ood_scores.items():  # its own OOD scores (feature densities) beside entropy
            for key, (in_key, x_out) in (ood or {}).items():
                rows.append(
                    {
                        **base,
                        "condition": key[0],
                        "method": f"{name}+{score_name}",
                        "corruption": key[1],
                        "severity": 0,
                        **classification_scores(preds[in_key], sets[in_key][1]),
                        "auroc": float(metrics.ood_auroc(score(sets[in_key][0]), score(x_out))),
                        "train_s": f.train_seconds + f.ood_score_seconds,
                        "predict_ms_per_1000": ms,
                    }
                )
    return rows


# --------------------------------------------------------------------------- conditions


def _digits_split(seed: int) -> tuple[Any, torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """digits (the fixed train/test split), its training part less this seed's validation part, and that part."""
    from uncertlr.data import load_digits

    split = load_digits(seed=0)
    tr, va = _val_split(len(split.x_train), seed)
    return split, _t(split.x_train[tr]), _t(split.y_train[tr]), split.x_train[va], split.y_train[va]


def _digits_sets(split: Any, seed: int) -> tuple[dict[tuple, Any], dict[tuple, Any]]:
    """The digits evaluation sets of ``seed`` (clean, the 5 x 5 corrupted test sets) and the far-OOD set."""
    from uncertlr.data import shuffle_pixels

    rng = np.random.default_rng(10_000 + seed)
    sets = {("digits-clean", "none", 0): (_t(split.x_test), split.y_test)}
    for kind in D.DIGIT_LEVELS:
        for sev in D.SEVERITIES:
            sets[("digits-corrupt", kind, sev)] = (
                _t(D.corrupt_digits(split.x_test, kind, sev, rng)),
                split.y_test,
            )
    ood = {
        ("digits-far-ood", "shuffled-pixels"): (
            ("digits-clean", "none", 0),
            _t(shuffle_pixels(split.x_test, seed=seed)),
        )
    }
    return sets, ood


def _near_ood_rows(
    split: Any, seed: int, train: Callable[[torch.Tensor, torch.Tensor], dict[str, Any]]
) -> list[dict[str, Any]]:
    """``digits-near-ood`` rows: ``train(x, y)`` on digits 0-4 (less a validation part), detect 5-9."""
    idx = np.flatnonzero(split.y_train < 5)
    tr, va = _val_split(len(idx), seed)
    fitted = train(_t(split.x_train[idx[tr]]), _t(split.y_train[idx[tr]]))
    te_in, te_out = split.y_test < 5, split.y_test >= 5
    sets = {("digits-near-ood-in", "none", 0): (_t(split.x_test[te_in]), split.y_test[te_in])}
    ood = {("digits-near-ood", "digits-5-9"): (("digits-near-ood-in", "none", 0), _t(split.x_test[te_out]))}
    rows = _score_all(fitted, _t(split.x_train[idx[va]]), split.y_train[idx[va]], sets, {"seed": seed}, ood)
    return [r for r in rows if r["condition"] == "digits-near-ood"]


def digits_rows(seed: int, methods: Sequence[str], cfg: Config, advance: Any) -> list[dict[str, Any]]:
    split, x_tr, y_tr, x_val, y_val = _digits_split(seed)
    fitted = train_methods(tuple(methods), _mlp(64, cfg, 10), x_tr, y_tr, cfg, seed=seed, advance=advance)
    sets, ood = _digits_sets(split, seed)
    rows = _score_all(fitted, _t(x_val), y_val, sets, {"seed": seed}, ood)
    return rows + _near_ood_rows(
        split,
        seed,
        lambda x, y: train_methods(tuple(methods), _mlp(64, cfg, 5), x, y, cfg, seed=seed, advance=advance),
    )


def corruption_validated_rows(
    seed: int, cfg: Config, advance: Any, grid: Sequence[tuple[float, float, float]] | None = None
) -> list[dict[str, Any]]:
    """digits rows of ``bnn-cval``: the mean-field BNN whose init σ, prior scale and KL weight (``grid``,
    default :data:`BNN_GRID`) are chosen by the mean NLL on the seed's validation part corrupted with the
    *validation* corruptions (:data:`~benchmarks._shift_data.VALIDATION_DIGIT_LEVELS`, other kinds than the
    test corruptions, 5 severities each), as ImageNet-C's held-out corruptions are used; then scored like
    every other method (the chosen cell's model itself; near-OOD: the same settings trained on digits 0-4)."""
    split, x_tr, y_tr, x_val, y_val = _digits_split(seed)
    rng = np.random.default_rng(20_000 + seed)
    val_sets = [
        (_t(D.corrupt_digits(x_val, kind, sev, rng)), y_val)
        for kind in D.VALIDATION_DIGIT_LEVELS
        for sev in D.SEVERITIES
    ]
    best: tuple[float, Config, Any] | None = None  # (validation NLL, settings, model) of the best cell so far
    for init, prior, kl in BNN_GRID if grid is None else grid:
        c = replace(cfg, init_scale=init, prior_scale=prior, kl_weight=kl)
        f = train_methods(("bnn",), _mlp(64, c, 10), x_tr, y_tr, c, seed=seed)["bnn"]
        nll = float(np.mean([classification_scores(f.predict(x).numpy(), y)["nll"] for x, y in val_sets]))
        if best is None or nll < best[0]:
            best = (nll, c, f)
        advance()
    assert best is not None
    nll, chosen, fitted = best
    sets, ood = _digits_sets(split, seed)
    rows = _score_all({"bnn-cval": fitted}, _t(x_val), y_val, sets, {"seed": seed}, ood)
    rows += _near_ood_rows(
        split,
        seed,
        lambda x, y: {
            "bnn-cval": train_methods(("bnn",), _mlp(64, chosen, 5), x, y, chosen, seed=seed)["bnn"]
        },
    )
    advance()
    setting = {
        "init_scale": chosen.init_scale,
        "prior_scale": chosen.prior_scale,
        "kl_weight": chosen.kl_weight,
    }
    return [{**r, **setting, "validation_corrupt_nll": nll} for r in rows]


def _fsdd_features(data_dir: Path | None) -> tuple[Any, Any]:
    from uncertlr.data import LogMel, load_fsdd

    feat = LogMel(top_db=40.0)
    return load_fsdd(data_dir, features=feat), feat


def _fsdd_inputs(x: np.ndarray, cfg: Config) -> int:
    """The MLP's input size for log-mel features ``x[N, bands, frames]`` pooled ``cfg.time_pool`` frames at a time."""
    return x.shape[1] * (x.shape[2] // cfg.time_pool)


def _loso_folds(split: Any, data_dir: Path | None) -> Iterator[tuple[str, Any]]:
    """``(speaker, fold)`` for each of the official split's speakers in turn: the fold holds that speaker out."""
    from uncertlr.data import LogMel, load_fsdd

    for speaker in sorted(set(split.speakers_train)):
        yield (
            speaker,
            load_fsdd(data_dir, features=LogMel(top_db=40.0), split="speaker", test_speakers=[speaker]),
        )


def _standardiser(train: np.ndarray, pool: int = 1) -> Callable[[np.ndarray], torch.Tensor]:
    """Per-band standardisation on the training features, then the mean over ``pool`` frames."""
    mu = train.mean(axis=(0, 2), keepdims=True)
    sd = train.std(axis=(0, 2), keepdims=True) + 1e-6

    def f(a: np.ndarray) -> torch.Tensor:
        z = (a - mu) / sd
        z = z.reshape(*z.shape[:2], z.shape[2] // pool, pool).mean(-1)
        return torch.from_numpy(z.astype(np.float32))

    return f


def fsdd_corrupted(split: Any, feat: Any, cache: Path) -> dict[tuple[str, int], np.ndarray]:
    """Features of every corruption × severity of the official test split (computed once, cached in ``cache``)."""
    from uncertlr.data import read_recordings

    out = {}
    waves = None
    for kind in D.AUDIO_LEVELS:
        for sev in D.SEVERITIES:
            path = cache / f"fsdd-{kind}-{sev}-{feat.cache_key()[:12]}.npy"
            if path.is_file():
                out[(kind, sev)] = np.load(path)
                continue
            waves = waves if waves is not None else read_recordings(split.test)
            rng = np.random.default_rng([sev, *map(ord, kind)])
            cw = [D.corrupt_wave(w, kind, sev, rng, feat.num_samples) for w in waves]
            out[(kind, sev)] = np.ascontiguousarray(
                feat(cw).numpy(), dtype=np.float32
            )  # as np.load returns it
            cache.mkdir(parents=True, exist_ok=True)
            np.save(path, out[(kind, sev)])
    return out


def _fsdd_net(kind: str, x: np.ndarray, cfg: Config) -> Callable[[], torch.nn.Module]:
    """The network factory of ``--tasks fsdd`` (``"mlp"``) or ``fsdd-cnn`` (``"cnn"``) for features ``x``."""
    if kind == "cnn":
        from uncertlr_models import SpeechCNN

        return lambda: SpeechCNN(x.shape[1], 10)
    return _mlp(_fsdd_inputs(x, cfg), cfg, 10)


def fsdd_rows(
    seed: int,
    methods: Sequence[str],
    cfg: Config,
    advance: Any,
    data_dir: Path | None,
    cache: Path,
    net: str = "mlp",
) -> list[dict[str, Any]]:
    """Rows of ``fsdd-{clean,corrupt,loso}`` (``net="mlp"``) or ``fsdd-cnn-{clean,corrupt,loso}`` (``"cnn"``)."""
    split, feat = _fsdd_features(data_dir)
    corrupted = fsdd_corrupted(split, feat, cache)
    make = _fsdd_net(net, split.x_train, cfg)
    task = "fsdd" if net == "mlp" else f"fsdd-{net}"

    def fit_and_score(data: Any, sets: Callable[[Callable], dict]) -> list[dict[str, Any]]:
        """Train every method on ``data``'s training split (less a validation part) and score ``sets(std)``."""
        std = _standardiser(data.x_train, cfg.time_pool)
        tr, va = _val_split(len(data.x_train), seed)
        fitted = train_methods(
            tuple(methods), make, std(data.x_train[tr]), _t(data.y_train[tr]), cfg,
            seed=seed, advance=advance,
        )  # fmt: skip
        return _score_all(fitted, std(data.x_train[va]), data.y_train[va], sets(std), {"seed": seed})

    rows = fit_and_score(
        split,
        lambda std: (
            {(f"{task}-clean", "none", 0): (std(split.x_test), split.y_test)}
            | {(f"{task}-corrupt", kind, sev): (std(x), split.y_test) for (kind, sev), x in corrupted.items()}
        ),
    )
    for speaker, fold in _loso_folds(split, data_dir):
        scored = fit_and_score(
            fold, lambda std: {(f"{task}-loso", speaker, 0): (std(fold.x_test), fold.y_test)}
        )  # noqa: B023
        rows += [{**r, "fold": speaker} for r in scored]
    return rows


def cross_fit_rows(
    condition: str,
    x: np.ndarray,
    y: np.ndarray,
    net: Callable[[], torch.nn.Module],
    seed: int,
    methods: Sequence[str],
    cfg: Config,
    folds: int,
    advance: Any,
    standardise: Callable[[np.ndarray], Callable[[np.ndarray], torch.Tensor]] | None = None,
) -> list[dict[str, Any]]:
    """``condition`` rows scored on every input of ``(x, y)`` once: ``folds``-fold cross-fitting.

    For each fold, every method (and its ``+ts`` and ``+ts-soften`` variants, the temperature fitted on a
    validation part of the other folds) is trained on the other folds and predicts the fold; ``+ts-pooled`` fits one temperature
    per method on all folds' validation parts together (each predicted by its own fold's model); the scores are computed on the pooled
    predictions, so the ECE is measured on the whole data set instead of one test split (its floor,
    ``ece_floor``, falls as ``sqrt(bins / N)``). ``standardise(train)`` maps features to inputs (default: as is).
    """
    fold_of = np.random.default_rng(30_000 + seed).permutation(len(x)) % folds
    pooled: dict[str, list[np.ndarray]] = {}
    temps: dict[str, list[float]] = {}  # each fold's fitted temperature, per variant
    val_preds: dict[str, tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]] = {}
    order = []
    for k in range(folds):
        test, rest = np.flatnonzero(fold_of == k), np.flatnonzero(fold_of != k)
        tr, va = _val_split(len(rest), seed)
        prep = standardise(x[rest[tr]]) if standardise else _t
        fitted = train_methods(
            tuple(methods), net, prep(x[rest[tr]]), _t(y[rest[tr]]), cfg, seed=seed, advance=advance
        )
        for name, f in fitted.items():
            p_val = f.predict(prep(x[rest[va]])).numpy()
            temp = fit_temperature(p_val, y[rest[va]])
            soft = fit_temperature(p_val, y[rest[va]], bounds=SOFTEN)
            p = f.predict(prep(x[test])).numpy()
            pooled.setdefault(name, []).append(np.asarray(metrics.mean_probs(p)))
            pooled.setdefault(f"{name}+ts", []).append(np.asarray(metrics.mean_probs(temp(p))))
            pooled.setdefault(f"{name}+ts-soften", []).append(np.asarray(metrics.mean_probs(soft(p))))
            temps.setdefault(f"{name}+ts", []).append(temp.value)
            temps.setdefault(f"{name}+ts-soften", []).append(soft.value)
            vals, val_labels, tests = val_preds.setdefault(name, ([], [], []))
            vals.append(p_val)
            val_labels.append(y[rest[va]])
            tests.append(p)
        order.append(test)
    # "+ts-pooled": one temperature for the training recipe, fitted on every fold's validation part at once
    # (each scored by the fold's own model, which never trained on it; the test folds are not used)
    for name, (vals, val_labels, tests) in val_preds.items():
        temp = fit_temperature(np.concatenate(vals, axis=1), np.concatenate(val_labels))
        pooled[f"{name}+ts-pooled"] = [np.asarray(metrics.mean_probs(temp(p))) for p in tests]
        temps[f"{name}+ts-pooled"] = [temp.value]
    labels = y[np.concatenate(order)]
    return [
        {
            "seed": seed,
            "condition": condition,
            "method": variant,
            "corruption": "none",
            "severity": 0,
            **classification_scores(np.concatenate(parts), labels),
            **_ece_floor(np.concatenate(parts), labels),
            **({"temperatures": temps[variant]} if variant in temps else {}),
        }
        for variant, parts in pooled.items()
    ]


CROSS_FIT_TASKS = ("digits", "fsdd", "fsdd-cnn")  # the tasks --cross-fit scores on every input


def cross_fit_task_rows(
    task: str, seed: int, methods: Sequence[str], folds: int, advance: Any, data_dir: Path | None
) -> list[dict[str, Any]]:
    """``{task}-clean-cv``: the clean condition cross-fitted over the whole data set (digits: all 1,797
    images; FSDD, with the MLP or the CNN: every recording of the official split's speakers)."""
    if task == "digits":
        from uncertlr.data import load_digits

        split = load_digits(seed=0)
        x, y = np.concatenate([split.x_train, split.x_test]), np.concatenate([split.y_train, split.y_test])
        return cross_fit_rows(
            "digits-clean-cv", x, y, _mlp(64, DIGITS, 10), seed, methods, DIGITS, folds, advance
        )
    split, _ = _fsdd_features(data_dir)
    x, y = np.concatenate([split.x_train, split.x_test]), np.concatenate([split.y_train, split.y_test])
    cfg, net = (FSDD_CNN, "cnn") if task == "fsdd-cnn" else (FSDD, "mlp")
    return cross_fit_rows(
        f"{task}-clean-cv", x, y, _fsdd_net(net, split.x_train, cfg), seed, methods, cfg, folds,
        advance, standardise=lambda train: _standardiser(train, cfg.time_pool),
    )  # fmt: skip


BNN_GRID = [(i, p, k) for i in (1e-3, 1e-2, 3e-2) for p in (0.3, 1.0) for k in (0.1, 0.3, 1.0)]
GRID_COLUMNS = [("init_scale", "init σ", "g"), ("prior_scale", "prior", "g"), ("kl_weight", "KL w", "g")]


def speaker_validated_rows(
    seed: int,
    cfg: Config,
    advance: Any,
    data_dir: Path | None,
    grid: Sequence[tuple[float, float, float]] | None = None,
) -> list[dict[str, Any]]:
    """``fsdd-loso`` rows of ``bnn-spkval``, the mean-field BNN whose init σ, prior scale and KL weight
    (``grid``, default :data:`BNN_GRID`) are chosen, in each leave-one-speaker-out fold, on a *held-out
    training speaker* (the next one after the test speaker, alphabetically) instead of on recordings of the
    training speakers themselves (:func:`uncertlr.model_selection.held_out_group_search`); then trained like
    ``bnn`` on the fold's training part and scored on the test speaker (the test speaker never takes part in
    the choice); and of ``bnn-ensemble-spkval``, ``cfg.bnn_ensemble_size`` such BNNs (``bnn-ensemble`` with the
    chosen settings)."""
    from uncertlr.model_selection import held_out_group_search

    split, _ = _fsdd_features(data_dir)
    speakers = sorted(set(split.speakers_train))
    rows = []
    for k, (speaker, fold) in enumerate(_loso_folds(split, data_dir)):
        n_in = _fsdd_inputs(fold.x_train, cfg)
        held = speakers[(k + 1) % len(speakers)]
        groups = np.asarray(fold.speakers_train)
        std = _standardiser(fold.x_train[groups != held], cfg.time_pool)

        class Candidate:  # the benchmark's own training of one grid cell, behind build/train/predict
            def __init__(self, init_scale: float, prior_scale: float, kl_weight: float) -> None:
                self.cfg = replace(cfg, init_scale=init_scale, prior_scale=prior_scale, kl_weight=kl_weight)

            def train(self, x: torch.Tensor, y: torch.Tensor) -> None:
                self.fitted = train_methods(("bnn",), _mlp(n_in, self.cfg, 10), x, y, self.cfg, seed=seed)[
                    "bnn"
                ]  # noqa: B023
                advance()  # noqa: B023

            def predict(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
                return self.fitted.predict(x)

        search = held_out_group_search(
            Candidate,
            [{"init_scale": i, "prior_scale": p, "kl_weight": w} for i, p, w in grid or BNN_GRID],
            Candidate.train,
            std(fold.x_train),
            _t(fold.y_train),
            groups,
            held_out=[held],
            num_samples=cfg.num_samples,
            progress=False,
        )
        init, prior, kl = (search.best[name] for name in ("init_scale", "prior_scale", "kl_weight"))
        chosen = replace(cfg, init_scale=init, prior_scale=prior, kl_weight=kl)
        std = _standardiser(fold.x_train, cfg.time_pool)  # as the other methods' LOSO rows
        tr, va = _val_split(len(fold.x_train), seed)
        scored = []
        for method, name in (("bnn", "bnn-spkval"), ("bnn-ensemble", "bnn-ensemble-spkval")):
            fitted = train_methods(
                (method,),
                _mlp(n_in, chosen, 10),
                std(fold.x_train[tr]),
                _t(fold.y_train[tr]),
                chosen,
                seed=seed,
            )  # one at a time, each scored before the next trains: bnn-spkval's rows do not depend on the ensemble
            scored += _score_all(
                {name: fitted[method]},
                std(fold.x_train[va]),
                fold.y_train[va],
                {("fsdd-loso", speaker, 0): (std(fold.x_test), fold.y_test)},
                {"seed": seed},
            )
        rows += [
            {
                **r,
                "fold": speaker,
                "validation_speaker": held,
                "init_scale": init,
                "prior_scale": prior,
                "kl_weight": kl,
            }
            for r in scored
        ]
        advance()
    return rows


def regression_rows(seed: int, methods: Sequence[str], cfg: Config, advance: Any) -> list[dict[str, Any]]:
    rows = []
    for cond, make in D.REGRESSION.items():
        d = make(seed)
        fitted = train_methods(
            tuple(m for m in methods if m != "bnn-ensemble"),
            _mlp(d.x_train.shape[1], cfg, 1),
            _t(d.x_train),
            _t(d.y_train),
            cfg,
            seed=seed,
            regression=True,
            advance=advance,
        )
        for name, f in fitted.items():
            t0 = time.perf_counter()
            pred = f.predict(_t(d.x_test))
            ms = 1000 * (time.perf_counter() - t0) / len(d.x_test) * 1000
            rows.append(
                {
                    "seed": seed,
                    "condition": cond,
                    "method": name,
                    "corruption": "none",
                    "severity": 0,
                    **regression_scores(pred, d.y_test, d.y_loc, d.y_scale),
                    "train_s": f.train_seconds,
                    "predict_ms_per_1000": ms,
                }
            )
    return rows


# --------------------------------------------------------------------------- tuning


def _validation_splits(tasks: Sequence[str], data_dir: Path | None, seeds: Sequence[int]) -> list[tuple]:
    """``(task, config, seed, make, x, y, x_val, y_val)`` for digits and/or the FSDD official split (MLP or
    CNN): each seed's training data less its 15% validation part (standardised as the benchmark does);
    ``make(cfg)`` is the network factory."""
    from uncertlr.data import load_digits

    sources: list[tuple[str, Config, Callable, np.ndarray, np.ndarray, Callable]] = []
    if "digits" in tasks:
        split = load_digits(seed=0)
        sources.append(("digits", DIGITS, lambda c: _mlp(64, c, 10), split.x_train, split.y_train, _t))
    for task, cfg, net in (("fsdd", FSDD, "mlp"), ("fsdd-cnn", FSDD_CNN, "cnn")):
        if task in tasks:
            fs, _ = _fsdd_features(data_dir)
            std = _standardiser(fs.x_train, cfg.time_pool)
            make = lambda c, net=net, x=fs.x_train: _fsdd_net(net, x, c)  # noqa: E731
            sources.append((task, cfg, make, fs.x_train, fs.y_train, std))
    out = []
    for task, cfg, make, x, y, prep in sources:
        for seed in seeds:
            tr, va = _val_split(len(x), seed)
            out.append((task, cfg, seed, make, prep(x[tr]), _t(y[tr]), prep(x[va]), y[va]))
    return out


def tune(tasks: Sequence[str], data_dir: Path | None) -> list[dict[str, Any]]:
    """Validation NLL (seed 0, clean held-out training data) of the BNN over a grid of its three defaults,
    on digits and/or the FSDD official split."""
    splits = _validation_splits(tasks, data_dir, [0])
    rows = []
    with progress_task(True, "tuning", len(BNN_GRID) * len(splits)) as advance:
        for task, cfg, _, make, x, y, xv, yv in splits:
            for init, prior, kl in BNN_GRID:
                c = replace(cfg, init_scale=init, prior_scale=prior, kl_weight=kl)
                f = train_methods(("bnn",), make(c), x, y, c, seed=0)["bnn"]
                rows.append(
                    {
                        "task": task,
                        "init_scale": init,
                        "prior_scale": prior,
                        "kl_weight": kl,
                        **classification_scores(f.predict(xv).numpy(), yv),
                        "train_s": f.train_seconds,
                    }
                )
                advance()
    return rows


def tune_det(seeds: Sequence[int], tasks: Sequence[str], data_dir: Path | None) -> list[dict[str, Any]]:
    """Validation NLL (clean held-out training data) of the deterministic net and of last-layer Laplace
    on it, over the deterministic nets' weight decay; digits and/or the FSDD official split (MLP or CNN)."""
    grid = (0.0, 1e-3, 3e-3, 1e-2)
    splits = _validation_splits(tasks, data_dir, seeds)
    rows = []
    with progress_task(True, "tuning weight decay", len(grid) * len(splits)) as advance:
        for task, cfg, seed, make, x, y, xv, yv in splits:
            for wd in grid:
                c = replace(cfg, det_weight_decay=wd)
                fitted = train_methods(("deterministic", "laplace"), make(c), x, y, c, seed=seed)
                for name, f in fitted.items():
                    scores = classification_scores(f.predict(xv).numpy(), yv)
                    rows.append({"task": task, "method": name, "weight_decay": wd, "seed": seed, **scores})
                advance()
    return rows


def tune_loso(data_dir: Path | None, seed: int = 0) -> list[dict[str, Any]]:
    """An oracle diagnostic, not a way to choose settings: the BNN grid of :func:`tune` scored on the
    leave-one-speaker-out *test* folds (and the deterministic net on the same folds), to see whether any
    of the grid's settings makes the mean-field BNN hold up on an unseen speaker at all."""
    split, _ = _fsdd_features(data_dir)
    n_folds = len(set(split.speakers_train))
    rows = []
    with progress_task(True, "grid on held-out speakers", (len(BNN_GRID) + 1) * n_folds) as advance:
        for speaker, fold in _loso_folds(split, data_dir):
            std = _standardiser(fold.x_train, FSDD.time_pool)
            tr, _ = _val_split(len(fold.x_train), seed)  # the benchmark's LOSO rows train on this part
            n_in = _fsdd_inputs(fold.x_train, FSDD)
            x, y, xt = std(fold.x_train[tr]), _t(fold.y_train[tr]), std(fold.x_test)
            cells = [("deterministic", None)] + [("bnn", c) for c in BNN_GRID]
            for method, cell in cells:
                c = (
                    FSDD
                    if cell is None
                    else replace(FSDD, init_scale=cell[0], prior_scale=cell[1], kl_weight=cell[2])
                )
                f = train_methods((method,), _mlp(n_in, c, 10), x, y, c, seed=seed)[method]
                rows.append(
                    {
                        "fold": speaker,
                        "method": method,
                        "init_scale": None if cell is None else cell[0],
                        "prior_scale": None if cell is None else cell[1],
                        "kl_weight": None if cell is None else cell[2],
                        "seed": seed,
                        **classification_scores(f.predict(xt).numpy(), fold.y_test),
                    }
                )
                advance()
    return rows


def loso_grid_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`tune_loso`'s rows as one row per grid cell (means over the folds, and on how many folds its NLL
    is below the deterministic net's), then the deterministic net's row."""
    det = {r["fold"]: r for r in rows if r["method"] == "deterministic"}
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r["method"] == "bnn":
            cells.setdefault((r["init_scale"], r["prior_scale"], r["kl_weight"]), []).append(r)
    summary = [
        {
            "init_scale": k[0],
            "prior_scale": k[1],
            "kl_weight": k[2],
            "nll": float(np.mean([r["nll"] for r in v])),
            "ece": float(np.mean([r["ece"] for r in v])),
            "accuracy": float(np.mean([r["accuracy"] for r in v])),
            "folds_nll_below_det": sum(r["nll"] < det[r["fold"]]["nll"] for r in v),
        }
        for k, v in cells.items()
    ]
    summary.append(
        {
            "init_scale": None,
            "prior_scale": None,
            "kl_weight": None,
            **{k: float(np.mean([r[k] for r in det.values()])) for k in ("nll", "ece", "accuracy")},
            "folds_nll_below_det": None,
        }
    )
    return summary


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument(
        "--tasks",
        nargs="+",
        default=["digits", "fsdd", "regression"],
        choices=["digits", "fsdd", "fsdd-cnn", "regression"],
        help="fsdd-cnn: the FSDD conditions with the speech example's CNN instead of the MLP (not in the default)",
    )
    p.add_argument("--png", type=Path, default=None, help="write the ECE/NLL-vs-severity figure here")
    p.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="also write a new run folder (metrics, shift.json, report) inside this folder",
    )
    p.add_argument(
        "--add-to",
        type=Path,
        default=None,
        metavar="RUN",
        help="add the results (shift.json) to an existing run folder, e.g. `uncertlr demo`'s, and rebuild its "
        "report; refused before any training when RUN is not a run folder or already holds shift.json",
    )
    p.add_argument(
        "--rows",
        type=Path,
        nargs="+",
        default=None,
        help="summarise the rows of earlier --json files instead of training (e.g. tasks run in parallel)",
    )
    p.add_argument(
        "--tune", action="store_true", help="grid over the BNN's init σ, prior scale and KL weight"
    )
    p.add_argument(
        "--speaker-validated",
        action="store_true",
        help="FSDD leave-one-speaker-out rows of bnn-spkval: BNN settings chosen on a held-out training speaker",
    )
    p.add_argument(
        "--corruption-validated",
        action="store_true",
        help="digits rows of bnn-cval: BNN settings chosen on held-out (validation) corruption kinds",
    )
    p.add_argument(
        "--tune-loso",
        action="store_true",
        help="oracle diagnostic: the BNN grid scored on FSDD's held-out speakers (not for choosing settings)",
    )
    p.add_argument(
        "--tune-det",
        action="store_true",
        help="grid over the deterministic nets' weight decay (--tasks digits/fsdd; validation NLL over --seeds)",
    )
    p.add_argument(
        "--cache", type=Path, default=Path("/tmp/uncertlr-shift-cache"), help="corrupted FSDD features"
    )
    p.add_argument(
        "--cross-fit",
        type=int,
        default=0,
        metavar="K",
        help="only the clean condition, cross-fitted over K folds of the whole data set ({task}-clean-cv; "
        "--tasks digits, fsdd, fsdd-cnn)",
    )
    p.add_argument(
        "--slope-folds",
        type=int,
        default=0,
        metavar="K",
        help="also deterministic+density-ts-cv: the density temperature's slope from K cross-fitted nets "
        "(K more trainings per model)",
    )
    args = p.parse_args(argv)
    if args.add_to is not None:
        try:  # now, not after an hour of training
            check_can_add(args.add_to)
        except (OSError, ValueError) as exc:
            p.error(f"--add-to: {exc}")
    digits_cfg, fsdd_cfg, cnn_cfg = (
        replace(c, slope_folds=args.slope_folds) for c in (DIGITS, FSDD, FSDD_CNN)
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.seeds, args.tasks = args.seeds[:1], ["digits"]
    t_start = time.perf_counter()
    if args.tune_loso:
        rows = tune_loso(args.data_dir, args.seeds[0])
        summary = loso_grid_summary(rows)
        print_table(
            "BNN grid on FSDD's held-out speakers (an oracle: mean over the 5 folds; last row: deterministic)",
            summary,
            GRID_COLUMNS
            + [
                ("nll", "NLL", ".3f"),
                ("ece", "ECE", ".3f"),
                ("accuracy", "acc", ".3f"),
                ("folds_nll_below_det", "folds NLL < det", "d"),
            ],
        )
        write_results("shift_tune_loso", rows, args.json, summary=summary)
        return 0
    if args.tune_det:
        rows = tune_det(args.seeds, args.tasks, args.data_dir)
        summary = summarise(rows, ("task", "method", "weight_decay"))
        print_table(
            "deterministic net and last-layer Laplace: validation scores (mean over seeds)",
            summary,
            [("task", "task", "s"), ("method", "method", "s"), ("weight_decay", "weight decay", "g")]
            + [(k, k, ".4f") for k in ("nll", "ece", "accuracy")],
        )
        write_results("shift_tune_det", rows, args.json, summary=summary)
        return 0
    if args.tune:
        rows = tune(args.tasks, args.data_dir)
        print_table(
            "BNN validation NLL",
            rows,
            [("task", "task", "s")]
            + GRID_COLUMNS
            + [
                ("nll", "val NLL", ".4f"),
                ("ece", "val ECE", ".4f"),
                ("accuracy", "val acc", ".4f"),
            ],
        )
        best = {
            t: min((r for r in rows if r["task"] == t), key=lambda r: r["nll"])
            for t in {r["task"] for r in rows}
        }
        write_results("shift_tune", rows, args.json, best=best)
        return 0
    rows: list[dict[str, Any]] = []
    if args.rows:
        for path in args.rows:
            doc = json.loads(path.read_text())
            rows += doc["rows"]
            args.seeds = sorted(set(args.seeds) | set(doc.get("seeds", [])))
    n_models = len(args.methods)
    per_seed = {
        "digits": len(BNN_GRID) + 1 if args.corruption_validated else 2 * n_models,
        "fsdd": 5 * (len(BNN_GRID) + 1) if args.speaker_validated else 6 * n_models,
        "fsdd-cnn": 6 * n_models,
        "regression": 2 * (n_models - ("bnn-ensemble" in args.methods)),
    }
    # --slope-folds K: every deterministic fit also trains K cross-fitted nets (one progress tick each)
    if args.slope_folds and "deterministic" in args.methods:
        per_seed["digits"] += 0 if args.corruption_validated else 2 * args.slope_folds
        per_seed["fsdd"] += 0 if args.speaker_validated else 6 * args.slope_folds
        per_seed["fsdd-cnn"] += 6 * args.slope_folds
    total = sum(per_seed[t] for t in args.tasks) * len(args.seeds)
    if args.cross_fit:
        total = args.cross_fit * n_models * len(args.seeds) * len(set(CROSS_FIT_TASKS) & set(args.tasks))
    with progress_task(not args.rows, "shift benchmark", 0 if args.rows else total) as advance:
        for seed in [] if args.rows else args.seeds:
            if args.cross_fit:
                for task in [t for t in args.tasks if t in CROSS_FIT_TASKS]:
                    rows += cross_fit_task_rows(
                        task, seed, args.methods, args.cross_fit, advance, args.data_dir
                    )
                continue
            if "digits" in args.tasks and args.corruption_validated:
                rows += corruption_validated_rows(seed, DIGITS, advance)
            elif "digits" in args.tasks:
                rows += digits_rows(seed, args.methods, digits_cfg, advance)
            if "fsdd" in args.tasks and args.speaker_validated:
                rows += speaker_validated_rows(seed, FSDD, advance, args.data_dir)
            elif "fsdd" in args.tasks:
                rows += fsdd_rows(seed, args.methods, fsdd_cfg, advance, args.data_dir, args.cache)
            if "fsdd-cnn" in args.tasks:
                rows += fsdd_rows(seed, args.methods, cnn_cfg, advance, args.data_dir, args.cache, net="cnn")
            if "regression" in args.tasks:
                rows += regression_rows(seed, args.methods, REGRESSION, advance)
    summary = summarise(rows)
    folds = summarise([r for r in rows if r["condition"] == "fsdd-loso"], ("fold", "method"))
    g = goals(summary, folds)
    cnn_folds = summarise([r for r in rows if r["condition"] == "fsdd-cnn-loso"], ("fold", "method"))
    if cnn_folds:
        g["loso_cnn"] = loso_goal(cnn_folds)
    cols = [("condition", "condition", "s"), ("method", "method", "s")]
    print_table(
        "shift benchmark: classification (mean over seeds, severities, folds)",
        [r for r in summary if r.get("accuracy") is not None],
        cols + [(k, k, ".3f") for k in ("accuracy", "nll", "ece", "aurc", "auroc", "auroc_mi")],
    )
    corrupt = by_corruption(rows)
    for cond in dict.fromkeys(r["condition"] for r in corrupt):
        kinds = list(dict.fromkeys(r["corruption"] for r in rows if r["condition"] == cond))
        print_table(
            f"{cond}: ECE per corruption type (mean over severities and seeds)",
            [r for r in corrupt if r["condition"] == cond],
            [("method", "method", "s")] + [(k, k, ".3f") for k in kinds],
        )
    print_table(
        "shift benchmark: regression",
        [r for r in summary if r.get("rmse") is not None],
        cols + [(k, k, ".3f") for k in ("nll", "rmse", "coverage_90")],
    )
    print_table(
        "cost per method (seconds to train one model, ms to predict 1,000 inputs)",
        summarise([{**r, "task": task_of(r["condition"])} for r in rows], ("task", "method")),
        [
            ("task", "task", "s"),
            ("method", "method", "s"),
            ("train_s", "train s", ".1f"),
            ("predict_ms_per_1000", "ms / 1k", ".1f"),
        ],
    )
    for k, v in g.items():
        print(f"goal {k}: {v}")
    if args.png:
        plot(rows, args.png)
    if args.run_dir:
        write_run(args.run_dir, summary, severity_curves(rows), args.seeds)
    if args.add_to:
        add_to_run(args.add_to, summary, severity_curves(rows))
    configs = {
        "digits": asdict(digits_cfg),
        "fsdd": asdict(fsdd_cfg),
        "fsdd-cnn": asdict(cnn_cfg),
        "regression": asdict(REGRESSION),
    }
    write_results(
        "shift",
        rows,
        args.json,
        summary=summary,
        by_corruption=corrupt,
        folds=folds,
        cnn_folds=cnn_folds,
        goals=g,
        curves=severity_curves(rows),
        configs=configs,
        seeds=args.seeds,
        wall_seconds=time.perf_counter() - t_start,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
