"""benchmarks/shift.py: AURC, the corruptions, the summary's JSON contract and the goal checks on hand-made rows."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _shift_data as D  # noqa: E402
from benchmarks._shift_methods import aurc, classification_scores  # noqa: E402
from benchmarks._shift_report import by_corruption, goals, severity_curves, summarise  # noqa: E402


def _aurc_brute(probs, labels):
    """Risk at every coverage k/N by explicit selection of the k most confident inputs."""
    pbar = probs.mean(0)
    conf, pred = pbar.max(-1), pbar.argmax(-1)
    order = sorted(range(len(labels)), key=lambda i: (-conf[i], i))
    risks = [np.mean([pred[i] != labels[i] for i in order[:k]]) for k in range(1, len(labels) + 1)]
    return float(np.mean(risks))


@settings(max_examples=40)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 40), s=st.integers(1, 4))
def test_aurc_matches_a_brute_force_selection(seed, n, s):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(3), size=(s, n))
    labels = rng.integers(0, 3, n)
    assert aurc(probs, labels) == pytest.approx(_aurc_brute(probs, labels), abs=1e-12)
    assert 0.0 <= aurc(probs, labels) <= 1.0
    # the mean prediction [N, C] (the cross-fitted rows score pooled means) scores the same
    assert aurc(probs.mean(0), labels) == pytest.approx(aurc(probs, labels), abs=1e-12)


def test_aurc_rewards_confidence_ranking():
    labels = np.array([0, 0, 1, 1])
    good = np.array(
        [[[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.1, 0.9]]]
    )  # the one error is the least confident
    bad = np.array([[[0.9, 0.1], [0.8, 0.2], [0.99, 0.01], [0.1, 0.9]]])  # the error is the most confident
    assert aurc(good, labels) < aurc(bad, labels)
    assert classification_scores(good, labels)["accuracy"] == 0.75


@pytest.mark.parametrize("kind", sorted(D.DIGIT_LEVELS) + sorted(D.VALIDATION_DIGIT_LEVELS))
def test_digit_corruptions_keep_shape_and_range_and_grow_with_severity(kind):
    from uncertlr.data import load_digits

    x = load_digits(seed=0).x_test[:100]
    diffs = []
    for sev in D.SEVERITIES:
        out = D.corrupt_digits(x, kind, sev, np.random.default_rng(0))
        assert out.shape == x.shape and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
        diffs.append(float(np.abs(out - x).mean()))
    assert diffs[-1] > diffs[0] > 0


def test_validation_corruptions_are_other_kinds_than_the_test_ones():
    assert not set(D.VALIDATION_DIGIT_LEVELS) & set(D.DIGIT_LEVELS)
    with pytest.raises(ValueError, match="unknown digits corruption 'fog'"):
        D.corrupt_digits(np.zeros((1, 64), np.float32), "fog", 1, np.random.default_rng(0))


@pytest.mark.parametrize("kind", sorted(D.AUDIO_LEVELS))
def test_audio_corruptions_fix_the_length_and_grow_with_severity(kind):
    t = np.arange(6000) / 8000
    w = (np.sin(2 * np.pi * 440 * t) * np.hanning(6000)).astype(np.float32)
    clean = D.fix_length(w.astype(np.float64), 8064)
    diffs = []
    for sev in D.SEVERITIES:
        out = D.corrupt_wave(w, kind, sev, np.random.default_rng(1), 8064)
        assert out.shape == (8064,) and out.dtype == np.float32 and np.isfinite(out).all()
        diffs.append(float(np.abs(out - clean).mean()))
    assert diffs[-1] > diffs[0] > 0


def test_time_shift_moves_the_window():
    w = np.zeros(800, np.float32)
    w[400] = 1.0
    out = D.corrupt_wave(w, "time-shift", 1, np.random.default_rng(0), 1600)
    assert abs(int(np.argmax(np.abs(out))) - 800) == 400  # 0.05 s at 8 kHz


def test_regression_shifts():
    d = D.diabetes_shift(0)
    assert len(d.x_test) == 442 - int(0.7 * 442) and d.x_train.shape[1] == 10
    assert d.x_test[:, 2].min() >= d.x_train[:, 2].max() - 1e-6  # tested above the training BMI range
    t = D.toy_extrapolation(0)
    outside = (t.x_test > t.x_train.max()) | (t.x_test < t.x_train.min())
    assert outside.all()  # extrapolation only


def _rows():
    rows = []
    for seed, noise in ((0, 0.0), (1, 0.02)):
        for method, ece, nll in (("deterministic", 0.20, 1.0), ("bnn", 0.08, 0.7), ("bnn+ts", 0.005, 0.6)):
            for sev in (1, 2):
                rows.append(
                    {
                        "seed": seed,
                        "condition": "digits-corrupt",
                        "method": method,
                        "severity": sev,
                        "accuracy": 0.8,
                        "nll": nll * sev,
                        "ece": ece + noise,
                        "aurc": 0.1,
                    }
                )
            rows.append(
                {
                    "seed": seed,
                    "condition": "digits-clean",
                    "method": method,
                    "severity": 0,
                    "accuracy": 0.97 - (method == "bnn") * 0.02,
                    "nll": 0.1,
                    "ece": ece / 10 + noise,
                    "aurc": 0.01,
                }
            )
            rows.append(
                {
                    "seed": seed,
                    "condition": "digits-near-ood",
                    "method": method,
                    "severity": 0,
                    "accuracy": 0.99,
                    "nll": 0.05,
                    "ece": 0.01,
                    "aurc": 0.0,
                    "auroc": 0.8 + (method != "deterministic") * 0.1,
                }
            )
    return rows


def test_summary_rows_follow_the_json_contract():
    summary = summarise(_rows())
    keys = {(r["condition"], r["method"]) for r in summary}
    assert ("digits-corrupt", "deterministic") in keys and len(keys) == 9
    for r in summary:
        assert {"condition", "method", "accuracy", "nll", "ece", "auroc"} <= set(r)
        assert (r["auroc"] is None) == (r["condition"] != "digits-near-ood")
    det = next(r for r in summary if r["condition"] == "digits-corrupt" and r["method"] == "deterministic")
    assert det["nll"] == pytest.approx(1.5) and det["ece"] == pytest.approx(0.21)
    assert det["ece_se"] == pytest.approx(np.std([0.20, 0.22], ddof=1) / np.sqrt(2))


def test_by_corruption_pivots_each_type_mean_over_severities_then_seeds():
    rows = [
        {
            "seed": seed,
            "condition": "digits-corrupt",
            "method": m,
            "corruption": kind,
            "severity": sev,
            "accuracy": 0.5,
            "nll": 1.0,
            "ece": ece,
        }
        for seed, m, kind, sev, ece in [
            (0, "a", "noise", 1, 0.1),
            (0, "a", "noise", 2, 0.3),
            (1, "a", "noise", 1, 0.2),
            (1, "a", "noise", 2, 0.2),
            (0, "a", "blur", 1, 0.05),
            (1, "a", "blur", 1, 0.07),
            (0, "b", "noise", 1, 0.4),
            (1, "b", "noise", 1, 0.6),
        ]
    ] + [
        {
            "seed": 0,
            "condition": "digits-clean",
            "method": "a",
            "corruption": "none",
            "severity": 0,
            "accuracy": 1.0,
            "nll": 0.1,
            "ece": 0.9,
        }
    ]
    table = {(r["condition"], r["method"]): r for r in by_corruption(rows)}
    assert set(table) == {("digits-corrupt", "a"), ("digits-corrupt", "b")}  # clean rows are not corruptions
    a = table[("digits-corrupt", "a")]
    assert a["noise"] == pytest.approx(0.2)  # seed 0: mean(0.1, 0.3) = 0.2; seed 1: 0.2
    assert a["noise_se"] == pytest.approx(0.0, abs=1e-12)
    assert a["blur"] == pytest.approx(0.06) and a["blur_se"] == pytest.approx(
        np.std([0.05, 0.07], ddof=1) / np.sqrt(2)
    )
    assert (
        table[("digits-corrupt", "b")]["noise"] == pytest.approx(0.5)
        and "blur" not in table[("digits-corrupt", "b")]
    )


def test_goals_are_decided_on_the_numbers():
    g = goals(summarise(_rows()), [])
    assert g["near_ood"]["met"] and g["near_ood"]["best_auroc"] == pytest.approx(0.9)
    # bnn loses 0.02 clean accuracy (more than 1 point): not eligible; bnn+ts keeps it and halves the ECE
    assert g["digits_corrupt"]["best_method"] == "bnn+ts" and g["digits_corrupt"]["met"]
    assert g["digits_corrupt"]["best_ece"] == pytest.approx(0.015)
    assert g["digits_clean_ts"]["best_method"] == "bnn+ts"
    assert g["digits_clean_ts"]["best_ece"] == pytest.approx(0.0105) and not g["digits_clean_ts"]["met"]


def test_goals_count_never_sharpening_temperatures_as_temperature_scaling_but_not_as_a_method():
    """``+ts-soften`` (T >= 1) is a temperature-scaled variant for the in-distribution goal; the deterministic
    net's own ``+ts-soften`` stays a baseline, never the "best uncertlr method" of the corruption goal."""
    rows = _rows()
    for r in [r for r in rows if r["method"] == "bnn+ts"]:
        rows.append({**r, "method": "bnn+ts-soften", "ece": r["ece"] / 2})  # half bnn+ts's ECE
    for r in [r for r in rows if r["method"] == "deterministic"]:
        rows.append({**r, "method": "deterministic+ts-soften", "ece": r["ece"] / 100})
    g = goals(summarise(rows), [])
    assert g["digits_corrupt"]["best_method"] == "bnn+ts-soften"  # not deterministic+ts-soften's 0.002
    assert g["digits_clean_ts"]["best_method"] == "deterministic+ts-soften"  # the clean goal takes any TS
    assert set(g["digits_clean_ts"]["all"]) == {"bnn+ts", "bnn+ts-soften", "deterministic+ts-soften"}


