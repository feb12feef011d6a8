"""report(): files, agreement with arviz.summary, warnings, escaping, atomicity, CLI."""

from __future__ import annotations

import copy
import importlib
import json
import re

import numpy as np
import pytest
from conftest import write_run

from uncertlr.app.cli import main
from uncertlr.diagnostics import SECTIONS, load_posteriors, report, to_inference_data
from uncertlr.diagnostics._arviz import az


def _html(run) -> str:
    return (run / "report.html").read_text(encoding="utf-8")


def test_report_files_and_sections(report_run):
    html = _html(report_run)
    for _, title in SECTIONS:
        assert f"<h2>{title}</h2>" in html
    # every image is embedded; nothing is loaded from elsewhere
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) >= 6 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(href|src)="(https?:|//)', html)
    # posterior files reload with arviz.from_netcdf and carry the training history
    nuts = az.from_netcdf(report_run / "posterior-nuts.nc")
    assert {"posterior", "sample_stats", "log_likelihood", "posterior_predictive"} <= set(nuts.groups())
    bnn = az.from_netcdf(report_run / "posterior-bnn.nc")  # history.json has a "bnn" history
    assert "training_history" in bnn.groups() and bnn.training_history.sizes["step"] == 60
    assert set(load_posteriors(report_run)) == {"bnn", "nuts"}
    summary = json.loads((report_run / "summary.json").read_text())
    assert summary["schema"] == "uncertlr.summary/1" and set(summary["models"]) == {"bnn", "nuts"}
    assert summary["models"]["nuts"]["divergences"] == int(nuts.sample_stats["diverging"].sum())


def test_summary_agrees_with_arviz_summary(report_run):
    summary = json.loads((report_run / "summary.json").read_text())["models"]["nuts"]
    idata = az.from_netcdf(report_run / "posterior-nuts.nc")
    ref = az.summary(idata, var_names=["w", "b"], round_to="none")
    assert set(summary["weights"]) == set(ref.index)
    for label, row in ref.iterrows():
        for col in ("mean", "sd", "ess_bulk", "ess_tail", "r_hat", "mcse_mean"):
            assert summary["weights"][label][col] == pytest.approx(row[col], rel=1e-9)
    pred = az.summary(
        idata,
        group="posterior_predictive",
        var_names=["mean_log_likelihood", "mean_entropy"],
        round_to="none",
    )
    for label, row in pred.iterrows():
        assert summary["predictive"][label]["r_hat"] == pytest.approx(row["r_hat"], rel=1e-9)
    # independent check of one number: the mean log-likelihood per draw from the log_likelihood group
    np.testing.assert_allclose(
        idata.posterior_predictive["mean_log_likelihood"].values,
        idata.log_likelihood["obs"].values.mean(-1),
        rtol=1e-5,
    )


def test_clean_mcmc_run_has_no_warning(report_run):
    summary = json.loads((report_run / "summary.json").read_text())
    assert summary["models"]["nuts"]["warnings"] == [] and summary["warnings"] == []
    assert 'class="warn"' not in _html(report_run).replace('id="image-check" class="warn"', "")


def test_injected_divergence_and_bad_rhat_warn(tmp_path, numpyro_mcmc):
    idata = to_inference_data(numpyro_mcmc)
    diverging = idata.sample_stats["diverging"].copy(deep=True)
    diverging.values[0, 7] = True
    idata.sample_stats["diverging"] = diverging
    bad = to_inference_data(numpyro_mcmc)
    shifted = bad.posterior["b"].copy(deep=True)
    shifted.values[1] += 3.0  # one chain elsewhere: R-hat far above 1.01
    bad.posterior["b"] = shifted
    run = write_run(tmp_path / "run", names=("det",))
    report(run, inference={"diverged": idata, "unmixed": bad}, progress=False)
    s = json.loads((run / "summary.json").read_text())["models"]
    assert s["diverged"]["divergences"] == 1
    assert any("1 MCMC transition diverged" in w for w in s["diverged"]["warnings"])
    assert not any("R-hat" in w for w in s["diverged"]["warnings"])
    assert s["unmixed"]["weights"]["b"]["r_hat"] > 1.5
    assert any(w.startswith("R-hat is above 1.01") and "for b" in w for w in s["unmixed"]["warnings"])
    html = _html(run)
    assert "1 MCMC transition diverged" in html and "R-hat is above 1.01" in html
    assert '<div class="warn" id="warnings">' in html


