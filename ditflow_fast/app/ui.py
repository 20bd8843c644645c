"""The Gradio Blocks page of ``ditflow-fast app`` (docs/app.md). Logic lives in :mod:`ditflow_fast.app.core`."""

from __future__ import annotations

import html
import os
import queue
import traceback
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry, no version check: works offline

import gradio as gr  # noqa: E402
from gradio.utils import get_upload_folder  # noqa: E402

from . import core  # noqa: E402

DTYPES = ["auto", "bfloat16", "float16", "float32"]
CSS = "#status {min-height: 2em} #viewer iframe {width: 100%; height: 1100px; border: 1px solid #ccc}"
MAX_UPLOAD = "1gb"  # `app --max-upload`'s default: gradio cuts a bigger upload off as it streams in (HTTP 413)
# The uploads and gradio's copies of what the page showed: every hour, those older than a day are deleted (a
# run copies its inputs to --out/inputs when it starts; a request waits in the queue far less than a day).
DELETE_CACHE = (3600, 86400)


def _theme():
    # system fonts only: the default theme would fetch a web font, and the page must work offline
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def _opt(label: str, value, elem: str | None = None):
    """An optional number: empty means the model's default (a gr.Number would send 0)."""
    return gr.Textbox("" if value is None else str(value), label=label, placeholder="model's default",
                      elem_id=elem, min_width=100)


def _md_error(msg: str) -> str:
    return f"**Error:** {html.escape(msg)}"


def _viewer_html(run_dir: Path) -> str:
    page = Path(run_dir) / "amf" / "amf.html"
    if not page.is_file():
        return "<p>No AMF viewer for this run (see the log).</p>"
    src = html.escape(page.read_text(encoding="utf-8"), quote=True)
    return (f'<iframe id="amf-viewer" title="AMF viewer: reference and result" srcdoc="{src}"></iframe>'
            f"<p>The same page is <code>{html.escape(str(page))}</code> in the run folder (and in the zip).</p>")


def _mf_text(mf: dict | None) -> str:
    if mf is None:
        return ""
    if "unavailable" in mf:
        return f"Motion Fidelity: n/a ({html.escape(mf['unavailable'])})"

    def f(v):
        return "n/a" if v is None else f"{v:+.3f}"
    m = mf.get("moving", {})
    return (f"**Motion Fidelity** (Lucas-Kanade tracks, {mf['frames']} frames, as `ditflow-fast eval`): "
            f"{f(mf['motion_fidelity'])} (symmetric {f(mf['motion_fidelity_symmetric'])}); moving tracks only: "
            f"{f(m.get('motion_fidelity'))} (symmetric {f(m.get('motion_fidelity_symmetric'))})")


def _live_md(step: int, steps: int | None, losses: dict[int, float]) -> str:
    """While it runs: the step reached and each guided step's loss, as ``run``'s progress reports them."""
    rows = [f"**Denoising step {step}" + (f" of {steps}**" if steps else "**")]
    if losses:
        rows += ["", "| denoising step | AMF loss (last Adam iteration) |", "| --- | --- |"]
        rows += [f"| {s} | {v:.4g} |" for s, v in sorted(losses.items())]
    return "\n".join(rows)


def _record_md(rec: dict | None) -> str:
    """A finished run: every guided step's loss, first and last Adam iteration (resumed steps included)."""
    if rec is None:
        return ""
    steps = rec.get("config", {}).get("steps")
    rows = [f"**Denoising step {steps} of {steps}**", "", html.escape(core.image_note(rec))]
    losses = sorted(((int(t), h) for t, h in (rec.get("losses") or {}).items() if h), key=lambda kv: -kv[0])
    if losses:
        rows += ["", "| guided step | timestep | loss (first -> last iteration) |", "| --- | --- | --- |"]
        for n, (t, hist) in enumerate(losses, 1):
            rows.append(f"| {n} | {t} | {hist[0]:.4g} -> {hist[-1]:.4g} ({len(hist)} iterations) |")
    return "\n".join(rows)


