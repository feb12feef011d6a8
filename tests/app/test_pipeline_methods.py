"""The pipeline on every method behind one predict: ensembles, MC dropout, Laplace, low-rank guides."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uncertlr import runfolder
from uncertlr.app.pipeline import Method, Task, compare, save
from uncertlr.likelihoods import NormalPrediction
from uncertlr.modulation import GradSigmaRatio, Ratio
from uncertlr.torch import Ensemble, LastLayerLaplace, MCDropout


def _task(regression=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=g)
    if regression:
        y = x[:, :1] * 2.0 + 0.1 * torch.randn(96, 1, generator=g)
        return Task("reg", x[:64], y[:64], x[64:], y[64:], y_loc=1.0, y_scale=2.0)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return Task("cls", x[:64], y[:64], x[64:], y[64:], x[64:] * 5, "scaled inputs")


def _net(out=3):
    return lambda: torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, out))


METHODS = [
    Method("ensemble", bayesian=False, wrapper="ensemble", members=3, epochs=3, rule=Ratio(warmup=0)),
    Method(
        "mc-dropout",
        bayesian=False,
        wrapper="mc-dropout",
        epochs=3,
        num_samples=6,
        rule=GradSigmaRatio(warmup=0),
    ),
    Method("laplace", bayesian=False, wrapper="laplace", epochs=3, num_samples=6),
    Method("bnn-lowrank", guide="lowrank", rank=2, epochs=3, num_samples=6, rule=GradSigmaRatio(warmup=0)),
    Method("bnn-ensemble", wrapper="ensemble", members=2, epochs=2, num_samples=6),
]


def test_compare_save_and_report_on_every_method(tmp_path):
    result = compare(_task(), METHODS, _net(), seed=0, progress=False)
    assert isinstance(result.trained["ensemble"].model, Ensemble)
    assert isinstance(result.trained["mc-dropout"].model, MCDropout)
    assert isinstance(result.trained["laplace"].model, LastLayerLaplace)
    shapes = {n: result.predictions[f"{n}_test"].shape for n in result.results}
    assert shapes == {
        "ensemble": (3, 32, 3),
        "mc-dropout": (6, 32, 3),
        "laplace": (6, 32, 3),
        "bnn-lowrank": (6, 32, 3),
        "bnn-ensemble": (6, 32, 3),
    }
    for n, r in result.results.items():
        assert 0 <= r["ece"] <= 1 and np.isfinite(r["nll"]) and 0 <= r["auroc_entropy"] <= 1, n
    epochs = {m.name: m.epochs for m in METHODS}
    assert {n: len(h) for n, h in result.histories.items()} == epochs  # one 64-row batch per epoch
    for n in ("ensemble", "mc-dropout", "bnn-lowrank"):  # modulated: the factor is recorded
        assert all("scale" in h for h in result.histories[n])
    run = save(
        result,
        runfolder.new_run_dir(tmp_path, "methods"),
        doc={"task": "cls", "seed": 0},
        inference=result.inference(num_samples=8, seed=0),
    )
    html = (run / "report.html").read_text(encoding="utf-8")
    for n in result.results:
        assert n in html
    assert (run / "posterior-bnn-lowrank.nc").is_file()


def test_regression_methods_predict_normal_predictions():
    methods = [
        Method("ensemble", bayesian=False, wrapper="ensemble", members=2, epochs=2),
        Method("laplace", bayesian=False, wrapper="laplace", epochs=2, num_samples=4),
        Method("mc-dropout", bayesian=False, wrapper="mc-dropout", epochs=2, num_samples=4),
    ]
    result = compare(_task(regression=True), methods, _net(1), seed=0, progress=False)
    for n in result.results:
        assert result.predictions[f"{n}_mean"].shape[1] == 32
        assert np.isfinite(result.results[n]["nll"]) and 0 <= result.results[n]["coverage_90"] <= 1
    assert isinstance(result.trained["laplace"].predict(_task(True).x_test), NormalPrediction)


def test_bad_method_combinations_are_refused():
    with pytest.raises(ValueError, match="wrapper must be one of"):
        Method("x", wrapper="swag")
    with pytest.raises(ValueError, match="wraps a deterministic network"):
        Method("x", wrapper="laplace")
    with pytest.raises(ValueError, match="modulates Bayesian, ensemble and MC-dropout"):
        Method("x", bayesian=False, wrapper="laplace", rule=Ratio())
