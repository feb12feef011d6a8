"""benchmarks/lr_robustness.py: the working-LR-range summary, the regression score and the JSON contract."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("torch")
from benchmarks.lr_robustness import lr_ranges, main, regression_scores, summarize  # noqa: E402

LRS = [1e-4, 1e-3, 1e-2, 1e-1]


def _rows(method, accs_per_lr, key="score"):
    return [
        {"method": method, "lr": lr, "seed": s, key: a}
        for lr, accs in zip(LRS, accs_per_lr)
        for s, a in enumerate(accs)
    ]


def test_range_is_the_contiguous_block_around_the_best_lr():
    rows = _rows("a", [[0.5, 0.5], [0.95, 0.93], [0.97, 0.97], [0.2, 0.9]])  # 1e-1 mean 0.55
    rows += _rows("b", [[0.95, 0.95], [0.5, 0.5], [0.96, 0.96], [0.95, 0.95]])  # 1e-4 not contiguous
    rows += _rows("c", [[0.1, 0.1], [0.2, 0.2], [0.3, float("nan")], [0.1, 0.1]])  # never reaches it
    r = lr_ranges(rows, LRS, target=0.94)
    assert r["a"]["best_lr"] == 1e-2 and r["a"]["range"] == pytest.approx(10.0)
    assert r["b"]["range"] == pytest.approx(10.0)
    assert r["c"]["range"] == 0.0 and r["c"]["means"][2] == pytest.approx(0.15)  # a diverged run counts as 0


class _Task:
    def __init__(self, regression):
        import torch

        self.name, self.regression = ("reg" if regression else "cls"), regression
        self.y_train = torch.tensor([[0.0], [2.0]]) if regression else torch.tensor([0, 1])
        self.y_test = torch.tensor([[1.0], [1.0]]) if regression else torch.tensor([0, 1])


def _run_row(method, lr, seed, acc, *, ece=0.05, curve_hit=44, factor=None):
    return {
        "task": "cls", "method": method, "lr": lr, "seed": seed, "accuracy": acc, "nll": 0.1, "ece": ece,
        "curve": [(22, acc * 0.5), (curve_hit, acc)], "factor_mean": factor, "factor_min": factor,
        "factor_max": factor, "diverged": False,
    }  # fmt: skip


def test_summary_rows_follow_the_json_contract():
    rows = [_run_row("adam-constant", lr, s, a) for lr, a in zip(LRS, [0.5, 0.92, 0.95, 0.2]) for s in (0, 1)]
    rows += [
        _run_row("bnn+uplateau", lr, s, a, factor=0.5)
        for lr, a in zip(LRS, [0.5, 0.93, 0.96, 0.94])
        for s in (0, 1)
    ]
    rows.append(
        {"task": "cls", "method": "bnn+lr-matched", "lr": 1e-4, "seed": 0, "skipped": "no matched run"}
    )
    summary, details, best = summarize(_Task(False), rows, LRS)
    assert best == pytest.approx(0.96)
    assert [set(s) for s in summary] == [
        {"task", "method", "modulated", "range_95", "best_lr", "best_metric"}
    ] * 2
    by = {s["method"]: s for s in summary}
    assert by["bnn+uplateau"]["modulated"] is True and by["adam-constant"]["modulated"] is False
    assert by["bnn+uplateau"]["range_95"] == pytest.approx(100.0)  # 1e-3 … 1e-1 reach 0.912
    assert by["adam-constant"]["range_95"] == pytest.approx(10.0) and by["adam-constant"]["best_lr"] == 1e-2
    d = {x["method"]: x for x in details}
    assert d["bnn+uplateau"]["factor_mean"] == 0.5 and d["adam-constant"]["factor_mean"] is None
    assert d["adam-constant"]["mean_score_over_grid"] == pytest.approx(np.mean([0.5, 0.92, 0.95, 0.2]))


def test_regression_scores_against_closed_forms():
    from scipy.stats import norm

    y = np.array([0.0, 1.0, -1.0, 2.0])
    mean, var = np.zeros((1, 4)), np.ones((1, 4))
    s = regression_scores(mean, var, y)
    assert s["nll"] == pytest.approx(np.mean(-norm.logpdf(y)))
    assert s["rmse"] == pytest.approx(math.sqrt(np.mean(y**2)))
    cover = [np.mean(np.abs(y) <= norm.ppf(0.5 + lv / 2)) for lv in np.linspace(0.1, 0.9, 9)]
    assert s["ece"] == pytest.approx(np.mean(np.abs(np.array(cover) - np.linspace(0.1, 0.9, 9))))


def test_a_tiny_grid_end_to_end_writes_the_contract(tmp_path):
    out = tmp_path / "lr.json"
    argv = ["--task", "digits", "--lrs", "3e-2", "--seeds", "0", "--epochs", "1", "--json", str(out),
            "--png", str(tmp_path / "lr.png"), "--methods", "adam-constant", "bnn+uplateau", "bnn+lr-matched"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    assert {s["method"] for s in doc["summary"]} == {"adam-constant", "bnn+uplateau", "bnn+lr-matched"}
    rows = {r["method"]: r for r in doc["rows"]}
    assert rows["bnn+lr-matched"]["matched_lr"] == pytest.approx(3e-2 * rows["bnn+uplateau"]["factor_mean"])
    assert 0.0 <= rows["adam-constant"]["accuracy"] <= 1.0 and rows["adam-constant"]["factor_mean"] is None
    assert {"cpu_seconds", "loadavg_start"} <= set(doc["load"])
    assert (tmp_path / "lr.png").exists() and out.with_suffix(".partial.jsonl").read_text().count("\n") == 3
