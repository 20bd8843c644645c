"""What the web app does, without gradio: inputs -> ``transfer``'s own arguments, run folders, memory, jobs.

Every run is ``ditflow-fast transfer`` itself: the page's fields become an argv for the transfer parser
(:func:`transfer_namespace`, so defaults, choices and types are the CLI's) and the job calls
:func:`ditflow_fast.cli.transfer.run_transfer` with it. The run folder is named by a hash of that argv
with every input file replaced by its content hash, so the same inputs always land in the same folder:
a run stopped by closing the page or restarting the app resumes from transfer's saved state when it is
asked for again (or from the list of runs, which keeps each run's argv in ``app_request.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .results import (  # noqa: F401 - the run folders' results, re-exported for the page
    MOTION_FILE,
    emb_runs,
    motion_fidelity,
    read_progress,
    reference_clip,
    run_record,
    zip_run,
)

TINY_NAME = "tiny-cogvideox"
TINY_SIZE = {"frames": 9, "height": 48, "width": 64}
TINY_PROMPT = "a dog running on a beach"
APP_JSON = "app.json"  # in a model folder the app wrote: the sizes and prompt to pre-fill
REQUEST_FILE = "app_request.json"

# The methods of the paper's comparison, as transfer options (docs/guidance.md).
METHODS = {
    "DiTFlow (latent)": [],
    "DiTFlow (emb)": ["--opt-mode", "emb"],
    "Zero-shot (embeddings of an earlier emb run)": ["--opt-mode", "emb"],  # + --inject-embeds DIR
    "MOFT": ["--loss", "moft"],
    "SMM": ["--loss", "smm"],
    "No guidance": ["--no-guidance"],
}
ZERO_SHOT = "Zero-shot (embeddings of an earlier emb run)"
SLUGS = {"DiTFlow (latent)": "latent", "DiTFlow (emb)": "emb", ZERO_SHOT: "zeroshot", "MOFT": "moft", "SMM": "smm",
         "No guidance": "noguide"}


def default_cache() -> Path:
    env = os.environ.get("DITFLOW_APP_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ditflow_fast" / "app"


# -- the offline default model and the samples -------------------------------------------------------
def _has_transformers() -> bool:
    try:
        import tokenizers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def ensure_tiny_model(cache: Path) -> Path:
    """A tiny random CogVideoX diffusers folder (``ditflow_fast.families.cogvideox.tiny``) in ``cache``, written once.

    With ``transformers`` installed it has a tiny T5 and tokenizer, so a typed prompt works; it always has
    ``prompt_embeds.safetensors``. ``app.json`` holds the sizes it runs at (9 frames at 48x64)."""
    from ..atomic import atomic_dir
    from ..families.cogvideox.tiny import save_tiny_model

    path = Path(cache) / TINY_NAME
    if (path / APP_JSON).is_file():
        return path
    text = _has_transformers()
    with atomic_dir(path) as tmp:
        save_tiny_model(tmp, text_encoder=text)
        (tmp / APP_JSON).write_text(json.dumps({**TINY_SIZE, "prompt": TINY_PROMPT if text else "",
                                                "text_encoder": text}))
    return path


def model_hints(model: str) -> dict:
    """The sizes and prompt to pre-fill for ``model`` (a folder the app wrote has them), else ``{}``."""
    try:
        return json.loads((Path(model).expanduser() / APP_JSON).read_text())
    except (OSError, ValueError):
        return {}


def ensure_samples(cache: Path) -> dict[str, Path]:
    """Bundled reference clips, written once: a moving square (81 frames, enough for every model's
    default length) and a toy-world clip (9 frames: the tiny model's length)."""
    import numpy as np

    from ..families.cogvideox.tiny import moving_square
    from ..video_io import write_video

    root = Path(cache) / "samples"
    square = root / "moving_square.mp4"
    if not square.is_file():
        write_video(moving_square(frames=81, height=96, width=144), square, fmt="mp4", fps=8)
    from ..toyworld.world import reference_clips

    clip = reference_clips(0, 1, frames=9)[0]
    toy = root / f"toyworld_{clip.name.replace(' ', '_')}.mp4"
    if not toy.is_file():
        video = (np.clip(clip.video.transpose(0, 2, 3, 1), 0, 1) * 255 + 0.5).astype(np.uint8)
        write_video(video, toy, fmt="mp4", fps=8)
    return {"moving square (81 frames)": square, f"toy world: {clip.name} (9 frames)": toy}


# -- the page's fields -> transfer's arguments ---------------------------------------------------------
@dataclass
class Request:
    """What the page asks for. ``None`` / ``""`` means "the model's default" (as omitting the option does)."""

    video: str | None = None
    prompt: str = ""
    negative_prompt: str = ""
    prompt_embeds: str | None = None
    model: str = ""
    method: str = "DiTFlow (latent)"
    inject_embeds: str | None = None
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int | str | None = None  # transfer's default: the model's (50; Wan2.2 A14B 40)
    guided_steps: int | None = 10
    opt_iters: int | None = 5
    seed: int | None = 0
    cfg: float | str | None = None
    guidance_block: int | None = None
    injection: bool = True
    dtype: str | None = None
    device: str | None = None
    offload: str = "none"
    fps: int | None = 8
    extra: list[str] = field(default_factory=list)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # the CLI would exit 2 with this text; the page shows it
        raise ValueError(message)


def transfer_parser() -> argparse.ArgumentParser:
    from ..cli.transfer import add_transfer_parser

    p = _Parser(prog="ditflow-fast", add_help=False)
    add_transfer_parser(p.add_subparsers(dest="command", parser_class=_Parser))
    return p


def transfer_namespace(argv: list[str]) -> argparse.Namespace:
    """``ditflow-fast transfer ARGV`` parsed by transfer's own parser (a bad value: ``ValueError``)."""
    return transfer_parser().parse_args(["transfer", *argv])


def _int(name: str, v):
    if isinstance(v, str):
        v = v.strip()
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        raise TypeError(f"--{name} must be an integer, got {v!r}")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"--{name} must be an integer, got {v!r}") from None
    if f != int(f):
        raise ValueError(f"--{name} must be an integer, got {v}")
    return int(f)


