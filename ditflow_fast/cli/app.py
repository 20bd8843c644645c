"""``ditflow-fast app``: DiTFlow motion transfer in a web page (Gradio Blocks), on the transfer API.

Needs the optional ``app`` extra (``pip install -e '.[app]' in the checkout``). The page: a reference video (an
upload or a bundled sample), a prompt or prompt embeddings, a model (default: a tiny random CogVideoX
written into the app's cache on first start, which runs on a CPU in seconds), a method and the main
settings; the predicted peak GPU memory before running (and a refusal when it does not fit); progress
per denoising step with the optimisation loss; the result beside the reference, the AMF viewer of both,
Motion Fidelity and a zip of the run folder. One run at a time, others queued (docs/app.md).
"""

from __future__ import annotations

from pathlib import Path


def add_app_parser(sub) -> None:
    p = sub.add_parser("app", help="the web app: motion transfer in a browser (needs the 'app' extra: gradio)",
                       description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--model", help="the model pre-filled in the page (default: the tiny offline model)")
    p.add_argument("--out", default="ditflow_app", help="runs go to OUT/runs/<method>-<hash> (resumable)")
    p.add_argument("--cache", help="where the tiny model and the samples are written (default: "
                   "$DITFLOW_APP_CACHE or ~/.cache/ditflow_fast/app)")
    p.add_argument("--gpu-memory", type=float, metavar="GIB",
                   help="GPU memory to plan for (default: the device's total); runs predicted above it are refused")
    p.set_defaults(func=run_app)


def run_app(a) -> int:
    if a.port is not None and not 0 <= a.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {a.port}")
    if a.gpu_memory is not None and a.gpu_memory <= 0:
        raise ValueError(f"--gpu-memory must be positive, got {a.gpu_memory}")
    try:
        import gradio  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"ditflow-fast app needs gradio: pip install -e '.[app]' in the checkout ({exc})") from None
    from ..app import ui
    from ..atomic import check_writable

    out = Path(a.out).expanduser()
    check_writable(out, option="--out", folder=True)
    demo = ui.build(out, model=a.model, cache=Path(a.cache).expanduser() if a.cache else None,
                    gpu_memory_gib=a.gpu_memory)
    ui.launch(demo, host=a.host, port=a.port)
    return 0
