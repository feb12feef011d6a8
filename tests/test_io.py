"""uncertlr._io: atomic writes keep earlier results; JSON of arrays and non-finite numbers; the environment."""

from __future__ import annotations

import math

import numpy as np
import pytest

from uncertlr._io import atomic_write, environment, read_json, write_json


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


def test_environment_lists_versions():
    env = environment()
    assert "torch" in env["versions"] and env["python"].count(".") == 2