def test_severity_curves_average_corruptions_and_include_the_clean_set():
    curves = severity_curves(_rows())
    assert set(curves) == {"digits"}
    assert curves["digits"]["bnn"][0]["ece"] == pytest.approx(0.018)
    assert curves["digits"]["bnn"][2]["nll"] == pytest.approx(1.4)


def test_weight_decay_reaches_the_deterministic_nets_and_not_the_bnns(monkeypatch):
    """``Config.det_weight_decay`` is the deterministic nets' L2 (Laplace's MAP net included); BNNs have a prior."""
    import torch

    from benchmarks import _shift_methods as M
    from uncertlr_models import MLP

    seen: dict[str, float] = {}
    real_fit = M._fit

    def spy(model, x, y, **kw):
        seen[type(model).__name__] = kw["weight_decay"]
        return real_fit(model, x, y, **kw)

    monkeypatch.setattr(M, "_fit", spy)
    cfg = M.Config(
        hidden=(8,), det_epochs=2, bnn_epochs=2, batch_size=32, ensemble_size=2, det_weight_decay=0.5
    )
    x, y = torch.randn(64, 4), torch.arange(64) % 3
    fitted = M.train_methods(
        ("deterministic", "mc-dropout", "ensemble", "laplace", "bnn"),
        lambda: MLP(4, (8,), 3),
        x,
        y,
        cfg,
        seed=0,
    )
    assert set(fitted) == {"deterministic", "mc-dropout", "ensemble", "laplace", "bnn"}
    assert seen.pop("BNN") == 0.0
    assert set(seen.values()) == {0.5} and len(seen) == 3  # the point net, the dropout net, the ensemble
    # and it acts: a large decay leaves a smaller last layer than none
    norms = []
    for wd in (0.0, 0.5):
        torch.manual_seed(0)
        det = M.PointNetwork(MLP(4, (8,), 3), "categorical")
        real_fit(det, x, y, epochs=20, lr=1e-2, cfg=cfg, seed=0, weight_decay=wd)
        norms.append(float(sum(p.square().sum() for p in det.parameters())))
    assert norms[1] < 0.5 * norms[0]


