"""The AMF viewer page in a real browser: headless Chromium (Debian's ``chromium``) driven by Python
``playwright`` (no browser download: ``executable_path``); skipped where either is absent.

No console errors, no network request, the dropdown and the slider change the drawn pixels, the
page's colour wheel is the PNG's, and a screenshot is written (``DITFLOW_SCREENSHOT_DIR`` or tmp)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ditflow_fast.cli.main import main
from ditflow_fast.video_io import write_video
from ditflow_fast.viewer.colour import flow_to_rgb

CHROMIUM = next((p for p in (os.environ.get("DITFLOW_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser")) if p), None)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install -y chromium)")]


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    from ditflow_fast.toyworld.world import reference_clips

    root = tmp_path_factory.mktemp("browser")
    clip = reference_clips(0, 1)[0]
    write_video((np.clip(clip.video.transpose(0, 2, 3, 1), 0, 1) * 255 + 0.5).astype(np.uint8), root / "clip",
                fmt="frames")
    assert main(["amf", "--video", str(root / "clip"), "--out", str(root / "one"), "--device", "cpu"]) == 0
    # a two-field page (what transfer writes): the clip against its time reversal
    from ditflow_fast.toyworld.amf_model import default_model, open_toy
    from ditflow_fast.viewer.output import load_amf, write_viewer
    from ditflow_fast.viewer.reference import reference_amf

    h = open_toy(default_model(), "cpu")
    from PIL import Image

    frames = np.stack([np.asarray(Image.open(p).convert("RGB"))
                       for p in sorted((root / "clip").iterdir())])
    amf, info = load_amf(root / "one" / "amf.safetensors")
    rev, _ = reference_amf(h, frames[::-1].copy())
    write_viewer(root / "two", [("reference", amf, frames), ("generated", rev, frames[::-1])], info, title="two")
    return root


def _browser(tmp_path):
    sync = pytest.importorskip("playwright.sync_api", reason="python playwright is not installed").sync_playwright
    return sync, tmp_path / "profile"


def _open(p, profile, url, errors):
    ctx = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, args=ARGS, headless=True,
                                               viewport={"width": 1280, "height": 760})
    page = ctx.new_page()
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning")
            else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else errors.append(f"request {r.url}"))
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=30000)
    return ctx, page


def _pixels(page, canvas="view0"):
    return hashlib.sha1(page.evaluate(f"document.getElementById('{canvas}').toDataURL()").encode()).hexdigest()


def test_viewer_in_headless_chromium(pages, tmp_path):
    sync, profile = _browser(tmp_path)
    errors: list[str] = []
    with sync() as p:
        ctx, page = _open(p, profile, (pages / "one" / "amf.html").as_uri(), errors)
        try:
            assert page.evaluate("window.ditflowViewer.state") == {"i": 0, "j": 1}
            start = _pixels(page)
            page.select_option("#first", "3")
            after_dropdown = _pixels(page)
            page.fill("#second", "7")  # a range input: fill sets the value and fires input/change
            after_slider = _pixels(page)
            assert page.evaluate("window.ditflowViewer.state") == {"i": 3, "j": 7}
            assert len({start, after_dropdown, after_slider}) == 3, "dropdown and slider change the drawn image"
            assert "pair 3 -> 7" in page.inner_text("#view0-mean")
            page.check("#arrows")
            assert _pixels(page) != after_slider
            # the page's colour wheel is the Python one
            probe = [(1.0, 0.0), (0.3, -0.8), (-2.0, 1.0), (0.0, 0.0), (5.0, 5.0)]
            js = page.evaluate("(ps) => ps.map(([x, y]) => window.ditflowViewer.flowColour(x, y, 2.0))", probe)
            want = flow_to_rgb(np.array([x for x, _ in probe]), np.array([y for _, y in probe]), 2.0)
            assert np.abs(np.array(js) - want.astype(int)).max() <= 1
            shots = Path(os.environ.get("DITFLOW_SCREENSHOT_DIR", tmp_path))
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / "amf_viewer.png"), full_page=True)
        finally:
            ctx.close()
    assert errors == []


def test_side_by_side_viewer_in_headless_chromium(pages, tmp_path):
    sync, profile = _browser(tmp_path)
    errors: list[str] = []
    with sync() as p:
        ctx, page = _open(p, profile, (pages / "two" / "amf.html").as_uri(), errors)
        try:
            err0 = _pixels(page, "view-error")
            page.click("#error-table td[data-i='2'][data-j='6']")
            assert page.evaluate("window.ditflowViewer.state") == {"i": 2, "j": 6}
            assert _pixels(page, "view-error") != err0
            assert "mean error" in page.inner_text("#view-error-mean")
            shots = Path(os.environ.get("DITFLOW_SCREENSHOT_DIR", tmp_path))
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / "amf_viewer_side_by_side.png"), full_page=True)
        finally:
            ctx.close()
    assert errors == []
