"""``ditflow-fast app`` served on localhost and probed through its HTTP API as a remote client would: a file
path on the server (not an upload) is refused and nothing is copied or served; only the run results are
served, never the rest of ``--out`` or other server files; a refused request leaves no run folder. Skipped
where gradio is absent."""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[app]')")
import httpx  # noqa: E402
from gradio.utils import get_upload_folder  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402

from ditflow_fast.app import core, ui  # noqa: E402
from ditflow_fast.families.cogvideox import tiny  # noqa: E402
from ditflow_fast.video_io import write_video  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
SECRET = "root:x:0:0"  # what /etc/passwd starts with; stands for any file's content


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("app_served")
    clip = root / "clip.mp4"
    write_video(tiny.moving_square(), clip, fmt="mp4", fps=8)
    secret = root / "etc_passwd"  # a server file; /etc/passwd itself may differ from machine to machine
    secret.write_text(SECRET + ":root:/root:/bin/bash\n")
    apps = {}
    for name, gib in (("main", None), ("small", 0.001)):  # "small": every run is predicted not to fit
        out = root / f"out_{name}"
        out.mkdir()
        (out / "notes.txt").write_text(SECRET)  # the operator's own file in --out
        demo = ui.build(out, cache=root / "cache", gpu_memory_gib=gib)
        limit = {"small": {"max_upload": "1mb"}}.get(name, {})  # "main": the default, 1gb
        _, url, _ = ui.launch(demo, port=_port(), block=False, **limit)
        apps[name] = (demo, url, out)
    link_dir = Path(get_upload_folder()) / f"ditflow-test-{uuid.uuid4().hex}"
    link_dir.mkdir(parents=True)
    link = link_dir / "clip.mp4"
    link.symlink_to(secret)  # in the upload folder, pointing out of it
    yield {"clip": clip, "secret": secret, "link": link, "apps": apps, "model": str(root / "cache" / core.TINY_NAME),
           "samples": core.ensure_samples(root / "cache"), "root": root}
    link.unlink()
    link_dir.rmdir()
    for demo, _, _ in apps.values():
        demo.close()


def _fields(served, video=None, embeds=None, sample="(none)", image=None, **kw):
    hints = core.model_hints(served["model"])
    f = dict(video=video, sample=sample, prompt=hints.get("prompt", "") or "a dog", negative="", embeds=embeds,
             model=served["model"], method="DiTFlow (latent)", inject=None, frames=str(hints["frames"]),
             height=str(hints["height"]), width=str(hints["width"]), steps="2", guided=1, iters=1, seed=0, cfg="",
             block="", injection=True, dtype="auto", device="auto", offload="none", fps=8, image=image)
    return list({**f, **kw}.values())


def _raw_call(url: str, data: list) -> tuple[str, str]:
    """POST to the run endpoint as a hand-written client would (no upload first): ``(event, data)``."""
    eid = httpx.post(url + "gradio_api/call/run", json={"data": data}).json()["event_id"]
    lines = httpx.get(url + f"gradio_api/call/run/{eid}", timeout=240).text.splitlines()
    events = [(e[len("event: "):], d[len("data: "):]) for e, d in zip(lines, lines[1:], strict=False)
              if e.startswith("event: ") and d.startswith("data: ")]
    return events[-1]


def _tree(out: Path) -> set[str]:
    """The files under ``out`` and its run folders (the empty ``inputs/`` and ``runs/`` folders do not count)."""
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() or p.parent == out / "runs"}


def _file_data(path) -> dict:
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}


def test_server_paths_are_refused(served):
    demo, url, out = served["apps"]["main"]
    before = _tree(out)
    for path in ("/etc/passwd", served["secret"], out / "notes.txt", served["link"]):
        for field in ("video", "embeds", "image"):
            event, data = _raw_call(url, _fields(served, **{field: _file_data(path)}))
            assert event == "error", (path, field, event, data)
            msg = json.loads(data)["error"]
            assert msg and "not uploaded" in msg, (path, field, msg)  # a clear refusal, not a bare "error"
            assert SECRET not in data
            assert _tree(out) == before, (path, field)  # nothing copied to --out/inputs, no run folder


def test_only_the_run_results_are_served(served):
    demo, url, out = served["apps"]["main"]
    for path in ("/etc/passwd", served["secret"], out / "notes.txt"):
        r = httpx.get(url + f"gradio_api/file={path}")
        assert r.status_code == 403 and SECRET not in r.text, (path, r.status_code)
    # a real upload runs, its results are served, and its copy under --out/inputs is not
    client = Client(url, verbose=False, download_files=False)
    got = client.predict(*_fields(served, video=handle_file(served["clip"])), api_name="/run")
    status, zipped = got[0], got[6]
    assert status.startswith("Done"), status
    assert httpx.get(zipped["url"]).status_code == 200
    copies = list((out / "inputs").iterdir())  # (the run folders are served: the page offers their zips anyway)
    assert copies
    for p in copies:
        assert httpx.get(url + f"gradio_api/file={p}").status_code == 403, p