def test_the_held_out_speaker_grid_summary_counts_folds_against_the_deterministic_net():
    from benchmarks.shift import loso_grid_summary

    def row(fold, method, nll, cell=(None, None, None)):
        return {"fold": fold, "method": method, "nll": nll, "ece": nll / 10, "accuracy": 0.5,
                "init_scale": cell[0], "prior_scale": cell[1], "kl_weight": cell[2]}  # fmt: skip

    a, b = (1e-3, 1.0, 1.0), (3e-2, 0.3, 1.0)
    rows = [row("f1", "deterministic", 2.0), row("f2", "deterministic", 1.0)]
    rows += [
        row("f1", "bnn", 3.0, a),
        row("f2", "bnn", 0.5, a),
        row("f1", "bnn", 1.0, b),
        row("f2", "bnn", 0.9, b),
    ]
    out = {(r["init_scale"], r["prior_scale"], r["kl_weight"]): r for r in loso_grid_summary(rows)}
    assert out[a]["folds_nll_below_det"] == 1 and out[a]["nll"] == pytest.approx(1.75)
    assert out[b]["folds_nll_below_det"] == 2 and out[b]["ece"] == pytest.approx(0.095)
    det = out[(None, None, None)]
    assert det["nll"] == pytest.approx(1.5) and det["folds_nll_below_det"] is None