def request_argv(r: Request) -> list[str]:
    """The transfer options (less ``--out``) for ``r``; the method's options included."""
    if r.method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {r.method!r}")
    if not (r.model or "").strip():
        raise ValueError("--model is required: a local diffusers folder or a hub id")
    argv = ["--model", r.model.strip()]
    if r.video:
        argv += ["--video", str(r.video)]
    if (r.prompt or "").strip():
        argv += ["--prompt", r.prompt.strip()]
    if (r.negative_prompt or "").strip():
        argv += ["--negative-prompt", r.negative_prompt.strip()]
    if r.prompt_embeds:
        argv += ["--prompt-embeds", str(r.prompt_embeds)]
    argv += METHODS[r.method]
    if r.method == ZERO_SHOT:
        if not r.inject_embeds:
            raise ValueError("--inject-embeds is required for zero-shot: pick the embeddings of an earlier "
                             "DiTFlow (emb) run")
        argv += ["--inject-embeds", str(r.inject_embeds)]
    for name in ("frames", "height", "width", "steps", "guided-steps", "opt-iters", "seed", "guidance-block", "fps"):
        v = _int(name, getattr(r, name.replace("-", "_")))
        if v is not None:
            argv += [f"--{name}", str(v)]
    cfg = r.cfg.strip() if isinstance(r.cfg, str) else r.cfg
    if cfg is not None and cfg != "":
        try:
            argv += ["--cfg", str(float(cfg))]
        except ValueError:
            raise ValueError(f"--cfg must be a number, got {cfg!r}") from None
    if not r.injection:
        argv.append("--no-injection")
    if r.dtype and r.dtype != "auto":
        argv += ["--dtype", r.dtype]
    if r.device and r.device.strip() and r.device.strip() != "auto":
        argv += ["--device", r.device.strip()]
    if r.offload and r.offload != "none":
        argv += ["--offload", r.offload]
    return argv + list(r.extra)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(path)).encode() + b"\0")
                h.update(_file_digest(p).encode())
        return h.hexdigest()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stash(src: str | None, out: Path, made: list[Path]) -> str | None:
    """A content-addressed copy of an uploaded file under ``out/inputs`` (uploads are temporary files;
    the copy survives a restart, so the run resumes). Folders and missing paths are left to transfer."""
    if not src:
        return src
    p = Path(src).expanduser()
    if not p.is_file():
        return src  # transfer says what is wrong with it, in its own words
    digest = _file_digest(p)[:16]
    dest = out / "inputs" / f"{digest}{p.suffix.lower()}"
    if not dest.is_file():
        from ..atomic import atomic_path

        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest) as tmp:
            shutil.copyfile(p, tmp)
        made.append(dest)
    return str(dest)