def build(out: Path, *, model: str | None = None, cache: Path | None = None,
          gpu_memory_gib: float | None = None) -> gr.Blocks:
    """The Blocks app; runs under ``out/runs``. ``model`` None: the tiny offline model (written into ``cache``)."""
    out = Path(out).expanduser().resolve()
    cache = Path(cache or core.default_cache()).expanduser()
    core.warm_imports()
    tiny = core.ensure_tiny_model(cache)
    samples = core.ensure_samples(cache)
    default_model = model or str(tiny)
    hints = core.model_hints(default_model)

    def request(video, sample, prompt, negative, embeds, model_, method, inject, frames, height, width, steps,
                guided, iters, seed, cfg, block, injection, dtype, device, offload, fps, image=None):
        src = video or (str(samples[sample]) if sample in samples else None)
        return core.Request(video=src, prompt=prompt or "", negative_prompt=negative or "",
                            prompt_embeds=embeds or None, model=model_ or "", image=image or None, method=method,
                            inject_embeds=inject or None,
                            frames=frames, height=height, width=width, steps=steps, guided_steps=guided,
                            opt_iters=iters, seed=seed, cfg=cfg, guidance_block=block, injection=bool(injection),
                            dtype=dtype, device=device, offload=offload, fps=fps)

    def memory(*fields):
        try:
            inputs, opts = core.check_request(request(*fields))
            return html.escape(core.predict_memory(inputs["model"], opts, gpu_memory_gib).message())
        except (ValueError, TypeError) as exc:
            return _md_error(str(exc))
        except Exception as exc:  # noqa: BLE001 - e.g. a hub that cannot be reached: one line, no trace
            return _md_error(f"{type(exc).__name__}: {exc}")

    def show_results(prep: core.Prepared, note: str):
        run_dir = prep.run_dir
        rec = core.run_record(run_dir)
        mf = core.motion_fidelity(run_dir)
        resumed = rec.get("resumed_from_step") if rec else None
        msg = note + (f" (resumed from step {resumed})" if resumed else "") + f" in `{run_dir}`"
        return {status: msg, loss_md: _record_md(rec), ref_video: core.reference_clip(run_dir, prep.opts.fps),
                result_video: rec["result"] if rec and str(rec["result"]).endswith(".mp4") else None,
                viewer: _viewer_html(run_dir), mf_md: _mf_text(mf),
                download: str(core.zip_run(run_dir, out)), runs_dd: gr.update(choices=core.runs(out)),
                inject: gr.update(choices=core.emb_runs(out))}

    def refuse(prep: core.Prepared, msg: str):
        core.discard(prep)  # a refused request leaves no run folder to offer for resuming
        return {status: _md_error(msg)}

    def follow(prep: core.Prepared, progress):
        model = prep.inputs["model"]
        try:
            mem = core.predict_memory(model, prep.opts, gpu_memory_gib)
        except (ValueError, TypeError):
            mem = None  # the run itself says what is wrong, in transfer's words (its checks run in its order)
        if mem is not None and not mem.fits:
            yield refuse(prep, mem.message())
            return
        start, _ = core.read_progress(prep.run_dir)
        steps = core.total_steps(model, prep.opts)
        core.save_request(prep)
        job = core.Job(prep).start()
        live: dict[int, float] = {}
        try:
            yield {status: "Starting" + (f" ({mem.message()})" if mem else "")
                   + (f"; resuming from step {start}" if start > 0 else ""),
                   loss_md: _live_md(start, steps, live), result_video: None, viewer: "", mf_md: "", download: None}
            note = "Running"
            while True:
                try:
                    update = job.updates.get(timeout=0.3)
                except queue.Empty:
                    # a yield now and then: that is where gradio closes this generator when the page goes away
                    yield {status: note if job.started.is_set() else "Waiting for the previous run to stop"}
                    continue
                if update is None:
                    break
                step, steps, loss = update
                if loss is not None:
                    live[step] = loss
                progress((step, steps), desc="denoising", unit="steps")
                note = "Running" if step < steps else "Decoding and measuring the AMF"
                yield {status: note, loss_md: _live_md(step, steps, live)}
        finally:
            if not job.done.is_set():  # the page went away: stop at the next block; the state stays
                job.stop()
        if job.error is not None:
            yield refuse(prep, job.error)
            return
        if job.cancelled:
            yield {status: "Stopped; run it again to resume."}
            return
        yield show_results(prep, "Done")

    def guarded(steps):
        """The page's updates from ``steps``; its errors as one line in the page (a crash's traceback in the log)."""
        try:
            yield from steps
        except (ValueError, TypeError) as exc:
            yield {status: _md_error(str(exc))}
        except Exception as exc:  # noqa: BLE001 - one line in the page, the traceback in the server log
            traceback.print_exc()
            yield {status: _md_error(f"{type(exc).__name__}: {exc}")}

    def run(*fields, progress=gr.Progress()):  # noqa: B008 - gradio's injection idiom
        def steps():
            # only what came through gradio's upload folder, or a sample: never another file on the server
            yield from follow(core.prepare(request(*fields), out, sources=[get_upload_folder(), *samples.values()]),
                              progress)
        yield from guarded(steps())

    def resume(run_dir, progress=gr.Progress()):  # noqa: B008
        def steps():
            prep = core.listed_run(out, run_dir)
            if core.run_record(prep.run_dir) is not None:
                yield show_results(prep, "Finished")
            else:
                yield from follow(prep, progress)
        yield from guarded(steps())

    def start_over(run_dir, progress=gr.Progress()):  # noqa: B008
        def steps():
            yield from follow(core.listed_run(out, run_dir, start_over=True), progress)
        yield from guarded(steps())

    def model_changed(m):
        h = core.model_hints(m or "")
        return (gr.update(value=h.get("frames")), gr.update(value=h.get("height")), gr.update(value=h.get("width")))

    with gr.Blocks(title="DiTFlow motion transfer", analytics_enabled=False, delete_cache=DELETE_CACHE) as demo:
        gr.Markdown("# DiTFlow motion transfer\nThe motion of a reference video, a new prompt: "
                    "`ditflow-fast transfer` in a page. Every run is a resumable folder under "
                    f"`{out / 'runs'}`.")
        with gr.Row():
            with gr.Column(scale=2, min_width=380):
                video = gr.Video(label="Reference video", sources=["upload"], elem_id="reference-upload")
                sample = gr.Dropdown(["(none)", *samples], value="(none)", label="...or a bundled sample",
                                     elem_id="sample")
                # an upload only (a file path, checked again by core.prepare: an upload, its kind and size).
                # image_mode=None: gradio passes the upload's path on as it is (it reads the header only); with
                # a mode it would decode and re-encode any image of another mode before check_image sees it
                image = gr.Image(label="First frame (optional): the new video starts from this image",
                                 type="filepath", image_mode=None, sources=["upload"], elem_id="first-frame")
                prompt = gr.Textbox(label="Prompt", value=hints.get("prompt", ""), elem_id="prompt")
                negative = gr.Textbox(label="Negative prompt", value="")
                embeds = gr.File(label="Prompt embeddings instead (safetensors: 'prompt' [1, L, D], optional "
                                 "'negative', 'empty')", file_types=[".safetensors"], type="filepath")
                model_ = gr.Textbox(label="Model: a local diffusers folder or a hub id", value=default_model,
                                    elem_id="model")
                method = gr.Radio(list(core.METHODS), value="DiTFlow (latent)", label="Method", elem_id="method")
                # only the listed runs (core.prepare checks again): a folder named by a client would be hashed
                inject = gr.Dropdown(core.emb_runs(out), label="Zero-shot: embeddings of an earlier DiTFlow (emb) "
                                     "run", visible=False)
                with gr.Accordion("Settings (empty: the model's default; the others: the paper's)", open=True):
                    with gr.Row():
                        frames = _opt("frames", hints.get("frames"), "frames")
                        height = _opt("height", hints.get("height"))
                        width = _opt("width", hints.get("width"))
                    with gr.Row():
                        steps = _opt("denoising steps", None, "steps")
                        guided = gr.Number(10, label="guided steps", precision=0, elem_id="guided", min_width=100)
                        iters = gr.Number(5, label="Adam iterations / step", precision=0, elem_id="iters",
                                          min_width=100)
                    with gr.Row():
                        seed = gr.Number(0, label="seed", precision=0, elem_id="seed", min_width=100)
                        cfg = _opt("CFG scale", None, "cfg")
                        block = _opt("guidance block", None, "block")
                    with gr.Row():
                        dtype = gr.Dropdown(DTYPES, value="auto", label="dtype", min_width=100)
                        device = gr.Textbox("auto", label="device", min_width=100)
                        fps = gr.Number(8, label="fps", precision=0, min_width=100)
                    with gr.Row():
                        offload = gr.Radio(["none", "model", "group"], value="none", label="offload")
                        injection = gr.Checkbox(True, label="K/V injection at block 0")
                mem_md = gr.Markdown(elem_id="memory")
                run_btn = gr.Button("Run", variant="primary", elem_id="run")
                with gr.Accordion("Runs under --out (resume one after a restart)", open=False):
                    runs_dd = gr.Dropdown(core.runs(out), label="run", elem_id="runs")
                    with gr.Row():
                        resume_btn = gr.Button("Resume / show", elem_id="resume")
                        over_btn = gr.Button("Start over (deletes its saved steps and results)", elem_id="start-over",
                                             variant="stop")
            with gr.Column(scale=3):
                status = gr.Markdown(elem_id="status")
                loss_md = gr.Markdown(elem_id="losses")
                with gr.Row():
                    ref_video = gr.Video(label="Reference (as the run read it)", interactive=False,
                                         elem_id="reference-video")
                    result_video = gr.Video(label="Result", interactive=False, elem_id="result-video")
                mf_md = gr.Markdown(elem_id="motion-fidelity")
                download = gr.File(label="Run folder (zip)", interactive=False, elem_id="download")
                viewer = gr.HTML(elem_id="viewer")

        # image last: the earlier fields keep their places in the API's positional order
        fields = [video, sample, prompt, negative, embeds, model_, method, inject, frames, height, width, steps,
                  guided, iters, seed, cfg, block, injection, dtype, device, offload, fps, image]
        outputs = [status, loss_md, ref_video, result_video, viewer, mf_md, download, runs_dd, inject]
        method.change(lambda m: gr.update(visible=m == core.ZERO_SHOT, choices=core.emb_runs(out)), method, inject,
                      queue=False)
        model_.change(model_changed, model_, [frames, height, width], queue=False)
        guess = [f for f in fields if f is not image]  # not the image: gradio would open it on every call
        for comp in (model_, method, frames, height, width, block, dtype, device, offload, inject):
            comp.change(memory, guess, mem_md, concurrency_limit=4, concurrency_id="memory",
                        show_progress="hidden")
        demo.load(memory, guess, mem_md, concurrency_limit=4, concurrency_id="memory")
        demo.load(lambda: (gr.update(choices=core.runs(out)), gr.update(choices=core.emb_runs(out))), None,
                  [runs_dd, inject], queue=False)  # what ran since the app started (or before a restart)
        run_btn.click(run, fields, outputs, concurrency_limit=1, concurrency_id="device")
        resume_btn.click(resume, runs_dd, outputs, concurrency_limit=1, concurrency_id="device")
        over_btn.click(start_over, runs_dd, outputs, concurrency_limit=1, concurrency_id="device")
    demo.queue(default_concurrency_limit=1)
    demo.ditflow_out = out  # for launch()'s allowed paths
    return demo


def launch(demo: gr.Blocks, *, host: str = "127.0.0.1", port: int = 7860, block: bool = True,
           max_upload: int | str = MAX_UPLOAD):
    # Served: uploads, what the page shows (copied to gradio's cache from the runs and zips, which must be
    # allowed for that and so are served too), nothing else of --out (its input copies, the operator's files).
    # show_error: gradio's own refusals (a path that was not uploaded) say why; the handlers never raise.
    out = demo.ditflow_out
    return demo.launch(server_name=host, server_port=port, allowed_paths=[str(out / "runs"), str(out / "zips")],
                       prevent_thread_lock=not block, show_error=True, ssr_mode=False, quiet=not block,
                       footer_links=[], theme=_theme(), css=CSS, max_file_size=max_upload)