def test_corruption_validated_bnn_is_chosen_on_validation_corruptions_only(monkeypatch):
    """``bnn-cval`` keeps the grid cell with the lowest NLL on the *validation* corruption kinds and is
    scored on the test conditions; the test corruptions take no part in the choice."""
    from benchmarks import shift as S
    from benchmarks._shift_methods import Config

    corrupted: list[str] = []
    real = D.corrupt_digits

    def spy(x, kind, severity, rng):
        corrupted.append(kind)
        return real(x, kind, severity, rng)

    monkeypatch.setattr(D, "corrupt_digits", spy)
    cfg = Config(hidden=(8,), bnn_epochs=1, num_samples=2)
    grid = [(1e-3, 1.0, 1.0), (1e-3, 0.3, 1.0)]
    rows = S.corruption_validated_rows(0, cfg, lambda *a, **k: None, grid=grid)
    n_val = len(D.VALIDATION_DIGIT_LEVELS) * len(D.SEVERITIES)
    assert set(corrupted[:n_val]) == set(D.VALIDATION_DIGIT_LEVELS)  # the choice: validation kinds only
    assert set(corrupted[n_val:]) == set(D.DIGIT_LEVELS)  # then the test sets, built after the choice
    assert {r["method"] for r in rows} == {"bnn-cval", "bnn-cval+ts", "bnn-cval+ts-soften"}
    assert {r["condition"] for r in rows} == {
        "digits-clean",
        "digits-corrupt",
        "digits-far-ood",
        "digits-near-ood",
    }
    chosen = {(r["init_scale"], r["prior_scale"], r["kl_weight"]) for r in rows}
    assert len(chosen) == 1 and chosen.pop() in grid


