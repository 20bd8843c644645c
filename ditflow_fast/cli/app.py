"""``ditflow-fast app``: DiTFlow motion transfer in a web page (Gradio Blocks), on the transfer API.

Needs the optional ``app`` extra (``pip install -e '.[app]' in the checkout``). The page: a reference video (an
upload or a bundled sample), a prompt or prompt embeddings, a model (default: a tiny random CogVideoX
written into the app's cache on first start, which runs on a CPU in seconds), a method and the main
settings; the predicted peak memory before running (and a refusal when it does not fit); progress
per denoising step with the optimisation loss; the result beside the reference, the AMF viewer of both,
Motion Fidelity and a zip of the run folder. One run at a time, others queued (docs/app.md).
"""

from __future__ import annotations

import re
from pathlib import Path

_UNITS = {"b": 1, "kb": 2 ** 10, "mb": 2 ** 20, "gb": 2 ** 30, "tb": 2 ** 40}


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
                   help="memory to plan for (default: the GPU's total; on a CPU the host's available memory); runs "
                   "predicted above it are refused")
    p.add_argument("--max-upload", default="1gb", metavar="SIZE",
                   help="the largest upload the server takes, in b, kb, mb, gb or tb (default: 1gb)")
    p.set_defaults(func=run_app)


def run_app(a) -> int:
    if a.port is not None and not 0 <= a.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {a.port}")
    if a.gpu_memory is not None and a.gpu_memory <= 0:
        raise ValueError(f"--gpu-memory must be positive, got {a.gpu_memory}")
    max_upload = _size(a.max_upload)
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
    ui.launch(demo, host=a.host, port=a.port, max_upload=max_upload)
    return 0


def _size(text: str) -> int:
    """``--max-upload``'s bytes: a whole number and a unit (gradio's own parser takes the same, less the checks)."""
    m = re.fullmatch(r"\s*(\d+)\s*(b|kb|mb|gb|tb)\s*", str(text), re.IGNORECASE)
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"--max-upload must be a positive size such as 500mb or 2gb, got {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]
