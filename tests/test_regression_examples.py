"""The regression example end to end (--quick, toy and diabetes) and NormalPrediction.rescale."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from uncertlr import metrics
from uncertlr.likelihoods import NormalPrediction
from uncertlr.runfolder import METRICS_SCHEMA, read_history, read_metrics

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "regression_1d.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIELDS = ("rmse", "nll", "coverage_90", "width_90", "noise_std", "epistemic_std")


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("example_regression_1d", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _check_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200, img.shape
    assert img[..., :3].std() > 0.01  # not a blank canvas


def _check_run(run: Path, models: set[str]) -> dict:
    doc = read_metrics(run)
    assert doc["schema"] == METRICS_SCHEMA and set(doc["models"]) == models
    for name, m in doc["models"].items():
        for key in FIELDS:
            assert isinstance(m[key], float) and math.isfinite(m[key]), (name, key)
        assert 0.75 <= m["coverage_90"] <= 0.99, (name, m["coverage_90"])
    hist = read_history(run)
    assert set(hist) == models - {"mean baseline"}
    assert all(len(h) > 0 and math.isfinite(h[-1]["loss"]) for h in hist.values())
    with np.load(run / "predictions.npz") as p:
        n = len(p["targets"])
        for name in models:
            key = name.replace(" ", "_")
            assert p[f"{key}_mean"].shape[1:] == (n,) and p[f"{key}_variance"].shape == p[f"{key}_mean"].shape
        assert p["bnn_mean"].shape[0] == doc["config"]["num_samples"]
    _check_png(run / "coverage.png")
    return doc


def test_help(example, capsys):
    with pytest.raises(SystemExit) as exc:
        example.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--quick" in out and "--data" in out and "diabetes" in out


def test_toy_quick_bnn_is_unsure_in_the_gap(example, tmp_path):
    run = example.main(["--quick", "--out", str(tmp_path)])
    doc = _check_run(run, {"deterministic", "bnn"})
    assert doc["task"] == "regression-toy" and doc["config"]["quick"] is True
    bnn, det = doc["models"]["bnn"], doc["models"]["deterministic"]
    # epistemic std in the gap (-1, 1) vs on the data ([-4, -1] and [1, 4])
    assert bnn["gap_ratio"] > 1.2, bnn
    assert bnn["epistemic_std_gap"] > bnn["epistemic_std_data"] > 0
    # a point estimate has no epistemic part (and so no ratio)
    assert det["epistemic_std"] == 0 and det["epistemic_std_gap"] == 0 and "gap_ratio" not in det
    for m in (bnn, det):  # noise std 0.15: a fit, not a constant
        assert m["rmse"] < 0.3 and 0.08 < m["noise_std"] < 0.3, m
    _check_png(run / "regression_1d.png")
    with np.load(run / "predictions.npz") as p:
        assert p["bnn_grid_mean"].shape == (doc["config"]["num_samples"], len(p["grid"]))
        assert p["deterministic_grid_mean"].shape == (1, len(p["grid"]))


def test_diabetes_quick_bnn_beats_the_mean(example, tmp_path):
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    run = example.main(["--data", "diabetes", "--quick", "--out", str(tmp_path)])
    doc = _check_run(run, {"mean baseline", "deterministic", "bnn"})
    models = doc["models"]
    assert doc["task"] == "regression-diabetes"
    for name in ("deterministic", "bnn"):
        assert models[name]["rmse"] < 0.9 * models["mean baseline"]["rmse"], name
        assert models[name]["nll"] < models["mean baseline"]["nll"], name
    assert models["bnn"]["epistemic_std"] > 0
    _check_png(run / "predictions.png")

    # the baseline, computed independently in original units: N(train mean, train std²)
    x, y = load_diabetes(return_X_y=True)
    _, _, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0)
    mu, sd = ytr.mean(), ytr.std()
    base = models["mean baseline"]
    assert base["rmse"] == pytest.approx(np.sqrt(np.mean((yte - mu) ** 2)), rel=1e-5)
    nll = np.mean(0.5 * np.log(2 * np.pi * sd**2) + 0.5 * (yte - mu) ** 2 / sd**2)
    assert base["nll"] == pytest.approx(nll, rel=1e-5)
    assert base["coverage_90"] == pytest.approx(np.mean(np.abs(yte - mu) <= 1.6448536 * sd), abs=1e-9)
    assert 70 > models["bnn"]["rmse"] > 40  # disease-progression units, not standardised ones


# --------------------------------------------------------------------------- NormalPrediction.rescale

_floats = st.floats(-5, 5, allow_nan=False, width=64)
_arrays = hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=3, max_side=5), elements=_floats)


@given(
    mean=_arrays,
    log_var=st.floats(-3, 2),
    loc=st.floats(-100, 100),
    scale=st.floats(0.01, 100),
)
def test_rescale_matches_manual_affine_map(mean, log_var, loc, scale):
    variance = np.full_like(mean, math.exp(log_var)) * np.linspace(0.5, 1.5, mean.size).reshape(mean.shape)
    pred = NormalPrediction(mean, variance).rescale(loc=loc, scale=scale)
    assert isinstance(pred, NormalPrediction)
    for i in np.ndindex(mean.shape):
        assert pred.mean[i] == pytest.approx(mean[i] * scale + loc, rel=1e-12, abs=1e-9)
        assert pred.variance[i] == pytest.approx(variance[i] * scale * scale, rel=1e-12)
    # the variance split scales by scale**2, part by part
    d0, d1 = metrics.predictive_variance(mean, variance), metrics.predictive_variance(*pred)
    for a, b in zip(d0, d1):
        np.testing.assert_allclose(b, a * scale**2, rtol=1e-9, atol=1e-9 * scale**2)


@given(
    mean=_arrays,
    loc=st.floats(-100, 100),
    scale=st.floats(0.01, 100),
    seed=st.integers(0, 2**16),
)
def test_rescaled_metrics_are_the_original_metrics_in_new_units(mean, loc, scale, seed):
    rng = np.random.default_rng(seed)
    variance = rng.uniform(0.1, 2.0, mean.shape)
    targets = rng.normal(size=mean.shape[1:])
    pred = NormalPrediction(mean, variance)
    big, big_targets = pred.rescale(loc=loc, scale=scale), targets * scale + loc
    # RMSE scales with the units; the density picks up the Jacobian log(scale) per output
    assert float(metrics.rmse(big.mean, big_targets)) == pytest.approx(
        scale * float(metrics.rmse(mean, targets)), rel=1e-7, abs=1e-9
    )
    assert float(metrics.gaussian_nll(big.mean, big.variance, big_targets)) == pytest.approx(
        float(metrics.gaussian_nll(mean, variance, targets)) + math.log(scale), rel=1e-7, abs=1e-7
    )


def test_rescale_works_on_torch_tensors_and_per_output_scales():
    mean = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])  # [S=1, N=2, D=2]
    var = torch.ones_like(mean)
    loc, scale = torch.tensor([10.0, -1.0]), torch.tensor([2.0, 0.5])
    out = NormalPrediction(mean, var).rescale(loc=loc, scale=scale)
    torch.testing.assert_close(out.mean, torch.tensor([[[10.0, -0.5], [14.0, 0.5]]]))
    torch.testing.assert_close(out.variance, torch.tensor([[[4.0, 0.25], [4.0, 0.25]]]))
    same = NormalPrediction(mean, var).rescale()
    assert torch.equal(same.mean, mean) and torch.equal(same.variance, var)
