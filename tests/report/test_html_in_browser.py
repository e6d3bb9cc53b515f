"""report.html rendered by a real headless browser (Debian chromium): text, tables and plots show."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from prunekit.report.html import render_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed")

REPORT = {
    "recipe": "demo",
    "model": {"spec": "lenet5"},
    "data": {"name": "fashion-mnist"},
    "created": "2026-11-24T09:00:00+0000",
    "prune": {"verified": True, "max_error": 2e-7, "importance": "l2", "ratio": 0.5},
    "dense": {"params": 61706, "macs": 416520, "accuracy": 0.9, "size_bytes": 247592,
              "layers": {"conv1": {"type": "Conv2d", "macs": 117600, "params": 156},
                         "fc1": {"type": "Linear", "macs": 48000, "params": 48120}}},
    "pruned": {"params": 15738, "macs": 133740, "accuracy": 0.89, "size_bytes": 63696,
               "layers": {"conv1": {"type": "Conv2d", "macs": 58800, "params": 78},
                          "fc1": {"type": "Linear", "macs": 12000, "params": 12060}}},
    "history": {"dense": {"train_loss": [1.0, 0.6, 0.4], "train_acc": [0.6, 0.8, 0.85],
                          "steps": [10, 10, 10]}},
    "timings": {"train": 10.0},
    "environment": {"torch": "2.14.1", "threads": 2},
}  # fmt: skip


def screenshot(page: Path, png: Path) -> np.ndarray:
    from matplotlib.image import imread

    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--window-size=1100,2600", f"--screenshot={png}", page.as_uri()]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return imread(png)[..., :3]


def colored_pixels(image: np.ndarray) -> int:
    """Pixels that are clearly not grey: the plots' lines and bars (text is black/grey)."""
    return int(((image.max(axis=2) - image.min(axis=2)) > 0.25).sum())


def test_report_renders_with_its_plots(tmp_path):
    page = tmp_path / "report.html"
    page.write_text(render_html(REPORT))
    image = screenshot(page, tmp_path / "report.png")
    bare = tmp_path / "bare.html"  # the same page without its images
    bare.write_text(render_html({k: v for k, v in REPORT.items() if k != "history"}))
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    assert "Dense vs pruned" in dom and "verified" in dom
    assert image.shape[0] > 1000 and image.std() > 0.05  # not a blank page
    plots = colored_pixels(image)
    fewer = colored_pixels(screenshot(bare, tmp_path / "bare.png"))
    assert plots > 2000  # the decoded plots put colour on the page
    assert plots > fewer  # and the training curves add some
    assert json.dumps(REPORT)  # the fixture stays JSON, as real reports are
