"""Packaging and public-surface hygiene."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "uncertlr").rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert cfg["package-dir"]["uncertlr_models"] == "models"


def test_every_file_the_package_reads_is_shipped():
    """Files in the package that are not Python (the C kernels, py.typed) are listed as package data."""
    from fnmatch import fnmatch

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    files = [
        p
        for p in (ROOT / "uncertlr").rglob("*")
        if p.is_file() and p.suffix not in {".py", ".pyc"} and "__pycache__" not in p.parts
    ]
    assert files, "expected py.typed at least"
    for f in files:
        pkg, name = ".".join(f.parent.relative_to(ROOT).parts), f.name
        assert any(fnmatch(name, pat) for pat in data.get(pkg, [])), f"add {name} to package-data of {pkg}"


def test_top_level_import_is_backend_neutral():
    code = "import sys, uncertlr; uncertlr.metrics; print(sorted(m for m in ('torch', 'jax', 'pyro') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


def test_public_names_exist():
    import uncertlr
    import uncertlr.torch

    for mod in (
        uncertlr,
        uncertlr.torch,
        uncertlr.metrics,
        uncertlr.select,
        uncertlr.priors,
        uncertlr.likelihoods,
    ):
        for name in mod.__all__:
            assert hasattr(mod, name), f"{mod.__name__}.{name}"
