"""Issue 13: a damaged run folder costs only the section that needs the damaged file, with a note naming it."""

from __future__ import annotations

import json
import re
import tracemalloc
import zipfile

import numpy as np
import pytest
from conftest import write_run

from uncertlr.diagnostics import SECTIONS, report
from uncertlr.diagnostics._predictions import read_prediction_summaries
from uncertlr.runfolder import METRICS_SCHEMA, read_predictions


def _html(run) -> str:
    return (run / "report.html").read_text(encoding="utf-8")


def _section(html: str, sid: str) -> str:
    return html.split(f'<section id="{sid}">')[1].split("</section>")[0]


def _warns(html: str, sid: str) -> list[str]:
    return re.findall(r'<p class="warn">(.*?)</p>', _section(html, sid))


def _all_sections_render(html):
    assert all(f"<h2>{t}</h2>" in html for _, t in SECTIONS)


def test_a_damaged_history_costs_only_the_training_curves(tmp_path):
    run = write_run(tmp_path / "run")
    (run / "history.json").write_text("[1, 2, 3]")  # a list, not {model: records}
    report(run, progress=False)
    html = _html(run)
    _all_sections_render(html)
    (w,) = _warns(html, "training")
    assert "history.json" in w and "must map model names" in w
    assert "<img" in _section(html, "reliability") and "<img" in _section(html, "uncertainty")
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary["skipped"]) == ["training"]


def test_absurd_history_values_are_skipped_not_fatal(tmp_path):
    run = write_run(tmp_path / "run")
    hist = json.loads((run / "history.json").read_text())
    hist["bnn"][3]["loss"] = 10**400  # valid JSON, no float can hold it
    hist["bnn"][4]["loss"] = "NaN-ish"
    hist["deterministic"] = [["not", "a", "record"], 7]
    (run / "history.json").write_text(json.dumps(hist))
    report(run, progress=False)
    html = _html(run)
    assert "<img" in _section(html, "training") and not _warns(html, "training")


@pytest.mark.parametrize(
    "damage, sections, words",
    [
        (
            lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
            ("reliability", "uncertainty"),
            "predictions.npz",
        ),
        (lambda p: p.write_bytes(b"not a zip at all"), ("reliability", "uncertainty"), "predictions.npz"),
    ],
)
def test_a_damaged_predictions_file_costs_only_its_figures(tmp_path, damage, sections, words):
    run = write_run(tmp_path / "run")
    damage(run / "predictions.npz")
    report(run, progress=False)
    html = _html(run)
    _all_sections_render(html)
    for sid in sections:
        (w,) = _warns(html, sid)
        assert words in w
    assert "<img" in _section(html, "training")


def _rewrite_predictions(run, **changes):
    arrays = dict(read_predictions(run))
    arrays.update(changes)
    np.savez(run / "predictions.npz", **{k: v for k, v in arrays.items() if v is not None})


@pytest.mark.parametrize(
    "changes, section, needle",
    [
        ({"labels": np.linspace(0, 2, 60)}, "reliability", "'labels' must hold integer class labels"),
        ({"bnn_test": np.ones((8, 60, 3))}, "reliability", "'bnn_test': draw 0 is not probabilities"),
        (
            {"bnn_test": np.full((8, 50, 3), 1 / 3)},
            "reliability",
            "'bnn_test' has 50 inputs but 'labels' has 60",
        ),
        ({"bnn_ood": np.full((3,), 0.5)}, "uncertainty", "'bnn_ood' must be probabilities [S, N, C]"),
        ({"bnn_test": np.array(["a", "b"], dtype=object)}, "reliability", "'bnn_test'"),
    ],
)
def test_bad_arrays_are_named_by_file_and_key(tmp_path, changes, section, needle):
    run = write_run(tmp_path / "run")
    if any(v.dtype == object for v in changes.values()):  # np.savez needs allow_pickle for objects
        arrays = dict(read_predictions(run))
        arrays.update(changes)
        np.savez(run / "predictions.npz", **arrays)
    else:
        _rewrite_predictions(run, **changes)
    report(run, progress=False)
    html = _html(run)
    _all_sections_render(html)
    warns = " ".join(_warns(html, section))
    assert "predictions.npz" in warns and needle.replace("'", "&#x27;") in warns
    if section == "uncertainty":  # a bad out-of-distribution array costs only the uncertainty figure
        assert "<img" in _section(html, "reliability") and not _warns(html, "reliability")


