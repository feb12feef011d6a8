"""report.html rendered by a real headless Chromium: a screenshot that is not blank, every section, every image loaded.

Needs a ``chromium`` binary (Debian's ``chromium`` package; ``.ci/run`` installs it). Locally the
test is skipped when none is found; with ``CI`` or ``UNCERTLR_REQUIRE_BROWSER`` set (``.ci/run``
sets the latter) a missing browser is a failure, so CI can never skip it silently.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from uncertlr.diagnostics import SECTIONS

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
)


@pytest.fixture(scope="module")
def browser() -> str:
    """Path of the Chromium binary (checked before the report fixture is built)."""
    for name in (os.environ.get("UNCERTLR_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        path = name and shutil.which(name)
        if path:
            return path
    msg = "no chromium binary (apt-get install chromium, or set UNCERTLR_CHROMIUM)"
    if os.environ.get("CI") or os.environ.get("UNCERTLR_REQUIRE_BROWSER"):
        pytest.fail(f"{msg}; the browser test must run in CI")
    pytest.skip(msg)


def _chromium(browser, tmp_path, page, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"  # a fresh profile each run
    cmd = [
        browser,
        *FLAGS,
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        *extra,
        page.as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=True)


def test_report_renders_in_chromium(browser, report_run, tmp_path):
    page = report_run / "report.html"
    source = page.read_text(encoding="utf-8")
    num_images = source.count("<img ")
    assert num_images >= 6  # reliability, uncertainty, spread, rank, energy, training

    dom = _chromium(browser, tmp_path, page, "--dump-dom").stdout
    for _, title in SECTIONS:
        assert f"<h2>{title}</h2>" in dom, f"section {title!r} missing from the rendered page"
    assert f'data-images="{num_images}/{num_images}"' in dom  # set by the page's own check after load
    assert dom.count('data-loaded="true"') == num_images and 'data-loaded="false"' not in dom

    shot = tmp_path / "report.png"
    _chromium(browser, tmp_path, page, f"--screenshot={shot}", "--window-size=1200,2400", "--hide-scrollbars")
    with Image.open(shot) as im:
        gray = np.asarray(im.convert("L"), dtype=float)
    assert gray.shape == (2400, 1200)
    assert gray.std() > 20  # not a blank page
    assert (gray < 100).mean() > 0.01  # dark text and plot lines, not only a background colour


def test_browser_check_catches_a_broken_image(browser, report_run, tmp_path):
    """Negative control: the DOM check does report an image that cannot be decoded."""
    source = (report_run / "report.html").read_text(encoding="utf-8")
    broken = re.sub(
        r'src="data:image/png;base64,[^"]{40}', 'src="data:image/png;base64,AAAA', source, count=1
    )
    page = tmp_path / "broken.html"
    page.write_text(broken, encoding="utf-8")
    dom = _chromium(browser, tmp_path, page, "--dump-dom").stdout
    assert dom.count('data-loaded="false"') == 1 and "images failed to load" in dom
