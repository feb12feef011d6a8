"""The report's shift section: drawn from shift.json when a run holds it, a note otherwise; shift_figure."""

from __future__ import annotations

import json
import re

import matplotlib.pyplot as plt
import pytest
from conftest import write_run

from uncertlr import runfolder
from uncertlr.diagnostics import report
from uncertlr.diagnostics.plots import shift_figure

SUMMARY = [
    {
        "condition": "digits-corrupt",
        "method": "deterministic",
        "accuracy": 0.81,
        "nll": 0.9,
        "ece": 0.12,
        "auroc": None,
    },
    {
        "condition": "digits-near-ood",
        "method": "bnn<script>",
        "accuracy": 0.97,
        "nll": 0.1,
        "ece": 0.02,
        "auroc": 0.91,
    },
]
CURVES = {
    "digits": {
        "deterministic": {
            "0": {"ece": 0.02, "nll": 0.1, "accuracy": 0.97},
            "3": {"ece": 0.2, "nll": 1.2, "accuracy": 0.6},
        },
        "deterministic+ts": {
            "0": {"ece": 0.01, "nll": 0.09, "accuracy": 0.97},
            "3": {"ece": 0.1, "nll": 0.9, "accuracy": 0.6},
        },
    }
}


def _section(html: str) -> str:
    return html.split('id="shift"', 1)[1].split("</section>", 1)[0]


def test_report_draws_the_shift_section(tmp_path):
    run = write_run(tmp_path / "run")
    runfolder.write_shift(run, SUMMARY, CURVES)
    html = report(run, progress=False).read_text(encoding="utf-8")
    sec = _section(html)
    assert len(re.findall(r'src="data:image/png;base64,', sec)) == 1
    assert "digits-near-ood" in sec and "0.910" in sec
    assert "<script>" not in sec and "bnn&lt;script&gt;" in sec  # user text is escaped


def test_report_without_or_with_a_broken_shift_file(tmp_path):
    run = write_run(tmp_path / "run")
    html = report(run, progress=False).read_text(encoding="utf-8")
    assert "No shift results in this run folder" in _section(html)
    (run / runfolder.SHIFT_FILE).write_text(json.dumps({"schema": "other"}))
    html = report(run, progress=False).read_text(encoding="utf-8")
    assert "shift.json could not be read" in _section(html)
    assert "Metrics" in html  # the other sections are unaffected


def test_shift_file_round_trip_and_errors(tmp_path):
    run = runfolder.new_run_dir(tmp_path, "r")
    assert runfolder.read_shift(run) is None
    runfolder.write_shift(run, SUMMARY, CURVES)
    doc = runfolder.read_shift(run)
    assert doc["summary"] == SUMMARY and doc["curves"] == CURVES
    (run / runfolder.SHIFT_FILE).write_text(json.dumps({"schema": runfolder.SHIFT_SCHEMA, "summary": {}}))
    with pytest.raises(ValueError, match="shift.json"):
        runfolder.read_shift(run)


def test_shift_figure_many_methods_keep_their_own_colours_and_a_legend_beside_the_panels():
    names = [f"m{i}" for i in range(14)]
    curves = {
        "digits": {
            n: {0: {"ece": 0.01, "nll": 0.05}, 5: {"ece": 0.3, "nll": 0.5 + 40 * (n == "m3")}} for n in names
        }
    }
    curves["digits"]["m0+ts"] = curves["digits"]["m0"]
    curves["digits"]["m1+ts-soften"] = curves["digits"]["m1"]
    fig = shift_figure(curves)
    ece, nll = fig.axes
    colours = {ln.get_label(): tuple(plt.matplotlib.colors.to_rgba(ln.get_color())) for ln in ece.get_lines()}
    assert len({colours[n] for n in names}) == len(names)  # 14 methods, 14 colours
    assert colours["m0+ts"] == colours["m0"] and colours["m1+ts-soften"] == colours["m1"]
    styles = {ln.get_label(): ln.get_linestyle() for ln in ece.get_lines()}
    assert (styles["m0"], styles["m0+ts"], styles["m1+ts-soften"]) == ("-", "--", ":")
    assert nll.get_yscale() == "log"  # NLL from 0.05 to 40.5: one method would flatten the others
    assert ece.get_legend() is None and nll.get_legend() is None
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [*names, "m0+ts", "m1+ts-soften"]
    plt.close(fig)
    linear = shift_figure({"digits": {"a": {0: {"ece": 0.01, "nll": 0.1}, 1: {"ece": 0.1, "nll": 0.9}}}})
    assert linear.axes[1].get_yscale() == "linear"
    plt.close(linear)


@pytest.mark.parametrize("count", [14, 40])
def test_shift_figure_legend_fits_inside_the_figure(count):
    """The benchmark's full digits run has ~30 methods and variants; one column of 7-point entries beside one
    row of panels holds ~22, so more get more columns instead of running off the figure's top and bottom."""
    curves = {
        "digits": {
            f"method-{i}": {0: {"ece": 0.01, "nll": 0.1}, 3: {"ece": 0.2, "nll": 1.0}} for i in range(count)
        }
    }
    fig = shift_figure(curves)
    fig.canvas.draw()
    (legend,) = fig.legends
    box, frame = legend.get_window_extent(), fig.bbox
    assert frame.y0 <= box.y0 and box.y1 <= frame.y1 and frame.x0 <= box.x0 and box.x1 <= frame.x1 + 1
    assert len(legend.get_texts()) == count
    plt.close(fig)


def test_shift_figure_draws_each_method_and_dashes_temperature_scaling():
    fig = shift_figure(CURVES)
    ece, nll = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["digits: ECE", "digits: NLL"]
    lines = {ln.get_label(): ln for ln in ece.get_lines()}
    assert list(lines["deterministic"].get_ydata()) == [0.02, 0.2]
    assert list(lines["deterministic"].get_xdata()) == [0.0, 3.0]
    assert lines["deterministic+ts"].get_linestyle() == "--"
    assert lines["deterministic"].get_color() == lines["deterministic+ts"].get_color()
    assert list(nll.get_lines()[0].get_ydata()) == [0.1, 1.2]
    with pytest.raises(ValueError, match="at least one task"):
        shift_figure({})