def test_a_corrupt_posterior_file_costs_only_that_model(tmp_path, small_bnn_idata):
    run = write_run(tmp_path / "run")
    report(run, inference={"bnn": small_bnn_idata}, progress=False)
    (run / "posterior-broken.nc").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    report(run, progress=False)
    html = _html(run)
    (w,) = _warns(html, "spread")
    assert "posterior-broken.nc is not a readable ArviZ InferenceData file" in w
    assert "posterior-bnn.nc keeps" in _section(html, "spread")  # the good posterior still renders
    assert (run / "posterior-broken.nc").read_bytes().startswith(b"\x89HDF")  # left as it was


def test_a_model_name_that_is_broken_mathtext_renders(tmp_path, small_bnn_idata):
    name = r"$\undefinedmacro$ <b>"
    run = write_run(tmp_path / "run", names=("det", name))
    report(run, inference={name: small_bnn_idata}, progress=False)
    html = _html(run)
    _all_sections_render(html)
    assert not any(_warns(html, sid) for sid, _ in SECTIONS)
    assert html.count("<img") >= 4 and "&lt;b&gt;" in html and "<b>" not in html.split("<main>")[1]


def test_metrics_json_is_required_and_named_when_damaged(tmp_path):
    run = write_run(tmp_path / "run")
    for text, needle in (
        ("[1, 2]", "is not an uncertlr.metrics/1 file"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("{not json", "is not valid JSON"),
        ("\udcff".encode("utf-8", "surrogatepass").decode("latin-1"), "is not"),
    ):
        (run / "metrics.json").write_text(text, encoding="latin-1")
        with pytest.raises(ValueError, match=needle) as err:
            report(run, progress=False)
        assert "metrics.json" in str(err.value)
    meta = {"schema": METRICS_SCHEMA, "models": {"ok": {"accuracy": 0.5}, "odd": [1, 2]}}
    (run / "metrics.json").write_text(json.dumps(meta))
    report(run, progress=False)
    (w,) = _warns(_html(run), "metrics")
    assert "metrics.json: models[&#x27;odd&#x27;] is a list" in w


def _stream_npz(path, key, shape, fill):
    """Write ``key`` of ``shape`` (constant ``fill``, float32) into an npz without holding it in memory."""
    row = np.full(shape[1:], fill, dtype=np.float32).tobytes()
    with (
        zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as zf,
        zf.open(f"{key}.npy", "w", force_zip64=True) as f,
    ):
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
        for _ in range(shape[0]):
            f.write(row)


def test_the_report_streams_only_the_arrays_it_plots(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    np.savez(run / "predictions.npz", labels=np.arange(2000) % 10)
    _stream_npz(run / "predictions.npz", "bnn_test", (4000, 2000, 10), 0.1)  # 320 MB of probabilities
    _stream_npz(run / "predictions.npz", "junk", (4000, 2000, 10), 0.0)  # 320 MB the report never reads
    assert (run / "predictions.npz").stat().st_size < 5_000_000
    tracemalloc.start()
    s = read_prediction_summaries(run, ["labels", "bnn_test", "bnn_ood"])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert set(s) == {"labels", "bnn_test"} and s["bnn_test"].num_samples == 4000
    np.testing.assert_allclose(s["bnn_test"].mean, 0.1, rtol=1e-6)
    np.testing.assert_allclose(s["bnn_test"].expected_entropy, np.log(10), rtol=1e-5)
    assert peak < 10 * 2**20, peak  # O(N x C), not the 320 MB array


def test_summaries_match_the_full_arrays(tmp_path):
    from uncertlr import metrics

    run = write_run(tmp_path / "run", names=("det", "bnn"))
    full = read_predictions(run)
    s = read_prediction_summaries(run, list(full))
    for key in ("det_test", "bnn_test", "bnn_ood"):
        d = metrics.uncertainty_decomposition(full[key])
        np.testing.assert_allclose(s[key].mean, full[key].mean(0), rtol=1e-10)
        np.testing.assert_allclose(s[key].total, d.total, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(s[key].epistemic, d.epistemic, rtol=1e-5, atol=1e-7)
        assert float(metrics.ece(s[key].mean, full["labels"])) == pytest.approx(
            float(metrics.ece(full[key], full["labels"]))
        )
