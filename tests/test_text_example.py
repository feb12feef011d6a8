"""examples/text_transformer.py: its synthetic task is what it says, and a --quick run leaves a run folder."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from uncertlr.runfolder import read_metrics, read_predictions

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "text_transformer.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("example_text_transformer", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_labels_are_the_majority_of_the_evidence(example):
    d = example.make_texts(300, seed=3)
    ids, mask, y = d["input_ids"], d["attention_mask"], d["labels"]
    assert (ids[mask == 0] == 0).all() and (ids[mask == 1] > 0).all()  # padding is id 0, and only padding
    pos = ((ids >= 1) & (ids <= 9)).sum(1)
    neg = ((ids >= 10) & (ids <= 19)).sum(1)
    assert ((pos > neg).long() == y).all() and (pos != neg).all()
    ood = example.make_texts(50, seed=4, neutral_only=True)
    real = ood["input_ids"][ood["attention_mask"] == 1]
    assert (real >= 20).all()


@pytest.mark.slow
def test_quick_run(example, tmp_path, capsys):
    assert example.main(["--quick", "--out", str(tmp_path)]) == 0
    (run,) = tmp_path.iterdir()
    doc = read_metrics(run)
    assert set(doc["models"]) == {"deterministic", "bnn"}
    preds = read_predictions(run)
    assert preds["bnn_test"].shape == (32, 500, 2) and preds["deterministic_test"].shape == (1, 500, 2)
    assert doc["models"]["deterministic"]["mi_in"] == 0.0 and doc["models"]["bnn"]["mi_in"] > 0.0
    assert "neutral-only" in capsys.readouterr().out
    torch.testing.assert_close(torch.from_numpy(preds["bnn_test"]).sum(-1), torch.ones(32, 500))