def _from(path: str, sources: list, option: str) -> str:
    """``path`` resolved, if it lies in one of ``sources`` (folders or files); else ``ValueError``. Resolved,
    so a symlink placed in the upload folder cannot point the app at another file."""
    real = Path(os.path.realpath(path))
    if any(real.is_relative_to(os.path.realpath(s)) for s in sources):
        return str(real)
    raise ValueError(f"{option}: not an upload or a bundled sample (the app reads no other file on this server)")


def run_name(argv: list[str], method: str) -> str:
    """``<method>-<hash>``: the hash of ``argv`` with each existing input path replaced by its content hash."""
    parts, files = [], {"--video", "--prompt-embeds", "--inject-embeds"}
    for i, a in enumerate(argv):
        if i and argv[i - 1] in files and Path(a).exists():
            parts.append("sha256:" + _file_digest(Path(a)))
        else:
            parts.append(a)
    return f"{SLUGS.get(method, 'run')}-{hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]}"


@dataclass
class Prepared:
    argv: list[str]
    namespace: argparse.Namespace
    run_dir: Path
    made: list[Path] = field(default_factory=list)  # the input copies this request wrote (see discard)


def prepare(r: Request, out: Path, sources: list | None = None) -> Prepared:
    """Transfer's namespace and run folder for ``r`` (uploads copied under ``out/inputs``). ``sources``:
    where the input files may come from (the page's upload folder and samples); nothing is written for a
    request refused here."""
    out = Path(out)
    if sources is not None:
        r = Request(**{**r.__dict__, "video": r.video and _from(r.video, sources, "--video"),
                       "prompt_embeds": r.prompt_embeds and _from(r.prompt_embeds, sources, "--prompt-embeds")})
    transfer_namespace([*request_argv(r), "--out", str(out)])  # a bad field: refused before any copy
    made: list[Path] = []
    r = Request(**{**r.__dict__, "video": _stash(r.video, out, made),
                   "prompt_embeds": _stash(r.prompt_embeds, out, made)})
    argv = request_argv(r)
    run_dir = out / "runs" / run_name(argv, r.method)
    full = [*argv, "--out", str(run_dir), "--quiet"]
    return Prepared(full, transfer_namespace(full), run_dir, made)


def discard(prep: Prepared) -> None:
    """Undo what a refused request wrote: its input copies, and its run folder when that holds nothing but
    the request record (a refusal has nothing to resume; a run with saved steps keeps them)."""
    for p in prep.made:
        p.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        if [p.name for p in prep.run_dir.iterdir()] == [REQUEST_FILE]:
            (prep.run_dir / REQUEST_FILE).unlink()
            prep.run_dir.rmdir()


def warm_imports() -> None:
    """Import on the calling thread what runs import lazily: diffusers' (and transformers') lazy modules are
    not thread-safe, and the page's memory prediction and a run may first touch them at the same time."""
    import importlib

    import diffusers

    for name in ("CogVideoXTransformer3DModel", "AutoencoderKLCogVideoX", "CogVideoXDDIMScheduler",
                 "CogVideoXDPMScheduler", "WanTransformer3DModel", "AutoencoderKLWan", "UniPCMultistepScheduler"):
        getattr(diffusers, name, None)
    for mod in ("diffusers.models.embeddings", "diffusers.models.attention_processor",
                "diffusers.models.transformers.transformer_wan", "diffusers.models.attention_dispatch",
                "ditflow_fast.families", "ditflow_fast.families.cogvideox", "ditflow_fast.families.wan",
                "ditflow_fast.guidance.loop", "ditflow_fast.families.cogvideox.memory",
                "ditflow_fast.families.wan.memory",
                "ditflow_fast.viewer.transfer", "ditflow_fast.viewer.motion", "ditflow_fast.video_io"):
        with contextlib.suppress(ImportError):
            importlib.import_module(mod)
    if _has_transformers():
        import transformers

        for name in ("T5EncoderModel", "T5TokenizerFast", "AutoTokenizer", "PreTrainedTokenizerFast",
                     "UMT5EncoderModel"):
            with contextlib.suppress(ImportError, AttributeError):
                getattr(transformers, name)