def _toy_with_ids(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` inputs of 5 features whose first feature is the input's id, and 3 balanced classes."""
    x = np.random.default_rng(0).normal(size=(n, 5)).astype(np.float32)
    x[:, 0] = np.arange(n)
    return x, np.arange(n) % 3


def test_cross_fitting_scores_every_input_once_and_never_trains_on_it(monkeypatch):
    """``--cross-fit``: each fold's models never see that fold; the pooled predictions cover every input once."""
    from benchmarks import shift as S
    from benchmarks._shift_methods import Config

    x, y = _toy_with_ids(60)
    seen_train: list[set[int]] = []
    real = S.train_methods

    def spy(methods, net, xs, ys, cfg, **kw):
        seen_train.append({int(v) for v in xs[:, 0].tolist()})
        return real(methods, net, xs, ys, cfg, **kw)

    monkeypatch.setattr(S, "train_methods", spy)
    cfg = Config(hidden=(4,), det_epochs=1, bnn_epochs=1, num_samples=2)
    rows = S.cross_fit_rows(
        "toy-clean-cv", x, y, S._mlp(5, cfg, 3), 0, ["deterministic"], cfg, 3, lambda *a, **k: None
    )
    fold_of = np.random.default_rng(30_000).permutation(60) % 3
    assert [s & set(np.flatnonzero(fold_of == k).tolist()) for k, s in enumerate(seen_train)] == [set()] * 3
    assert {r["method"] for r in rows} == {
        "deterministic",
        "deterministic+ts",
        "deterministic+ts-soften",
        "deterministic+ts-pooled",
    }
    temps = {r["method"]: r.get("temperatures") for r in rows}
    # +ts-soften is the same NLL fit restricted to T >= 1: for one net (convex in 1/T), max(1, the free fit)
    assert len(temps["deterministic+ts"]) == 3 and len(temps["deterministic+ts-pooled"]) == 1
    assert min(temps["deterministic+ts"]) < 1 < max(temps["deterministic+ts"])  # both sides of the bound
    assert temps["deterministic+ts-soften"] == pytest.approx(
        [max(1.0, t) for t in temps["deterministic+ts"]], abs=1e-4
    )
    for r in rows:
        assert r["condition"] == "toy-clean-cv" and 0 <= r["ece_floor"] and 0 < r["ece_p"] <= 1
    # the pooled scores equal the scores of the concatenated fold predictions, recomputed by hand
    preds, labels, val_preds, val_labels = [], [], [], []
    for k in range(3):
        test, rest = np.flatnonzero(fold_of == k), np.flatnonzero(fold_of != k)
        tr, va = S._val_split(len(rest), 0)
        f = real(("deterministic",), S._mlp(5, cfg, 3), S._t(x[rest[tr]]), S._t(y[rest[tr]]), cfg, seed=0)
        preds.append(f["deterministic"].predict(S._t(x[test])).numpy().reshape(len(test), 3))
        labels.append(y[test])
        val_preds.append(f["deterministic"].predict(S._t(x[rest[va]])).numpy().reshape(len(va), 3))
        val_labels.append(y[rest[va]])
    # +ts-pooled: one temperature from every fold's validation part, applied to every fold's predictions
    temp = S.fit_temperature(np.concatenate(val_preds), np.concatenate(val_labels))
    pooled_ref = classification_scores(np.concatenate([temp(p) for p in preds]), np.concatenate(labels))
    pooled = next(r for r in rows if r["method"] == "deterministic+ts-pooled")
    assert pooled["nll"] == pytest.approx(pooled_ref["nll"]) and pooled["ece"] == pytest.approx(
        pooled_ref["ece"]
    )
    ref = classification_scores(np.concatenate(preds), np.concatenate(labels))
    got = next(r for r in rows if r["method"] == "deterministic")
    assert got["accuracy"] == pytest.approx(ref["accuracy"]) and got["nll"] == pytest.approx(ref["nll"])


def test_feature_density_benchmark_quick_run_writes_its_rows(tmp_path):
    """benchmarks/feature_density.py --quick on the CNN: the JSON rows and summary, the layers each score reads,
    and the head's feature density ranking digits 5-9 above 0-4 better than the softmax entropy does."""
    import json

    from benchmarks.feature_density import main

    out = tmp_path / "fd.json"
    assert main(["--quick", "--nets", "cnn", "--threads", "1", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    (row,) = doc["rows"]
    assert row["net"] == "cnn" and row["seed"] == 0 and row["accuracy"] > 0.95
    assert (row["density_layers"], row["density-all_layers"], row["density-conv_layers"]) == (1, 1, 3)
    assert all(0.0 <= row[k] <= 1.0 for k in ("entropy", "density", "density-all", "density-conv"))
    assert row["density"] > row["entropy"] + 0.02
    assert doc["summary"][0]["density"] == pytest.approx(row["density"])


def test_task_names_and_the_leave_one_speaker_out_goal():
    from benchmarks._shift_report import loso_goal, task_of

    assert [task_of(c) for c in ("fsdd-cnn-loso", "fsdd-clean-cv", "digits-near-ood", "diabetes-shift")] == [
        "fsdd-cnn",
        "fsdd",
        "digits",
        "diabetes",
    ]

    def fold(f, method, nll, ece, se=0.01):
        return {"fold": f, "method": method, "nll": nll, "ece": ece, "nll_se": se, "ece_se": se}

    folds = [fold(f"s{i}", "deterministic", 1.0, 0.2) for i in range(5)]
    folds += [fold(f"s{i}", "bnn", 0.8, 0.1) for i in range(4)] + [fold("s4", "bnn", 1.2, 0.1)]
    folds += [fold(f"s{i}", "laplace", 0.5, 0.05, se=0.6) for i in range(5)]  # better, but within its s.e.
    g = loso_goal(folds)
    assert g == {"best_method": "bnn", "folds_won": 4, "folds": 5, "met": True}
    assert not loso_goal([r for r in folds if r["fold"] != "s0"])["met"]  # 3 of 4 folds


def test_fsdd_cnn_rows_train_the_speech_cnn_on_unpooled_features(monkeypatch):
    """``--tasks fsdd-cnn``: the speech example's CNN on the 40 x 64 log-mels, conditions ``fsdd-cnn-*``."""
    from types import SimpleNamespace

    from benchmarks import shift as S
    from uncertlr_models import SpeechCNN

    rng = np.random.default_rng(0)

    def data(n):
        return SimpleNamespace(
            x_train=rng.normal(size=(n, 40, 64)).astype(np.float32),
            y_train=np.arange(n) % 10,
            x_test=rng.normal(size=(20, 40, 64)).astype(np.float32),
            y_test=np.arange(20) % 10,
        )

    split = data(40)
    monkeypatch.setattr(S, "_fsdd_features", lambda data_dir: (split, None))
    monkeypatch.setattr(S, "fsdd_corrupted", lambda *a: {("noise", 1): split.x_test})
    monkeypatch.setattr(S, "_loso_folds", lambda *a: iter([("alice", data(30))]))
    seen = []

    def train(methods, net, x, y, cfg, **kw):
        seen.append((type(net()).__name__, tuple(x.shape)))
        return {}

    monkeypatch.setattr(S, "train_methods", train)
    monkeypatch.setattr(
        S, "_score_all", lambda fitted, xv, yv, sets, extra: [{"condition": k[0]} for k in sets]
    )
    rows = S.fsdd_rows(0, ["deterministic"], S.FSDD_CNN, None, None, Path("."), net="cnn")
    assert [r["condition"] for r in rows] == ["fsdd-cnn-clean", "fsdd-cnn-corrupt", "fsdd-cnn-loso"]
    assert seen == [
        (SpeechCNN.__name__, (34, 40, 64)),
        (SpeechCNN.__name__, (26, 40, 64)),
    ]  # 15% validation out
    rows = S.fsdd_rows(0, ["deterministic"], S.FSDD, None, None, Path("."))
    assert rows[0]["condition"] == "fsdd-clean" and seen[-1][0] == "MLP" and seen[-1][1][1:] == (40, 16)


def test_cross_fit_fsdd_cnn_trains_the_speech_cnn_on_every_recording(monkeypatch):
    """``--cross-fit K --tasks fsdd-cnn``: condition ``fsdd-cnn-clean-cv``, the CNN on unpooled log-mels."""
    from types import SimpleNamespace

    from benchmarks import shift as S
    from uncertlr_models import SpeechCNN

    rng = np.random.default_rng(0)
    split = SimpleNamespace(
        x_train=rng.normal(size=(40, 40, 64)).astype(np.float32),
        y_train=np.arange(40) % 10,
        x_test=rng.normal(size=(20, 40, 64)).astype(np.float32),
        y_test=np.arange(20) % 10,
    )
    monkeypatch.setattr(S, "_fsdd_features", lambda data_dir: (split, None))
    seen = []

    def cross_fit_rows(condition, x, y, net, seed, methods, cfg, folds, advance, standardise):
        seen.append((condition, type(net()).__name__, x.shape, cfg, tuple(standardise(x)(x).shape)))
        return []

    monkeypatch.setattr(S, "cross_fit_rows", cross_fit_rows)
    S.cross_fit_task_rows("fsdd-cnn", 0, ["deterministic"], 5, None, None)
    S.cross_fit_task_rows("fsdd", 0, ["deterministic"], 5, None, None)
    assert seen[0][:4] == ("fsdd-cnn-clean-cv", SpeechCNN.__name__, (60, 40, 64), S.FSDD_CNN)
    assert seen[0][4] == (60, 40, 64)  # every recording, no time pooling
    assert seen[1][:2] == ("fsdd-clean-cv", "MLP") and seen[1][4] == (60, 40, 16)  # the MLP pools 4 frames


def test_cross_fitted_slopes_hold_out_each_fold_and_add_the_ts_cv_rows(monkeypatch):
    """``--slope-folds K``: K nets, each trained without its fold, give the density temperatures' slopes;
    the deterministic net then also gets ``+density-ts-cv`` rows (slope kept, intercept from validation)."""
    from benchmarks import _shift_methods as M
    from benchmarks import shift as S
    from benchmarks._shift_methods import Config

    x, y = _toy_with_ids(90)
    trained_on: list[set[int]] = []
    real_fit = M._fit

    def spy(model, xs, ys, **kw):
        trained_on.append({int(v) for v in xs[:, 0].tolist()})
        return real_fit(model, xs, ys, **kw)

    monkeypatch.setattr(M, "_fit", spy)
    cfg = Config(hidden=(4,), det_epochs=1, num_samples=1, slope_folds=3)
    ticks: list[str] = []
    fitted = S.train_methods(
        ("deterministic",),
        S._mlp(5, cfg, 3),
        S._t(x),
        S._t(y),
        cfg,
        seed=0,
        advance=lambda **kw: ticks.append(kw["description"]),
    )
    # the progress bar counts every net: the three fold nets, then the deterministic net
    assert ticks == ["slope net 1/3", "slope net 2/3", "slope net 3/3", "trained deterministic"]
    folds = np.random.default_rng(40_000).permutation(90) % 3
    assert trained_on[0] == set(range(90))  # the deterministic net itself, then one net per fold
    assert [s & set(np.flatnonzero(folds == k).tolist()) for k, s in enumerate(trained_on[1:])] == [set()] * 3
    slopes = fitted["deterministic"].score_slopes
    assert set(slopes) == {"density", "density-all", "density-hidden"}
    assert slopes["density"] >= 0 and slopes["density-all"] >= 0
    # the per-layer score reads every Linear input but the network's own: one hidden layer, one slope
    hidden = fitted["deterministic"].layer_scores["density-hidden"](S._t(x[:7]))
    assert (
        hidden.shape == (7, 1) and len(slopes["density-hidden"]) == 1 and min(slopes["density-hidden"]) >= 0
    )
    rows = S._score_all(
        fitted, S._t(x[:30]), y[:30], {("toy", "none", 0): (S._t(x[30:]), y[30:])}, {"seed": 0}
    )
    methods = {r["method"] for r in rows}
    assert {
        "deterministic+density-ts-cv",
        "deterministic+density-all-ts-cv",
        "deterministic+density-hidden-ts",
        "deterministic+density-hidden-ts-cv",
    } <= methods
    # without --slope-folds: no extra nets, no -ts-cv rows
    trained_on.clear()
    plain = S.train_methods(
        ("deterministic",), S._mlp(5, cfg, 3), S._t(x), S._t(y), replace(cfg, slope_folds=0), seed=0
    )
    assert len(trained_on) == 1 and plain["deterministic"].score_slopes == {}


def test_add_to_puts_the_results_into_an_existing_run_and_never_overwrites(tmp_path, capsys):
    import json

    from benchmarks import shift
    from uncertlr import runfolder

    rows = [{**r, "corruption": "noise" if r["severity"] else "none"} for r in _rows()]
    rows_file = tmp_path / "rows.json"
    rows_file.write_text(json.dumps({"rows": rows, "seeds": [0, 1]}))
    run = runfolder.new_run_dir(tmp_path, "demo")
    runfolder.write_metrics(
        run, {"task": "digits", "seed": 0, "config": {}, "models": {"bnn": {"accuracy": 0.9, "nll": 0.3}}}
    )
    metrics_before = (run / runfolder.METRICS_FILE).read_bytes()

    out = tmp_path / "out.json"
    assert shift.main(["--rows", str(rows_file), "--add-to", str(run), "--json", str(out)]) == 0
    doc = runfolder.read_shift(run)
    assert {(r["condition"], r["method"]) for r in doc["summary"]} == {
        (r["condition"], r["method"]) for r in rows
    }
    assert (run / runfolder.METRICS_FILE).read_bytes() == metrics_before  # the run's own results are kept
    html = (run / "report.html").read_text(encoding="utf-8")
    section = html.split('id="shift"', 1)[1].split("</section>", 1)[0]
    assert "digits-near-ood" in section and "No shift results" not in section
    assert set(tmp_path.iterdir()) == {run, rows_file, out}  # no new run folder made beside it

    # a second time: refused at once (before any training), the first results untouched
    shift_before = (run / runfolder.SHIFT_FILE).read_bytes()
    with pytest.raises(SystemExit) as exc:
        shift.main(["--tasks", "digits", "--add-to", str(run)])
    assert exc.value.code == 2
    assert "shift.json already exists" in capsys.readouterr().err
    assert (run / runfolder.SHIFT_FILE).read_bytes() == shift_before

    # a folder that is not a run folder
    with pytest.raises(SystemExit):
        shift.main(["--tasks", "digits", "--add-to", str(tmp_path / "nowhere")])
    assert "--add-to" in capsys.readouterr().err and not (tmp_path / "nowhere").exists()
