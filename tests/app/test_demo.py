"""`uncertlr demo` end to end: the issue's targets, the run folder, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from uncertlr.app.cli import main
from uncertlr.runfolder import CLASSIFICATION_KEYS, METRICS_SCHEMA


def _steps() -> int:
    """Optimizer steps of a demo BNN: 150 epochs of 64-image batches of the training split (validation held out)."""
    from uncertlr.app.demo import DemoConfig, digits_task

    cfg = DemoConfig()
    n = len(digits_task(cfg.seed, validation=True).x_train)
    return cfg.epochs * math.ceil(n / cfg.batch_size)


STEPS = _steps()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The full demo (its targets hold for its own configuration only): the slowest fixture of the suite."""
    out = tmp_path_factory.mktemp("runs")
    assert main(["demo", "--out", str(out)]) == 0
    (run,) = out.iterdir()
    return run


@pytest.mark.slow
def test_demo_meets_its_targets(demo_run):
    m = json.loads((demo_run / "metrics.json").read_text())
    bnn = m["models"]["bnn"]
    assert bnn["accuracy"] >= 0.95
    assert bnn["ece"] <= 0.03
    assert bnn["auroc_mi"] >= 0.9
    # the BNN's epistemic uncertainty is what separates the OOD set; a point prediction has none
    assert m["models"]["deterministic"]["mi_in"] == 0.0
    assert bnn["mi_ood"] > 5 * bnn["mi_in"]
    # the modulated BNNs (issue 3) train as well as the plain one
    for name in ("bnn+g1", "bnn+p2"):
        assert m["models"][name]["accuracy"] >= 0.93, name


@pytest.mark.slow
def test_run_folder_contents(demo_run):
    m = json.loads((demo_run / "metrics.json").read_text())
    assert m["schema"] == METRICS_SCHEMA and m["task"] == "digits"
    assert {"torch", "pyro-ppl", "numpy"} <= set(m["versions"])
    assert list(m["models"]) == ["deterministic", "bnn", "bnn+g1", "bnn+p2"]
    for model in m["models"]:
        assert set(CLASSIFICATION_KEYS) <= set(m["models"][model])
    for png in ("reliability.png", "uncertainty.png"):
        with Image.open(demo_run / png) as im:
            assert im.size[0] > 300 and np.asarray(im.convert("L")).std() > 10  # a real picture, not blank
    preds = np.load(demo_run / "predictions.npz")
    assert preds["bnn_test"].shape == (64, 450, 10) and preds["deterministic_test"].shape == (1, 450, 10)
    hist = json.loads((demo_run / "history.json").read_text())
    assert len(hist["bnn"]) == STEPS and hist["bnn"][-1]["loss"] < hist["bnn"][0]["loss"]
    for name in ("bnn+g1", "bnn+p2"):
        assert preds[f"{name}_test"].shape == (64, 450, 10)
        h = hist[name]
        assert len(h) == STEPS and {"signal", "scale"} <= set(h[-1])
        assert all(r["scale"] == 1.0 for r in h[:20])  # warm-up
        lo, hi = ("scale", "scale") if name == "bnn+g1" else ("scale_min", "scale_max")
        assert any(r[lo] < 0.999 or r[hi] > 1.001 for r in h[20:])  # then the modulator acts
    g1 = [r["scale"] for r in hist["bnn+g1"]]
    assert 0.5 <= min(g1) and max(g1) <= 2.0
    # the cosine schedule is the same with and without the modulator
    assert [r["lr"] for r in hist["bnn+g1"]] == [r["lr"] for r in hist["bnn"]]


def test_second_run_never_overwrites(tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--epochs", "1", "--num-samples", "2"]) == 0
    assert main(["demo", "--out", str(tmp_path), "--epochs", "1", "--num-samples", "2"]) == 0
    assert len(list(tmp_path.iterdir())) == 2


def test_cli_version_and_usage(capsys):
    assert main(["--version"]) == 0 and "uncertlr" in capsys.readouterr().out
    assert main([]) == 2 and "error" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_leaves_a_report_and_report_rebuilds_it(demo_run, capsys):
    pytest.importorskip("arviz")
    from uncertlr.diagnostics import SECTIONS, load_posteriors

    html = (demo_run / "report.html").read_text(encoding="utf-8")
    assert all(f"<h2>{title}</h2>" in html for _, title in SECTIONS)
    posteriors = load_posteriors(demo_run)
    assert set(posteriors) == {"bnn", "bnn+g1", "bnn+p2"}  # every Bayesian model of the demo
    bnn = posteriors["bnn"]
    assert {"posterior", "posterior_predictive", "log_likelihood", "layer_spread", "training_history"} <= set(
        bnn.groups()
    )
    assert bnn.log_likelihood["obs"].shape == (1, 64, 450) and bnn.training_history.sizes["step"] == STEPS
    summary = json.loads((demo_run / "summary.json").read_text())
    assert set(summary["models"]) == set(posteriors) and summary["models"]["bnn"]["layer_spread"]
    (demo_run / "report.html").unlink()
    assert main(["report", str(demo_run)]) == 0
    assert (demo_run / "report.html").read_text(encoding="utf-8").count("<img ") == 4
    assert "report.html" in capsys.readouterr().err