def total_steps(namespace: argparse.Namespace) -> int | None:
    """The run's denoising steps: ``--steps``, else the model's default resolved as ``run_transfer`` does
    (None when that cannot be read without running)."""
    if namespace.steps:
        return int(namespace.steps)
    try:
        from ..cli import transfer as tc
        from ..transfer_api.checks import check_device, has_second_expert, model_configs
        from ..families import detect, resolve_model_ref

        fam = detect(namespace.model)
        ref = resolve_model_ref(namespace.model)[0]
        tcfg, _ = model_configs(fam, ref)
        if has_second_expert(fam, ref):
            tcfg = {**tcfg, "experts": 2}
        return int(tc._config(namespace).resolve(tcfg, device=check_device(namespace.device), family=fam).steps)
    except Exception:  # noqa: BLE001 - only the progress bar's total; the run says what is wrong
        return None


# -- predicted memory ---------------------------------------------------------------------------------
class _ThreadStreams(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` stand-in: a thread that registered a buffer writes there, others pass through."""

    def __init__(self, real):
        self.real, self.local = real, threading.local()

    def write(self, s):
        buf = getattr(self.local, "buf", None)
        return (buf if buf is not None else self.real).write(s)

    def flush(self):
        buf = getattr(self.local, "buf", None)
        (buf if buf is not None else self.real).flush()

    def isatty(self):
        return False


_STREAM_LOCK = threading.Lock()


@contextlib.contextmanager
def capture_output():
    """What this thread prints (stdout and stderr), other threads unaffected."""
    with _STREAM_LOCK:
        for name in ("stdout", "stderr"):
            if not isinstance(getattr(sys, name), _ThreadStreams):
                setattr(sys, name, _ThreadStreams(getattr(sys, name)))
    buf = io.StringIO()
    streams = (sys.stdout, sys.stderr)
    for s in streams:
        s.local.buf = buf
    try:
        yield buf
    finally:
        for s in streams:
            s.local.buf = None


@dataclass
class Memory:
    table: str
    peak_bytes: int | None
    device: str
    device_bytes: int | None

    @property
    def fits(self) -> bool:
        return self.peak_bytes is None or self.device_bytes is None or self.peak_bytes <= self.device_bytes

    def message(self) -> str:
        gib = 2 ** 30
        peak = "unknown" if self.peak_bytes is None else f"{self.peak_bytes / gib:.2f} GiB"
        if self.device_bytes is None:
            return f"Predicted peak GPU memory: {peak} (the run goes to {self.device}: no GPU limit applies here)"
        have = f"{self.device_bytes / gib:.2f} GiB"
        if self.fits:
            return f"Predicted peak GPU memory: {peak} of the {have} of {self.device}: fits"
        return (f"Refused: the predicted peak GPU memory, {peak}, does not fit the {have} of {self.device}. "
                "Use fewer frames or a smaller size, offload (model or group), or a device with more memory.")


_DRY_LOCK = threading.Lock()
_PEAK = re.compile(r"^predicted peak\s+([0-9.]+) GiB", re.M)


def _device_limit(namespace, gpu_memory_gib: float | None) -> tuple[str, int | None]:
    import torch

    from ..transfer_api.checks import check_device

    dev = check_device(namespace.device)
    if dev.type != "cuda":
        return str(dev), (None if gpu_memory_gib is None else int(gpu_memory_gib * 2 ** 30))
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(idx)
    limit = int(gpu_memory_gib * 2 ** 30) if gpu_memory_gib is not None else int(props.total_memory)
    return f"cuda:{idx} ({props.name})", limit


def predict_memory(namespace: argparse.Namespace, gpu_memory_gib: float | None = None) -> Memory:
    """``transfer --dry-run`` for these arguments (its table and peak), against the device's memory
    (``gpu_memory_gib`` instead, when given: what to plan for on a shared GPU, and for tests)."""
    from ..cli.transfer import run_transfer

    dry = argparse.Namespace(**{**vars(namespace), "dry_run": True})
    with _DRY_LOCK, capture_output() as buf:
        run_transfer(dry)
    table = buf.getvalue().strip()
    m = _PEAK.search(table)
    peak = None if m is None else int(float(m.group(1)) * 2 ** 30)
    device, limit = _device_limit(namespace, gpu_memory_gib)
    return Memory(table, peak, device, limit)


# -- a run -------------------------------------------------------------------------------------------
class Cancelled(BaseException):  # noqa: N818 - like KeyboardInterrupt: no `except Exception` swallows it
    """Raised inside the model when the page that started the run went away; the saved state stays."""


DEVICE_LOCK = threading.Lock()  # one run at a time (the queue already serialises; this covers a stopping run)


class Job:
    """``run_transfer(namespace)`` on a worker thread; :meth:`stop` ends it at the model's next block."""

    def __init__(self, prepared: Prepared):
        self.prepared = prepared
        self.cancel = threading.Event()
        self.done = threading.Event()
        self.started = threading.Event()
        self.error: str | None = None
        self.cancelled = False
        self.log = io.StringIO()
        self.thread = threading.Thread(target=self._work, name=f"ditflow-app {prepared.run_dir.name}", daemon=True)

    def start(self) -> Job:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.cancel.set()

    def _check(self, *_):
        if self.cancel.is_set():
            raise Cancelled()

    def _loader(self, fam, ref, dtype):
        import torch

        comps = fam.load(ref, dtype)
        for name in ("transformer", "transformer_2"):
            tr = comps.get(name)
            if tr is None:
                continue
            tr.register_forward_pre_hook(self._check)
            for m in tr.modules():
                if isinstance(m, torch.nn.ModuleList):
                    for block in m:
                        block.register_forward_pre_hook(self._check)
        self._check()
        return comps

    def _work(self):
        from ..cli.transfer import run_transfer

        try:
            with DEVICE_LOCK:
                self.started.set()
                if self.cancel.is_set():
                    raise Cancelled()
                with capture_output() as buf:
                    try:
                        run_transfer(self.prepared.namespace, loader=self._loader)
                    finally:
                        self.log.write(buf.getvalue())
        except Cancelled:
            self.cancelled = True
        except (ValueError, TypeError) as exc:  # what the CLI prints as "error: ..."
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - the page gets one line; the server log the traceback
            traceback.print_exc()
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.started.set()
            self.done.set()


# -- results -------------------------------------------------------------------------------------------
def runs(out: Path) -> list[tuple[str, str]]:
    """``(label, run folder)`` of every run the app started under ``out/runs``, newest first, with its state."""
    found = []
    for d in (Path(out) / "runs").glob("*"):
        try:
            prep = load_request(d)
        except ValueError:
            continue  # not a request the app can run again: nothing to offer
        if run_record(d) is not None:
            state = "finished"
        else:
            state = f"stopped at step {max(read_progress(d)[0], 0)} of {prep.namespace.steps}"
        found.append(((d / REQUEST_FILE).stat().st_mtime, f"{d.name} ({state})", str(d)))
    return [(label, path) for _, label, path in sorted(found, reverse=True)]


def save_request(prepared: Prepared) -> None:
    from ..atomic import write_json

    prepared.run_dir.mkdir(parents=True, exist_ok=True)
    write_json(prepared.run_dir / REQUEST_FILE, {"argv": prepared.argv, "time": time.time()})


def load_request(run_dir: Path) -> Prepared:
    """The :class:`Prepared` of a run the app started (to resume it after a restart)."""
    try:
        argv = json.loads((Path(run_dir) / REQUEST_FILE).read_text())["argv"]
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise ValueError("'argv' is not a list of strings")
        return Prepared(argv, transfer_namespace(argv), Path(run_dir))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{run_dir}: not a run this app started (no valid {REQUEST_FILE}: {exc})") from None
