"""uncertlr.runfolder: the run-folder contract (files, readers, per-model summaries)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from uncertlr import calibration, metrics, runfolder
from uncertlr.likelihoods import NormalPrediction


def test_new_run_dir_is_unique(tmp_path):
    dirs = {runfolder.new_run_dir(tmp_path, "demo") for _ in range(5)}
    assert len(dirs) == 5 and all(d.is_dir() for d in dirs)


def _preds(rng):
    return {
        "labels": rng.integers(0, 3, 20),
        "det_test": rng.dirichlet(np.ones(3), (1, 20)),
        "bnn_test": rng.dirichlet(np.ones(3), (5, 20)),
        "bnn_ood": rng.dirichlet(np.ones(3), (5, 7)),
    }


def test_save_run_round_trips_through_the_readers(tmp_path):
    preds = _preds(np.random.default_rng(0))
    run = runfolder.save_run(
        tmp_path,
        {"task": "t", "models": {"bnn": {"accuracy": 0.5}}, "device": "gpu"},
        predictions=preds,
        histories={"bnn": [{"step": 0, "loss": 1.0}]},
    )
    doc = runfolder.read_metrics(run)
    assert doc["schema"] == runfolder.METRICS_SCHEMA and doc["task"] == "t" and doc["device"] == "gpu"
    assert "torch" in doc["versions"] and doc["models"] == {"bnn": {"accuracy": 0.5}}
    assert runfolder.read_history(run) == {"bnn": [{"step": 0, "loss": 1.0}]}
    got = runfolder.read_predictions(run)
    assert set(got) == set(preds)
    np.testing.assert_array_equal(got["bnn_ood"], preds["bnn_ood"])
    assert set(runfolder.read_predictions(run, keys=["labels", "missing"])) == {"labels"}


def test_readers_name_the_file_they_refuse(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        runfolder.read_metrics(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        runfolder.read_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="metrics.json"):
        runfolder.read_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"schema": runfolder.METRICS_SCHEMA, "models": [1]}))
    with pytest.raises(ValueError, match="models"):
        runfolder.read_metrics(tmp_path)
    (tmp_path / "history.json").write_text("[]")
    with pytest.raises(ValueError, match="history.json"):
        runfolder.read_history(tmp_path)
    (tmp_path / "predictions.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="predictions.npz"):
        runfolder.read_predictions(tmp_path)
    assert (
        runfolder.read_history(tmp_path / "nowhere") == {}
        and runfolder.read_predictions(tmp_path / "x") == {}
    )


def test_classification_summary_against_a_direct_computation():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(4), (6, 30))
    y = rng.integers(0, 4, 30)
    s = runfolder.classification_summary(p, y, rng.dirichlet(np.ones(4), (6, 10)))
    pbar = p.mean(0)
    assert s["accuracy"] == pytest.approx(np.mean(pbar.argmax(1) == y))
    assert s["nll"] == pytest.approx(-np.mean(np.log(pbar[np.arange(30), y])))
    assert s["brier"] == pytest.approx(np.mean(np.sum((pbar - np.eye(4)[y]) ** 2, 1)))
    assert s["entropy_in"] == pytest.approx(np.mean(stats.entropy(pbar, axis=1)))
    assert set(runfolder.CLASSIFICATION_KEYS) == set(s)


def _under_confident(rng: np.random.Generator, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` jittered copies of an under-confident classifier (its best temperature ~0.3) and labels."""
    logits = rng.normal(size=(400, 4)) * 3.0
    labels = np.array([rng.choice(4, p=np.exp(row) / np.exp(row).sum()) for row in logits])
    jitter = 0.05 * rng.normal(size=(samples, 400, 4))
    soft = 0.3 * logits[None] + jitter
    return np.exp(soft) / np.exp(soft).sum(-1, keepdims=True), labels


def test_the_temperature_of_a_model_average_never_sharpens():
    rng = np.random.default_rng(3)
    for samples in (1, 5):
        probs, labels = _under_confident(rng, samples)
        s = runfolder.classification_summary(
            probs[:, :200], labels[:200], probs_val=probs[:, 200:], labels_val=labels[200:]
        )
        free = calibration.fit_temperature(probs[:, 200:], labels[200:]).value
        assert free < 0.6  # the validation part asks to sharpen
        if samples == 1:  # a point prediction: the free fit
            assert s["temperature"] == pytest.approx(free)
        else:  # a model average: the never-sharpen fit, which ends at T = 1
            never = calibration.fit_temperature(
                probs[:, 200:], labels[200:], bounds=calibration.NEVER_SHARPEN
            )
            assert s["temperature"] == pytest.approx(never.value) and 1.0 <= s["temperature"] < 1.001
            assert s["nll_ts"] == pytest.approx(float(metrics.nll(never(probs[:, :200]), labels[:200])))


@settings(max_examples=40, deadline=None)
@given(
    sd=st.floats(0.05, 5.0),
    level=st.floats(0.05, 0.99),
    seed=st.integers(0, 2**16),
)
def test_interval_coverage_of_a_calibrated_gaussian_is_its_level(sd, level, seed):
    rng = np.random.default_rng(seed)
    n = 4000
    targets = sd * rng.standard_normal(n)
    cov, width = runfolder.interval_coverage(np.zeros((1, n)), np.full((1, n), sd**2), targets, level)
    assert width == pytest.approx(2 * stats.norm.ppf(0.5 + level / 2) * sd)
    # binomial standard error of the empirical coverage, 5 sigma
    assert abs(cov - level) < 5 * np.sqrt(level * (1 - level) / n) + 1e-9


def test_regression_summary_against_scipy():
    rng = np.random.default_rng(2)
    mean, var = rng.normal(size=(3, 50)), rng.uniform(0.5, 2.0, (3, 50))
    y = rng.normal(size=50)
    s = runfolder.regression_summary(NormalPrediction(mean, var), y)
    mix = np.mean(stats.norm.pdf(y, mean, np.sqrt(var)), axis=0)
    assert s["nll"] == pytest.approx(-np.mean(np.log(mix)))
    assert s["rmse"] == pytest.approx(np.sqrt(np.mean((mean.mean(0) - y) ** 2)))
    assert s["epistemic_std"] == pytest.approx(np.mean(np.sqrt(mean.var(0))))
    assert s["noise_std"] == pytest.approx(np.mean(np.sqrt(var.mean(0))))
    with pytest.raises(ValueError, match="level"):
        runfolder.interval_coverage(mean, var, y, 1.5)


def test_a_run_folder_lock_is_exclusive_and_released(tmp_path):
    """Issue 13: a second holder is refused with the first one's pid; the lock goes with its holder."""
    import os

    import pytest

    from uncertlr.runfolder import RunFolderBusy, lock_run_dir

    with lock_run_dir(tmp_path):
        with pytest.raises(
            RunFolderBusy, match=f"in use by another uncertlr process \\(pid {os.getpid()}\\)"
        ):
            with lock_run_dir(tmp_path):
                pass
    with lock_run_dir(tmp_path):  # released on leaving the block (or when the process dies)
        pass
