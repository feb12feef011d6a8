"""The example scripts end to end: --help, a --quick run, the run folder and what it claims."""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from uncertlr.runfolder import METRICS_SCHEMA, read_history, read_metrics

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", ["speech_digits", "classify_images"])
def test_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        _load(name).main(["--help"])
    assert exc.value.code == 0
    assert "--quick" in capsys.readouterr().out


def _check_run(run: Path, models: set[str]) -> dict:
    doc = read_metrics(run)
    assert doc["schema"] == METRICS_SCHEMA and set(doc["models"]) == models
    for m in doc["models"].values():
        for key in (
            "accuracy",
            "nll",
            "brier",
            "ece",
            "adaptive_ece",
            "entropy_in",
            "mi_in",
            "entropy_ood",
            "mi_ood",
            "auroc_mi",
            "auroc_entropy",
            "seconds",
        ):
            assert math.isfinite(m[key]), key
    hist = read_history(run)
    assert set(hist) == models and all(len(h) > 0 and "loss" in h[0] for h in hist.values())
    import numpy as np

    with np.load(run / "predictions.npz") as p:
        n = len(p["labels"])
        for name in models:
            assert p[f"{name}_test"].shape[1:] == (n, 10)
    return doc


@pytest.mark.slow
def test_speech_quick_beats_chance_widely(fsdd_dir, tmp_path):
    mod = _load("speech_digits")
    run = mod.main(
        [
            "--quick",
            "--epochs",  # 6 epochs: accuracy 0.71-0.78 on one thread (3 epochs: ~0.5, too close to the bound)
            "6",
            "--num-samples",  # the SNR sweep and the held-out speaker predict with every draw
            "4",
            "--data-dir",
            str(fsdd_dir.parent.parent),
            "--out",
            str(tmp_path / "runs"),
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    models = {"deterministic", "bnn", "bnn+modulator"}
    doc = _check_run(run, models)
    for name, m in doc["models"].items():
        assert m["accuracy"] > 0.5, (name, m["accuracy"])  # chance is 0.1
    assert doc["models"]["bnn"]["mi_in"] > 0 and doc["models"]["deterministic"]["mi_in"] == 0
    speakers = doc["data"]["speakers"]
    assert set(doc["per_speaker_accuracy"]["bnn"]) == set(speakers)
    assert doc["held_out_speaker"]["speaker"] == speakers[-1]
    held = doc["held_out_speaker"]["models"]  # temperatures fitted on the other speakers' validation part
    assert all(0 <= held[m]["ece_ts"] <= 1 and held[m]["nll_ts"] > 0 for m in models)
    assert 0 <= held["deterministic"]["ece_density_ts"] <= 1 and "ece_density_ts" not in held["bnn"]
    assert 0 <= held["deterministic"]["ece_laplace"] <= 1 and held["deterministic"]["nll_laplace"] > 0
    assert 0 <= held["deterministic"]["accuracy_laplace"] <= 1 and "ece_laplace" not in held["bnn"]
    assert doc["held_out_speaker"]["validation"] > 0
    sweep = doc["snr_sweep"]["by_snr"]["bnn"]
    # noise hurts: accuracy at the lowest SNR is below the clean accuracy
    assert sweep[min(sweep, key=float)]["accuracy"] < doc["models"]["bnn"]["accuracy"]
    for png in ("reliability.png", "snr_sweep.png", "per_speaker.png", "uncertainty.png"):
        assert (run / png).stat().st_size > 1000


def test_speech_snr_plot_draws_each_line_from_low_to_high_snr():
    import matplotlib.pyplot as plt

    mod = _load("speech_digits")
    # the sweep runs from high to low SNR (its dict order); the clean test set is drawn right of the highest
    sweep = {
        "bnn": {
            str(snr): {"accuracy": 0.5 + snr / 100, "entropy": 1 - snr / 50, "mi": 0.01}
            for snr in (20.0, 0.0, -5.0)
        }
    }
    clean = {"bnn": {"accuracy": 0.9, "entropy": 0.2, "mi": 0.001}}
    fig = mod._snr_plot(sweep, clean)
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_xdata()) == [-5.0, 0.0, 20.0, 30.0]
    assert list(line.get_ydata()) == [0.45, 0.5, 0.7, 0.9]
    (line,) = fig.axes[1].get_lines()
    assert list(line.get_ydata()) == [1.1, 1.0, 0.6, 0.2]
    plt.close(fig)


def test_images_quick_on_digits(tmp_path):
    run = _load("classify_images").main(["--quick", "--epochs", "4", "--out", str(tmp_path)])
    doc = _check_run(run, {"deterministic", "bnn"})
    assert doc["task"] == "digits" and doc["ood"] == "test images with shuffled pixels"
    assert doc["models"]["bnn"]["accuracy"] > 0.5
    assert doc["models"]["bnn"]["auroc_mi"] > 0.5  # MI is higher on shuffled pixels than on real digits


def test_images_on_mnist_format_files_pairs_mnist_with_fashion_mnist(tmp_path):
    import numpy as np

    from uncertlr.data import write_idx

    rng = np.random.default_rng(0)
    for ds in ("mnist", "fashion-mnist"):
        for part, n in (("train", 96), ("t10k", 32)):
            write_idx(
                tmp_path / ds / f"{part}-images-idx3-ubyte.gz",
                rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
            )
            write_idx(tmp_path / ds / f"{part}-labels-idx1-ubyte.gz", rng.integers(0, 10, n).astype(np.uint8))
    mod = _load("classify_images")
    run = mod.main(
        [
            "--dataset",
            "mnist",
            "--data-dir",
            str(tmp_path),
            "--epochs",
            "1",
            "--num-samples",
            "2",
            "--out",
            str(tmp_path / "runs"),
        ]
    )
    doc = _check_run(run, {"deterministic", "bnn"})
    assert doc["task"] == "mnist" and doc["ood"] == "fashion-mnist test images"
    with np.load(run / "predictions.npz") as p:
        assert p["bnn_test"].shape == (2, 32, 10) and p["bnn_ood"].shape == (2, 32, 10)


def test_speaker_validated_bnn_is_chosen_without_the_held_out_rows(monkeypatch):
    """``--speaker-validated``: the grid is trained without the validation speaker's rows and scored on them."""
    import numpy as np
    import torch

    mod = _load("speech_digits")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 6, generator=g)
    y = (x[:, 0] > 0).long()
    speakers = np.repeat(["a", "b", "c"], 20)
    trained_on = []
    real_train = mod.train

    def spy(task, method, net, **kw):
        trained_on.append(task.x_train)
        return real_train(task, method, net, **kw)

    monkeypatch.setattr(mod, "train", spy)
    bnn = mod.methods(replace(mod.SpeechConfig(), num_samples=4))[1]
    grid = {"init_scale": [1e-3], "prior_scale": [0.3, 1.0], "kl_weight": [1.0]}
    chosen, search = mod.speaker_validated(
        bnn, x, y, speakers, "b", lambda: torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(),
        torch.nn.Linear(8, 2)), epochs=2, seed=0, grid=grid, progress=False,
    )  # fmt: skip
    assert len(trained_on) == 2 and all(t.shape[0] == 40 for t in trained_on)
    held = {tuple(r.tolist()) for r in x[20:40]}
    assert not any(tuple(r.tolist()) in held for t in trained_on for r in t)  # speaker b never trains
    assert list(search.fold_scores[0]) == ["b"]
    assert chosen.name == "bnn-spkval" and chosen.epochs == bnn.epochs  # the full training length again
    assert {"prior_scale": chosen.prior_scale} == {"prior_scale": search.best["prior_scale"]}