def test_handler_refuses_paths_that_are_not_uploads(served):
    """The page's own check, for a caller that skips gradio's (``Blocks`` called from Python does)."""
    demo, url, out = served["apps"]["main"]
    run = next(f.fn for f in demo.fns.values() if f.api_name == "run")
    before = _tree(out)
    for path in ("/etc/passwd", served["secret"], out / "notes.txt", served["link"]):
        for field in ("video", "embeds", "image"):
            msgs = [v for d in run(*_fields(served, **{field: str(path)})) for v in d.values() if isinstance(v, str)]
            assert any("not an upload" in m for m in msgs), (path, field, msgs)
            assert not any(SECRET in m for m in msgs)
            assert _tree(out) == before, (path, field)


def test_refused_requests_leave_no_run_folder(served):
    for name, kw in (("main", dict(frames="10")),  # transfer's own refusal, after the request was accepted
                     ("main", dict(prompt="")),     # likewise: no prompt
                     ("small", {})):                # predicted not to fit
        demo, url, out = served["apps"][name]
        before = _tree(out)
        for fields in (_fields(served, video=handle_file(served["clip"]), **kw),
                       _fields(served, sample=next(iter(served["samples"])), **kw)):
            status = Client(url, verbose=False).predict(*fields, api_name="/run")[0]
            assert ("Error" in status or "Refused" in status) and "not an upload" not in status, (name, kw, status)
            assert _tree(out) == before, (name, kw, status)
            assert not [label for label, _ in core.runs(out) if "stopped at step 0" in label]



def test_zero_shot_takes_only_a_listed_emb_run(served):
    demo, url, out = served["apps"]["main"]
    elsewhere = served["root"] / "elsewhere"  # a server folder a client names: it would be hashed whole
    elsewhere.mkdir(exist_ok=True)
    (elsewhere / "data.bin").write_bytes(b"x" * 1000)
    before = _tree(out)
    event, data = _raw_call(url, _fields(served, sample=next(iter(served["samples"])), method=core.ZERO_SHOT,
                                         inject=str(elsewhere)))
    assert event == "error" and "not in the list of choices" in json.loads(data)["error"], (event, data)
    # the page's own check, for a caller that skips gradio's
    run = next(f.fn for f in demo.fns.values() if f.api_name == "run")
    fields = _fields(served, sample=next(iter(served["samples"])), method=core.ZERO_SHOT, inject=str(elsewhere))
    msgs = [v for d in run(*fields) for v in d.values() if isinstance(v, str)]
    assert any("--inject-embeds: not the embeddings of a finished DiTFlow (emb) run" in m for m in msgs), msgs
    assert _tree(out) == before


def test_an_image_reaches_the_check_as_uploaded(served, tmp_path):
    """Gradio hands the first-frame upload on as it is, whatever its mode (a grey or palette PNG is not decoded
    and re-encoded as RGB before ``core.check_image`` reads its header), and the memory panel never opens it."""
    from gradio.data_classes import ImageData
    from PIL import Image

    demo, _, _ = served["apps"]["main"]
    image = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "first-frame")
    for mode in ("L", "P", "RGBA", "I;16"):
        path = tmp_path / f"{mode.replace(';', '')}.png"
        Image.new(mode, (16, 8)).save(path)
        assert image.preprocess(ImageData(path=str(path), orig_name=path.name)) == str(path), mode
    memory = [f for f in demo.fns.values() if f.name == "memory"]
    assert memory and all(image not in f.inputs for f in memory)


def test_uploads_are_limited_in_size_and_cleaned_up(served):
    for name, limit in (("main", 2 ** 30), ("small", 2 ** 20)):
        demo, url, _ = served["apps"][name]
        assert demo.max_file_size == limit
        assert demo.delete_cache == ui.DELETE_CACHE  # gradio's copies go after a day (and when the app stops)
    _, url, _ = served["apps"]["small"]
    r = httpx.post(url + "gradio_api/upload", files={"files": ("big.mp4", b"0" * (2 ** 20 + 1))})
    assert r.status_code == 413 and "maximum allowed size" in r.text
    r = httpx.post(url + "gradio_api/upload", files={"files": ("small.mp4", b"0" * 1000)})
    assert r.status_code == 200