def test_user_strings_are_escaped(tmp_path, small_bnn_idata):
    evil = '<script>alert("x")</script>'
    run = write_run(tmp_path / "run", names=("det", evil))
    meta = json.loads((run / "metrics.json").read_text())
    meta["config"]["note"] = "<img src=x onerror=alert(1)>"
    (run / "metrics.json").write_text(json.dumps(meta))
    report(run, inference={evil: small_bnn_idata}, progress=False)
    html = _html(run)
    assert html.count("<script>") == 1  # the page's own image check only
    assert "alert(" not in html.split("<script>")[1].split("</script>")[0]
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert set(load_posteriors(run)) == {evil}  # the name survives the file-name cleaning


def test_models_keep_the_runs_order_not_the_files_alphabetical_one(tmp_path, small_bnn_idata):
    # "posterior-bnn+g1.nc" sorts before "posterior-bnn.nc" ('+' < '.'): the report must not follow the files
    run = write_run(tmp_path / "run", names=("det", "bnn", "bnn+g1"))
    # objects of their own: the report records each model's name in its InferenceData
    g1, plain = copy.deepcopy(small_bnn_idata), copy.deepcopy(small_bnn_idata)
    report(run, inference={"bnn+g1": g1, "bnn": plain}, progress=False)
    assert list(load_posteriors(run)) == ["bnn+g1", "bnn"]  # the files, alphabetically
    report(run, progress=False)  # rebuilt from those files
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary["models"]) == ["bnn", "bnn+g1"]
    html = _html(run)
    spread = html.split("<h2>Posterior spread per layer</h2>")[1]
    assert spread.index("bnn: spread") < spread.index("bnn+g1: spread")


def test_interrupted_write_leaves_previous_report(tmp_path, small_bnn_idata, monkeypatch):
    mod = importlib.import_module("uncertlr.diagnostics._report")  # where the report's files are written

    run = write_run(tmp_path / "run")
    report(run, inference={"bnn": small_bnn_idata}, progress=False)
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    real = mod.atomic_write

    def crashing(path, write):
        def half(f):
            f.write(b"<!DOCTYPE html> partial")
            raise KeyboardInterrupt("killed while writing")

        return real(path, half) if str(path).endswith("report.html") else real(path, write)

    monkeypatch.setattr(mod, "atomic_write", crashing)
    (run / "metrics.json").write_text((run / "metrics.json").read_text().replace("synthetic", "changed"))
    with pytest.raises(KeyboardInterrupt):
        report(run, progress=False)
    assert (run / "report.html").read_bytes() == before["report.html"]
    assert sorted(p.name for p in run.iterdir()) == sorted(before)  # no temporary file left behind

    # a crash while rendering touches no file at all
    monkeypatch.setattr(mod, "atomic_write", real)
    monkeypatch.setattr(mod, "_render", lambda *a, **k: 1 / 0)
    now = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(ZeroDivisionError):
        report(run, progress=False)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == now


def test_cli_report_rebuilds(tmp_path, small_bnn_idata, capsys):
    run = write_run(tmp_path / "run")
    report(run, inference={"bnn": small_bnn_idata}, progress=False)
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    html = _html(run)
    assert "<h2>Posterior spread per layer</h2>" in html and "posterior-bnn.nc keeps" in html
    assert main(["report", str(tmp_path / "missing")]) == 2  # a user's mistake: one line, status 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


def test_minimal_run_folder_and_bad_metrics(tmp_path):
    from uncertlr.runfolder import METRICS_SCHEMA

    run = tmp_path / "bare"
    run.mkdir()
    (run / "metrics.json").write_text(
        json.dumps({"schema": METRICS_SCHEMA, "models": {"m": {"accuracy": 0.5}}})
    )
    report(run, progress=False)
    html = _html(run)
    assert all(f"<h2>{t}</h2>" in html for _, t in SECTIONS) and "<img " not in html
    assert "No history.json in this run folder." in html and "was fit by MCMC" in html
    assert json.loads((run / "summary.json").read_text())["models"] == {}
    (run / "metrics.json").write_text(json.dumps({"schema": "other/1"}))
    with pytest.raises(ValueError, match="uncertlr.metrics/1"):
        report(run, progress=False)
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        report(tmp_path, progress=False)
