"""Where data and caches live."""

from __future__ import annotations

from pathlib import Path

from uncertlr.data import cache_dir, data_dir
from uncertlr.data import paths as paths_mod


def test_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("UNCERTLR_DATA", str(tmp_path / "env"))
    assert data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert data_dir() == tmp_path / "env"
    monkeypatch.delenv("UNCERTLR_DATA")
    repo = tmp_path / "checkout" / "repo"
    monkeypatch.setattr(paths_mod, "_REPO_ROOT", repo)
    monkeypatch.setenv("UNCERTLR_CACHE", str(tmp_path / "cache"))
    assert data_dir() == tmp_path / "cache" / "data"
    (repo.parent / "shared" / "data").mkdir(parents=True)
    assert data_dir() == repo.parent / "shared" / "data"


def test_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("UNCERTLR_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("UNCERTLR_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "uncertlr"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "uncertlr"
