"""``ditflow-fast app`` end to end in a real browser: headless Chromium (Debian's ``chromium``, no download)
driven by Python ``playwright``, on the tiny offline model; skipped where chromium, playwright or gradio is absent.

Upload the test clip, run, see the progress with the loss, the result beside the reference, the AMF viewer
and Motion Fidelity; a bad input shows the CLI's message (no traceback); a page closed mid-run stops it and
the same request resumes it; a run predicted not to fit is refused; a second request waits in the queue
with its position. A screenshot is written (``DITFLOW_SCREENSHOT_DIR`` or tmp)."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest

CHROMIUM = next((p for p in (os.environ.get("DITFLOW_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser")) if p), None)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install -y chromium)")]
pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[app]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="python playwright is not installed")

from test_app import cli_argv  # noqa: E402 - tests/app is on the path, as pytest runs it

from ditflow_fast.app import core, ui  # noqa: E402
from ditflow_fast.cli.main import main  # noqa: E402
from ditflow_fast.families.cogvideox import tiny  # noqa: E402
from ditflow_fast.video_io import write_video  # noqa: E402

DONE = "(() => { const s = document.querySelector('#status').innerText; return s.includes('Done') || " \
       "s.includes('Error') || s.includes('Refused') || s.includes('Stopped'); })()"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("app_browser")
    clip = root / "clip.mp4"
    write_video(tiny.moving_square(), clip, fmt="mp4", fps=8)  # the test clip: 9 frames at 48x64
    apps = {}
    for name, gib in (("main", None), ("small", 0.001)):  # "small": plans for a 1 MiB GPU, so every run is refused
        demo = ui.build(root / f"out_{name}", cache=root / "cache", gpu_memory_gib=gib)
        _, url, _ = ui.launch(demo, port=_port(), block=False)
        apps[name] = (demo, url, root / f"out_{name}")
    yield {"clip": clip, "apps": apps, "root": root}
    for demo, _, _ in apps.values():
        demo.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def _page(browser, url, errors):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("request", lambda r: None if r.url.startswith((url, "data:", "blob:", "about:"))
            else errors.append(f"request {r.url}"))  # nothing leaves the machine: no fonts, no telemetry
    page.goto(url)
    page.wait_for_selector("#run")
    page.wait_for_function("document.querySelector('#memory').innerText.includes('redicted peak')", timeout=60000)
    return page


def _fill(page, clip, **fields):
    page.set_input_files("#reference-upload input[type=file]", str(clip))
    page.wait_for_selector("#reference-upload video", timeout=30000)
    for name, value in {"steps": 6, "guided": 2, "iters": 2, **fields}.items():
        page.fill(f"#{name} input, #{name} textarea", str(value))
        page.dispatch_event(f"#{name} input, #{name} textarea", "blur")


def _run_dirs(out: Path) -> list[Path]:
    return sorted((out / "runs").glob("*-*")) if (out / "runs").is_dir() else []


def test_upload_run_see_result_viewer_and_score(served, browser, tmp_path):
    _, url, out = served["apps"]["main"]
    errors: list[str] = []
    page = _page(browser, url, errors)
    try:
        assert "Predicted peak" in page.inner_text("#memory")
        assert page.input_value("#model textarea, #model input").endswith(core.TINY_NAME)  # the offline default
        _fill(page, served["clip"])
        page.click("#run")
        page.wait_for_function(DONE, timeout=180000)
        status = page.inner_text("#status")
        assert "Done" in status, status
        losses = page.inner_text("#losses")
        assert "Denoising step 6 of 6" in losses and "loss (first -> last iteration)" in losses
        assert losses.count("iterations)") == 2  # one row per guided step
        for sel in ("#reference-video video", "#result-video video"):
            page.wait_for_function(f"document.querySelector('{sel}') && "
                                   f"document.querySelector('{sel}').readyState >= 1", timeout=30000)
            assert page.evaluate(f"document.querySelector('{sel}').duration") > 0, sel
        frame = page.frame_locator("#amf-viewer")
        frame.locator("body[data-ready='1']").wait_for(timeout=30000)
        text = frame.locator("body").inner_text()
        assert "reference" in text and "generated" in text and "mean error" in text
        assert "Motion Fidelity" in page.inner_text("#motion-fidelity")
        assert page.locator("#download a").first.get_attribute("href").endswith(".zip")
        assert "Traceback" not in page.inner_text("body")
        shots = Path(os.environ.get("DITFLOW_SCREENSHOT_DIR", tmp_path))
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / "app.png"), full_page=True)
    finally:
        page.close()
    assert errors == []
    (run,) = _run_dirs(out)
    assert (run / "result.mp4").is_file() and (run / "amf" / "amf.html").is_file()


def test_bad_input_shows_the_cli_message(served, browser, capsys):
    _, url, out = served["apps"]["main"]
    errors: list[str] = []
    page = _page(browser, url, errors)
    try:
        _fill(page, served["clip"], frames=10)
        # the memory panel already says something is wrong (the dry run's own check) ...
        page.wait_for_function("document.querySelector('#memory').innerText.includes('--frames 10')", timeout=30000)
        page.click("#run")  # ... and a run says what `ditflow-fast transfer` says for the same arguments
        page.wait_for_function(DONE, timeout=60000)
        status = page.inner_text("#status")
        model, prompt = page.input_value("#model textarea, #model input"), page.input_value("#prompt textarea")
        assert "Traceback" not in page.inner_text("body")
    finally:
        page.close()
    assert errors == []
    hints = core.model_hints(model)
    r = core.Request(video=str(served["clip"]), prompt=prompt, model=model, frames=10, height=hints["height"],
                     width=hints["width"], steps=6, guided_steps=2, opt_iters=2)
    capsys.readouterr()
    assert main(["transfer", *cli_argv(core.prepare(r, out))]) == 2
    cli = capsys.readouterr().err.strip().removeprefix("ditflow-fast transfer: error: ")
    assert "--frames 10" in cli or "10 asked for (--frames)" in cli, cli
    assert status == f"Error: {cli}", (status, cli)


def test_closing_the_page_stops_the_run_and_the_same_request_resumes_it(served, browser):
    _, url, out = served["apps"]["main"]
    long = dict(steps=30, guided=30, iters=4)
    before = set(_run_dirs(out))
    page = _page(browser, url, [])
    _fill(page, served["clip"], **long)
    page.click("#run")
    t0 = time.time()
    while not (set(_run_dirs(out)) - before) and time.time() - t0 < 60:
        time.sleep(0.05)
    (run,) = set(_run_dirs(out)) - before
    while core.read_progress(run)[0] < 2 and time.time() - t0 < 120:
        time.sleep(0.05)
    page.close()  # the run stops at the model's next block; the saved state stays
    stopped = None
    for _ in range(100):
        time.sleep(0.2)
        step = core.read_progress(run)[0]
        if step == stopped:
            break
        stopped = step
    assert 2 <= stopped < 30 and core.run_record(run) is None, "the run went on after the page closed"
    page = _page(browser, url, [])
    try:
        _fill(page, served["clip"], **long)
        page.click("#run")
        page.wait_for_function(DONE, timeout=180000)
        status = page.inner_text("#status")
        assert f"Done (resumed from step {stopped})" in status and run.name in status, status
    finally:
        page.close()
    # after a restart the page lists the runs under --out (from their app_request.json): pick it, resume/show
    page = _page(browser, url, [])
    try:
        page.click("text=Runs under --out")
        page.click("#runs input")
        page.click(f"#runs [role=option][aria-label^='{run.name}']")
        page.click("#resume")
        page.wait_for_function("document.querySelector('#status').innerText.includes('Finished')", timeout=60000)
        assert run.name in page.inner_text("#status")
        page.wait_for_selector("#result-video video", timeout=30000)
    finally:
        page.close()


def test_a_run_that_does_not_fit_is_refused(served, browser):
    _, url, out = served["apps"]["small"]
    page = _page(browser, url, [])
    try:
        assert page.inner_text("#memory").startswith("Refused: the predicted peak")
        _fill(page, served["clip"])
        page.click("#run")
        page.wait_for_function(DONE, timeout=60000)
        assert "Refused: the predicted peak" in page.inner_text("#status")
    finally:
        page.close()
    assert not any((d / "state.safetensors").exists() for d in _run_dirs(out))


def test_a_second_request_waits_in_the_queue(served, browser):
    _, url, out = served["apps"]["main"]
    first, second = _page(browser, url, []), _page(browser, url, [])
    try:
        _fill(first, served["clip"], steps=20, guided=20, iters=4, seed=11)
        _fill(second, served["clip"], seed=12)
        first.click("#run")
        first.wait_for_function("document.querySelector('#losses').innerText.includes('Denoising step')",
                                timeout=60000)
        second.click("#run")
        second.wait_for_function("document.querySelector('#status').innerText.includes('queue')", timeout=30000)
        assert "1/1" in second.inner_text("#status")  # gradio's queue: its position
        second.wait_for_function(DONE, timeout=180000)
        assert "Done" in first.inner_text("#status") and "Done" in second.inner_text("#status")
    finally:
        first.close()
        second.close()
