"""The release artifacts: build the sdist and the wheel, check what they hold, and run ``twine check``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import uncertlr

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("build")
IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "*.egg-info", "__pycache__", "runs", "site", "build", "dist", ".hypothesis", "results",
    ".pytest_cache", ".ruff_cache", ".mypy_cache", ".cache",
)  # fmt: skip


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """sdist and wheel built from a copy of the checkout (the wheel is built from the sdist)."""
    src = tmp_path_factory.mktemp("src") / "uncertlr"
    shutil.copytree(ROOT, src, ignore=IGNORE)
    out = tmp_path_factory.mktemp("dist")
    # no isolation: the pinned setuptools of the environment (>= 77), no download
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return out


@pytest.mark.slow
def test_wheel_contents_and_metadata(dist):
    (wheel,) = dist.glob("*.whl")
    assert (
        wheel.name == f"uncertlr-{uncertlr.__version__}-py3-none-any.whl"
    )  # the version comes from one place
    names = set(zipfile.ZipFile(wheel).namelist())
    for must in (
        "uncertlr/py.typed",
        "uncertlr/lightning.py",
        "uncertlr/torch/_adapters.py",
        "uncertlr/metrics/_selective.py",
        "uncertlr_models/text.py",
        f"uncertlr-{uncertlr.__version__}.dist-info/licenses/LICENSE",
    ):
        assert must in names, must
    assert not any(n.startswith(("tests/", "examples/", "benchmarks/", "docs/")) for n in names)
    meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
    meta = Parser().parsestr(zipfile.ZipFile(wheel).read(meta_name).decode())
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta["Version"] == uncertlr.__version__
    extras = set(meta.get_all("Provides-Extra"))
    assert {"jax", "report", "lightning", "docs", "dev"} <= extras
    # the long description is the README, with links and images a package index can resolve
    assert "## Install" in meta.get_payload()


@pytest.mark.slow
def test_sdist_holds_what_a_user_needs_to_build_and_test(dist):
    (sdist,) = dist.glob("*.tar.gz")
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    for must in (
        "LICENSE", "README.md", "CHANGELOG.md", "BENCHMARKS.md", "Makefile", "mkdocs.yml", "pyproject.toml",
        "requirements/constraints.txt", "tests/test_build.py", "tests/torch/test_bnn.py",
        "examples/text_transformer.py", "benchmarks/step_time.py", "docs/index.md", "uncertlr/py.typed",
        "models/text.py",
    ):  # fmt: skip
        assert must in names, must
    assert not any(
        "__pycache__" in n or n.startswith(("runs/", "site/", "benchmarks/results")) for n in names
    )


@pytest.mark.slow
def test_twine_check_passes(dist):
    pytest.importorskip("twine")
    res = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, sorted(dist.iterdir()))],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("PASSED") == 2


def test_readme_links_and_images_are_absolute():
    """A package index renders the README away from the repository: no relative link may remain."""
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)", text) + re.findall(r'src="([^"]+)"', text)
    relative = [t for t in targets if not t.startswith(("https://", "http://", "#", "mailto:"))]
    assert not relative, f"relative links in README.md: {relative}"