def test_mcmc_digits_quick_compares_five_jax_methods(tmp_path):
    """The JAX example end to end (tiny settings): every method's row, predictions and history in the run folder."""
    mod = _load("mcmc_digits")
    args = ["--quick", "--warmup", "10", "--samples", "10", "--chains", "1", "--svi-epochs", "2"]
    assert mod.main([*args, "--out", str(tmp_path)]) == 0
    (run,) = tmp_path.iterdir()
    doc = read_metrics(run)
    models = doc["models"]
    assert set(models) == {"deterministic", "ensemble", "laplace", "svi", "nuts"}
    assert all(
        math.isfinite(m[k]) for m in models.values() for k in ("accuracy", "nll", "ece", "auroc_entropy")
    )
    assert set(read_history(run)) == set(models) - {"nuts"}  # NUTS has no loss curve
    import numpy as np

    with np.load(run / "predictions.npz") as p:
        assert p["ensemble_test"].shape == (5, len(p["labels"]), 10)
        assert p["laplace_test"].shape == (100, len(p["labels"]), 10)
    assert models["ensemble"]["accuracy"] > 0.8 and models["laplace"]["accuracy"] > 0.8
    # five members disagree somewhat, a point network not at all; Laplace samples its last layer
    assert (
        models["ensemble"]["mi_in"] > 0
        and models["laplace"]["mi_in"] > 0
        and models["deterministic"]["mi_in"] == 0
    )
    assert doc["config"]["laplace"]["prior_precision"] > 0
    assert (run / "report.html").is_file()
