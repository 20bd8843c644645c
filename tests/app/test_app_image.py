"""The app's first-frame image (image-to-video): through the app's core functions (accepted only as an upload of an
image kind and size the app takes, copied and hashed like the video, passed to the run, named in its record and on
the page), and in headless Chromium (skipped where chromium, playwright or gradio is absent): upload a clip and an
image, run, the record names the image conditioning."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ditflow_fast.app import core, images
from ditflow_fast.guidance import run_key as rk
from ditflow_fast.video_io import read_image

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = dict(steps=4, guided_steps=2, opt_iters=2)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("app_image")
    model = core.ensure_tiny_model(root / "cache")
    samples = core.ensure_samples(root / "cache")
    uploads = root / "uploads"  # stands for gradio's upload folder
    uploads.mkdir()
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(uploads / "first.png")
    video = samples["moving square (81 frames)"]
    embeds = model / "prompt_embeds.safetensors"
    return {"root": root, "model": model, "video": video, "embeds": embeds, "uploads": uploads,
            "sources": [uploads, video, embeds]}


def _request(env, **kw):
    hints = core.model_hints(str(env["model"]))
    base = dict(video=str(env["video"]), model=str(env["model"]), prompt_embeds=str(env["embeds"]),
                frames=hints["frames"], height=hints["height"], width=hints["width"], **FAST)
    return core.Request(**{**base, **kw})


def _files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) if out.exists() else []


def test_an_uploaded_image_runs_and_the_record_says_how(env, tmp_path):
    out = tmp_path / "out"
    png = env["uploads"] / "first.png"
    prep = core.prepare(_request(env, image=str(png)), out, sources=env["sources"])
    copy = Path(prep.inputs["image"])
    assert copy.parent == out / "inputs" and copy.read_bytes() == png.read_bytes()  # survives a restart
    plain = core.prepare(_request(env), out, sources=env["sources"])
    assert plain.run_dir != prep.run_dir and plain.inputs["image"] is None
    # a request without an image keeps the folder name the app gave it before it took images (with the model's
    # fingerprint, which names the run folder of a local model)
    old = {"inputs": {k: v for k, v in plain.inputs.items() if k != "image"}, "options": plain.request["options"],
           "model": {"digest": core.model_fingerprint(str(env["model"]))}}
    assert plain.run_dir.name == core.run_name(old, "DiTFlow (latent)")
    renamed = env["uploads"] / "renamed.png"  # the same bytes under another name: the same run folder
    shutil.copyfile(png, renamed)
    assert core.prepare(_request(env, image=str(renamed)), out, sources=env["sources"]).run_dir == prep.run_dir

    core.save_request(prep)
    job = core.Job(prep).start()
    assert job.done.wait(240), "the tiny run did not finish in 4 minutes"
    assert job.error is None, job.error
    rec = core.run_record(prep.run_dir)
    assert rec["image"].startswith("first-frame anchoring")  # the tiny model is text-to-video
    assert rec["run_key_parts"]["image"] == rk.video_digest(read_image(png, 48, 64)[None])  # this image, resized
    assert core.image_note(rec) == f"First frame: {rec['image']}"
    assert core.image_note({"image": None}).startswith("First frame: none")
    again = core.load_request(prep.run_dir)  # after a restart: the run's request, its image included
    assert again.request == prep.request and again.inputs["image"] == str(copy)


def test_a_request_kept_before_the_app_took_images_still_loads(env, tmp_path):
    prep = core.prepare(_request(env), tmp_path)
    core.save_request(prep)
    path = prep.run_dir / core.REQUEST_FILE
    got = json.loads(path.read_text())
    del got["inputs"]["image"]
    path.write_text(json.dumps(got))
    assert core.load_request(prep.run_dir).inputs == prep.inputs


def test_only_an_uploaded_image_of_an_accepted_kind_and_size_is_taken(env, tmp_path, monkeypatch):
    out = tmp_path / "out"
    outside = tmp_path / "outside.png"  # a server file: not an upload
    shutil.copyfile(env["uploads"] / "first.png", outside)
    link = env["uploads"] / "link.png"  # in the upload folder, pointing out of it
    link.symlink_to(outside)
    fake = env["uploads"] / "clip.png"  # a video under an image's name
    shutil.copyfile(env["video"], fake)
    cut = env["uploads"] / "cut.png"  # a truncated image
    cut.write_bytes((env["uploads"] / "first.png").read_bytes()[:200])
    svg = env["uploads"] / "x.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>')
    try:
        for path, msg in ((outside, "--image: not an upload"), (link, "--image: not an upload"),
                          ("/etc/hostname", "--image: not an upload"), (fake, "not a readable image of PNG"),
                          (cut, "not a readable image of PNG"), (svg, "not a readable image of PNG"),
                          (env["uploads"] / "gone.png", "no such file")):
            with pytest.raises(ValueError, match=msg):
                core.prepare(_request(env, image=str(path)), out, sources=env["sources"])
            assert _files(out) == [], path  # refused before anything is copied
        monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 96 * 128 - 1)
        with pytest.raises(ValueError, match="128x96 pixels, more than"):
            core.prepare(_request(env, image=str(env["uploads"] / "first.png")), out, sources=env["sources"])
        monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 100)
        with pytest.raises(ValueError, match="MiB, more than the"):
            core.prepare(_request(env, image=str(env["uploads"] / "first.png")), out, sources=env["sources"])
        assert _files(out) == []
    finally:
        link.unlink()


# -- in a browser ----------------------------------------------------------------------------------------------
CHROMIUM = next((p for p in (os.environ.get("DITFLOW_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser")) if p), None)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
DONE = ("(() => { const s = document.querySelector('#status').innerText; return s.includes('Done') || "
        "s.includes('Error') || s.includes('Refused') || s.includes('Stopped'); })()")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install -y chromium)")
def test_in_chromium_an_uploaded_first_frame_runs_and_is_named(env, tmp_path):
    pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[app]')")
    sync_api = pytest.importorskip("playwright.sync_api", reason="python playwright is not installed")
    from ditflow_fast.app import ui
    from ditflow_fast.families.cogvideox import tiny
    from ditflow_fast.video_io import write_video

    clip = tmp_path / "clip.mp4"
    write_video(tiny.moving_square(), clip, fmt="mp4", fps=8)  # 9 frames at 48x64
    image = tmp_path / "first.png"
    shutil.copyfile(env["uploads"] / "first.png", image)
    out = tmp_path / "out"
    demo = ui.build(out, cache=env["root"] / "cache")
    _, url, _ = ui.launch(demo, port=_port(), block=False)
    errors: list[str] = []
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on("request", lambda r: None if r.url.startswith((url, "data:", "blob:", "about:"))
                    else errors.append(f"request {r.url}"))  # nothing leaves the machine
            page.goto(url)
            page.wait_for_selector("#run")
            page.set_input_files("#reference-upload input[type=file]", str(clip))
            page.wait_for_selector("#reference-upload video", timeout=30000)
            page.set_input_files("#first-frame input[type=file]", str(image))
            page.wait_for_selector("#first-frame img", timeout=30000)
            for name, value in {"steps": FAST["steps"], "guided": FAST["guided_steps"],
                                "iters": FAST["opt_iters"]}.items():
                page.fill(f"#{name} input, #{name} textarea", str(value))
                page.dispatch_event(f"#{name} input, #{name} textarea", "blur")
            page.click("#run")
            page.wait_for_function(DONE, timeout=180000)
            status, losses = page.inner_text("#status"), page.inner_text("#losses")
            browser.close()
    finally:
        demo.close()
    assert "Done" in status, status
    assert "First frame: first-frame anchoring" in losses, losses
    assert errors == []
    (run,) = (out / "runs").glob("*-*")
    rec = core.run_record(run)
    assert rec["image"].startswith("first-frame anchoring") and "image" in rec["run_key_parts"]
    request = json.loads((run / core.REQUEST_FILE).read_text())
    copy = Path(request["inputs"]["image"])  # the upload, copied under --out/inputs
    assert copy.parent == out / "inputs" and np.array_equal(read_image(copy), read_image(image))


def test_an_image_to_video_model_runs_with_the_uploaded_image(env, tmp_path):
    """A tiny CogVideoX-5B-I2V folder (the image's latent in channels): the app's run takes the image as its input."""
    from ditflow_fast.families.cogvideox import tiny

    model = tiny.save_tiny_model(tmp_path / "i2v", i2v=True)
    req = core.Request(video=str(env["video"]), model=str(model), frames=9, height=48, width=64,
                       prompt_embeds=str(model / "prompt_embeds.safetensors"),
                       image=str(env["uploads"] / "first.png"), **FAST)
    prep = core.prepare(req, tmp_path / "out", sources=[*env["sources"], model])
    core.save_request(prep)
    job = core.Job(prep).start()
    assert job.done.wait(240), "the tiny run did not finish in 4 minutes"
    assert job.error is None, job.error
    assert core.run_record(prep.run_dir)["image"] == "image inputs of the image-to-video model"
