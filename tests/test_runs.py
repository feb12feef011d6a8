"""Run folders: atomic writes keep earlier results, folders are never reused."""

from __future__ import annotations

import math

import numpy as np
import pytest

from uncertlr.runs import atomic_write, environment, new_run_dir, read_json, write_json


def test_interrupted_write_keeps_previous_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"accuracy": 0.9})

    def crash(f):
        f.write(b'{"accuracy": ')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert read_json(path) == {"accuracy": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left behind


def test_atomic_write_gives_a_new_file_the_usual_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "report.html", lambda f: f.write(b"<html></html>"))
    finally:
        os.umask(old)
    # like open(path, "w"): 0o666 minus the umask, not mkstemp's owner-only 0o600
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_json_handles_arrays_and_non_finite(tmp_path):
    write_json(tmp_path / "a.json", {"x": np.arange(3), "y": np.float32(0.5), "z": math.nan})
    assert read_json(tmp_path / "a.json") == {"x": [0, 1, 2], "y": 0.5, "z": None}


def test_new_run_dir_is_unique(tmp_path):
    dirs = {new_run_dir(tmp_path, "demo") for _ in range(5)}
    assert len(dirs) == 5 and all(d.is_dir() for d in dirs)


def test_environment_lists_versions():
    env = environment()
    assert "torch" in env["versions"] and env["python"].count(".") == 2


def test_save_classification_run_writes_the_standard_files(tmp_path):
    import numpy as np

    from uncertlr.runs import METRICS_SCHEMA, read_json, save_classification_run

    rng = np.random.default_rng(0)
    preds = {
        "labels": rng.integers(0, 3, 20),
        "det_test": rng.dirichlet(np.ones(3), (1, 20)),
        "bnn_test": rng.dirichlet(np.ones(3), (5, 20)),
        "bnn_ood": rng.dirichlet(np.ones(3), (5, 7)),
    }
    run = save_classification_run(
        tmp_path,
        {"task": "t", "models": {"bnn": {"accuracy": 0.5}}, "device": "gpu"},
        predictions=preds,
        histories={"bnn": [{"step": 0, "loss": 1.0}]},
    )
    doc = read_json(run / "metrics.json")
    assert (
        doc["schema"] == METRICS_SCHEMA
        and doc["task"] == "t"
        and doc["device"] == "gpu"
        and "torch" in doc["versions"]
    )
    assert read_json(run / "history.json") == {"bnn": [{"step": 0, "loss": 1.0}]}
    with np.load(run / "predictions.npz") as p:
        np.testing.assert_array_equal(p["bnn_ood"], preds["bnn_ood"])
    assert (run / "reliability.png").stat().st_size > 1000 and (run / "uncertainty.png").stat().st_size > 1000
