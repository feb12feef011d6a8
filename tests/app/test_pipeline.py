"""uncertlr.app.pipeline: the one pipeline the demo, `uncertlr train` and the examples configure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uncertlr import likelihoods, runfolder
from uncertlr.app.pipeline import Method, Results, Task, compare, evaluate, results_table, save, setup, train
from uncertlr.modulation import GradSigmaRatio, Ratio


def _task(n=96, regression=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    if regression:
        y = (x[:, :1] * 2.0 + 0.1 * torch.randn(n, 1, generator=g)).float()
        return Task("reg", x[:64], y[:64], x[64:], y[64:], y_loc=10.0, y_scale=3.0)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return Task("cls", x[:64], y[:64], x[64:], y[64:], x[64:] * 5, "scaled inputs")


def _net():
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def test_every_method_starts_from_the_same_weights_and_runs_reproduce():
    task = _task()
    det = setup(task, Method("det", bayesian=False), _net, seed=3)
    bnn = setup(task, Method("bnn"), _net, seed=3)
    torch.testing.assert_close(det.model[0].weight, bnn.model.posterior_loc()["0.weight"])
    a = train(task, Method("bnn", epochs=2), _net, seed=1, progress=False)
    b = train(task, Method("bnn", epochs=2), _net, seed=1, progress=False)
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_the_optimizer_is_torchs_fused_kernel_and_steps_as_the_plain_one(optimizer):
    task = _task()
    method = Method("bnn", optimizer=optimizer, weight_decay=0.01, lr=0.05)
    fused = setup(task, method, _net, seed=3)
    assert fused.optimizer.defaults["fused"] is True
    # the same steps from the same start with the plain (for-loop) implementation and the same settings
    model = setup(task, method, _net, seed=3).model
    d = fused.optimizer.defaults
    plain = type(fused.optimizer)(
        model.parameters(),
        lr=d["lr"],
        betas=d["betas"],
        eps=d["eps"],
        weight_decay=d["weight_decay"],
        foreach=False,
    )
    start = [p.detach().clone() for p in model.parameters()]
    for m, opt in ((fused.model, fused.optimizer), (model, plain)):
        torch.manual_seed(0)
        for _ in range(5):
            opt.zero_grad()
            m.loss(task.x_train, task.y_train).backward()
            opt.step()
    for a, b, s in zip(fused.model.parameters(), model.parameters(), start, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert not torch.equal(b, s)  # the steps moved every parameter


def test_setting_up_a_run_keeps_freed_memory_first(monkeypatch):
    """The demo, `uncertlr train` and the examples train in this process: glibc keeps freed blocks first."""
    import uncertlr.app.pipeline as pipeline

    calls = []
    monkeypatch.setattr(pipeline, "keep_freed_memory", lambda: calls.append("keep") or True)
    monkeypatch.setattr(
        pipeline.torch, "manual_seed", lambda seed: calls.append("seed") or torch.default_generator
    )
    setup(_task(), Method("deterministic", bayesian=False), _net, seed=0)
    assert calls[:2] == ["keep", "seed"]


def test_modulated_methods_record_signal_and_scale():
    task = _task()
    g1 = train(task, Method("bnn+g1", epochs=3, rule=Ratio(warmup=0)), _net, seed=0, progress=False)
    assert all("signal" in r and 0.5 <= r["scale"] <= 2.0 for r in g1.history)
    p2 = train(task, Method("bnn+p2", epochs=1, rule=GradSigmaRatio(warmup=0)), _net, seed=0, progress=False)
    assert all("scale_min" in r and r["scale_min"] <= r["scale"] <= r["scale_max"] for r in p2.history)
    with pytest.raises(ValueError, match="Bayesian"):
        Method("det", bayesian=False, rule=Ratio())


def test_a_regression_bnn_is_modulated_by_its_predictive_variance():
    """Not by the entropy of its one-column outputs (0, which pinned G1 at its maximum factor)."""
    reg = train(
        _task(regression=True),
        Method("bnn+g1", epochs=4, rule=Ratio(warmup=0)),
        lambda: torch.nn.Linear(4, 1),
        seed=0,
        progress=False,
    )
    signals = [r["signal"] for r in reg.history]
    assert signals[0] == pytest.approx(likelihoods.Normal().init_scale ** 2)  # one particle: noise² only
    assert all(u > 0 for u in signals) and len(set(signals)) > 1  # follows the learned noise
    assert any(r["scale"] < 2.0 for r in reg.history[1:])


def test_compare_and_save_write_the_run_folder(tmp_path):
    task = _task()
    methods = [Method("deterministic", bayesian=False, epochs=3), Method("bnn", epochs=3, num_samples=5)]
    result = compare(task, methods, _net, seed=0, progress=False)
    assert list(result.results) == ["deterministic", "bnn"] and list(result.posteriors) == ["bnn"]
    assert result.predictions["bnn_test"].shape == (5, 32, 3) and result.predictions["bnn_ood"].shape == (
        5,
        32,
        3,
    )
    # the summary is the run-folder summary of the saved predictions
    again = runfolder.classification_summary(
        result.predictions["bnn_test"], task.y_test.numpy(), result.predictions["bnn_ood"]
    )
    assert again["accuracy"] == result.results["bnn"]["accuracy"]
    run = save(result, runfolder.new_run_dir(tmp_path, "t"), doc={"task": "cls", "seed": 0})
    assert set(runfolder.read_metrics(run)["models"]) == {"deterministic", "bnn"}
    assert set(runfolder.read_history(run)) == {"deterministic", "bnn"}
    assert (run / "reliability.png").stat().st_size > 1000 and (run / "uncertainty.png").stat().st_size > 1000
    assert not (run / "report.html").exists()  # no inference given: no report


def test_regression_metrics_are_in_original_units():
    task = _task(regression=True)
    trained = train(
        task,
        Method("bnn", epochs=5, num_samples=4, kl_weight=1.0),
        lambda: torch.nn.Linear(4, 1),
        seed=0,
        progress=False,
    )
    summary, arrays = evaluate(trained, task)
    assert arrays["bnn_mean"].shape == (4, 32) and arrays["bnn_variance"].shape == (4, 32)
    targets = task.y_test[:, 0].numpy().astype(np.float64) * 3.0 + 10.0  # original units
    rmse = np.sqrt(np.mean((arrays["bnn_mean"].astype(np.float64).mean(0) - targets) ** 2))
    assert summary["rmse"] == pytest.approx(rmse, rel=1e-5)
    # the stored predictions are the rescaled ones: variances scale by 3**2
    assert arrays["bnn_variance"].min() > 0 and summary["noise_std"] == pytest.approx(
        np.mean(np.sqrt(arrays["bnn_variance"].astype(np.float64).mean(0))), rel=1e-5
    )
    assert np.allclose(task.test_targets(), task.y_test[:, 0].numpy() * 3.0 + 10.0)
    det = train(
        task,
        Method("deterministic", bayesian=False, epochs=5, optimizer="adamw"),
        lambda: torch.nn.Linear(4, 1),
        seed=0,
        progress=False,
    )
    assert evaluate(det, task)[0]["epistemic_std"] == 0.0


def test_results_from_any_backend_save_the_same_files(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), (4, 10)).astype(np.float32)
    labels = rng.integers(0, 3, 10)
    res = Results(
        {"m": runfolder.classification_summary(probs, labels)}, {"labels": labels, "m_test": probs}, {"m": []}
    )
    run = save(res, tmp_path, doc={"task": "x"})
    assert (run / "reliability.png").exists() and not (run / "uncertainty.png").exists()
    table = results_table(res.results, title="t")
    assert table.row_count == sum(1 for k, _, _ in runfolder.SUMMARY_ROWS if k in res.results["m"])
