"""What the web app does, without gradio: the page's fields -> a transfer request, run folders, memory, jobs.

A run is :func:`ditflow_fast.transfer_api.run` on a worker thread. The page's fields become its inputs (video,
prompts, model, an optional first-frame image) and :class:`~ditflow_fast.transfer_api.TransferOptions`, checked by
``TransferOptions.from_kwargs`` (so defaults, rules and messages are ``ditflow-fast transfer``'s). The run folder
is named by a hash of that request with every input file replaced by its content hash, so the same inputs always
land in the same folder: a run stopped by closing the page or restarting the app resumes from its saved state when
it is asked for again (or from the list of runs, which keeps each request in ``app_request.json``). The model stays
loaded from one run to the next (:func:`held_model`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import queue
import re
import shutil
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from ..hostmem import available_bytes
from ..transfer_api import HeldModel, TransferOptions
from .images import check_image, image_note  # noqa: F401 - image_note re-exported for the page
from .results import (  # noqa: F401 - the run folders' results, re-exported for the page
    MOTION_FILE,
    emb_runs,
    motion_fidelity,
    read_progress,
    reference_clip,
    run_record,
    zip_run,
)
from .samples import (  # noqa: F401 - the offline default model and the samples, re-exported for the page
    APP_JSON,
    TINY_NAME,
    TINY_PROMPT,
    TINY_SIZE,
    _has_transformers,
    default_cache,
    ensure_samples,
    ensure_tiny_model,
    model_hints,
)

REQUEST_FILE = "app_request.json"
INPUTS = ("video", "prompt", "negative_prompt", "prompt_embeds", "model", "image")  # run()'s arguments
FILES = ("video", "prompt_embeds", "inject_embeds", "image")  # named by their content in the run folder's hash
# What one request may ask of the device (the page has one run at a time for everyone): a few times the models'
# defaults (at most 129 frames, 50 steps) and the paper's 5 Adam iterations. Size is bounded by the memory check.
MAX_FRAMES, MAX_STEPS, MAX_OPT_ITERS = 257, 200, 50

ZERO_SHOT = "Zero-shot (embeddings of an earlier emb run)"
# The methods of the paper's comparison, as transfer options (docs/guidance.md).
METHODS = {
    "DiTFlow (latent)": {},
    "DiTFlow (emb)": {"opt_mode": "emb"},
    ZERO_SHOT: {"opt_mode": "emb"},  # + inject_embeds
    "MOFT": {"loss": "moft"},
    "SMM": {"loss": "smm"},
    "No guidance": {"no_guidance": True},
}
SLUGS = {"DiTFlow (latent)": "latent", "DiTFlow (emb)": "emb", ZERO_SHOT: "zeroshot", "MOFT": "moft", "SMM": "smm",
         "No guidance": "noguide"}


# -- the page's fields -> the request ----------------------------------------------------------------
@dataclass
class Request:
    """What the page asks for. ``None`` / ``""`` means "the model's default" (as omitting the option does)."""

    video: str | None = None
    prompt: str = ""
    negative_prompt: str = ""
    prompt_embeds: str | None = None
    model: str = ""
    image: str | None = None  # image-to-video: the new video's first frame (an upload)
    method: str = "DiTFlow (latent)"
    inject_embeds: str | None = None
    frames: int | str | None = None
    height: int | str | None = None
    width: int | str | None = None
    steps: int | str | None = None  # transfer's default: the model's (50; Wan2.2 A14B 40)
    guided_steps: int | str | None = 10
    opt_iters: int | str | None = 5
    seed: int | str | None = 0
    cfg: float | str | None = None
    guidance_block: int | str | None = None
    injection: bool = True
    dtype: str | None = None
    device: str | None = None
    offload: str = "none"
    fps: int | str | None = 8


def _number(v, real: bool = False):
    """A field's value as a number; empty: None (the default). Text that is no number stays text: the
    options' check then names the option and the value."""
    if isinstance(v, str):
        v = v.strip()
        if not v:
            return None
        try:
            v = float(v)
        except ValueError:
            return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return v
    return float(v) if real else int(v) if isinstance(v, float) and v.is_integer() else v


def check_request(r: Request) -> tuple[dict, TransferOptions]:
    """``(inputs, options)`` for ``r``: ``transfer_api.run``'s arguments and its checked options (a bad field:
    ``ValueError``/``TypeError`` with the command line's message)."""
    if r.method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {r.method!r}")
    if not (r.model or "").strip():
        raise ValueError("--model is required: a local diffusers folder or a hub id")
    inputs = {"video": r.video or None, "prompt": (r.prompt or "").strip(),
              "negative_prompt": (r.negative_prompt or "").strip(), "prompt_embeds": r.prompt_embeds or None,
              "model": r.model.strip(), "image": r.image or None}
    options = dict(METHODS[r.method])
    if r.method == ZERO_SHOT:
        if not r.inject_embeds:
            raise ValueError("--inject-embeds is required for zero-shot: pick the embeddings of an earlier "
                             "DiTFlow (emb) run")
        options["inject_embeds"] = str(r.inject_embeds)
    for name in ("frames", "height", "width", "steps", "guided_steps", "opt_iters", "seed", "fps", "cfg"):
        v = _number(getattr(r, name), real=name == "cfg")
        if v is not None:
            options[name] = v
    block = r.guidance_block
    if isinstance(block, str):  # "18, 20": several blocks, as the command line repeats the option
        block = [_number(b) for b in block.replace(",", " ").split()] or None
    if block is not None:
        options["guidance_block"] = block
    device = (r.device or "").strip()
    options.update(no_injection=not r.injection, offload=r.offload or "none",
                   dtype=None if r.dtype in (None, "", "auto") else r.dtype,
                   device=None if device in ("", "auto") else device)
    opts = TransferOptions.from_kwargs(**options)  # the kinds first, in transfer's words
    for name, most in (("frames", MAX_FRAMES), ("steps", MAX_STEPS), ("opt_iters", MAX_OPT_ITERS)):
        if (getattr(opts, name) or 0) > most:
            raise ValueError(f"--{name.replace('_', '-')}: the app runs at most {most}, got {getattr(opts, name)}")
    return inputs, opts


def given_options(opts: TransferOptions) -> dict:
    """The options that differ from the defaults, JSON-ready: the request as the run folder keeps it."""
    def plain(v):
        return list(v) if isinstance(v, (tuple, list)) else v

    base = TransferOptions()
    # fresh is what one start does, not part of the request: resuming a run that was started over must not delete it
    return {f.name: plain(getattr(opts, f.name)) for f in dataclasses.fields(opts)
            if f.name != "fresh" and plain(getattr(opts, f.name)) != plain(getattr(base, f.name))}


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
    the copy survives a restart, so the run resumes). Folders and missing paths are left to the run."""
    if not src:
        return src
    p = Path(src).expanduser()
    if not p.is_file():
        return src  # the run says what is wrong with it, in its own words
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
    """``path`` resolved, if it is a file in one of ``sources`` (folders or files); else ``ValueError``. Resolved,
    so a symlink placed in the upload folder cannot point the app at another file; never a folder (uploads are
    files; a folder there, the upload folder itself included, would be read and hashed whole)."""
    real = Path(os.path.realpath(path))
    if not any(real.is_relative_to(os.path.realpath(s)) for s in sources):
        raise ValueError(f"{option}: not an upload or a bundled sample (the app reads no other file on this server)")
    if real.is_dir():
        raise ValueError(f"{option}: a folder; the app takes an uploaded file")
    return str(real)


def model_fingerprint(model: str) -> str | None:
    """A local model folder's fingerprint (``HeldModel.digest``: its configs, its weights' headers and ends, as
    the run key has it), so a folder rewritten in place is another model; None for a hub id, or for what is not
    a model (the run says what is wrong with it)."""
    if not Path(model).expanduser().is_dir():
        return None
    try:
        return HeldModel(model).digest()
    except (ValueError, OSError):
        return None


def run_name(request: dict, method: str) -> str:
    """``<method>-<hash>``: the hash of ``request`` with each existing input file replaced by its content hash."""
    def part(name, v):
        return "sha256:" + _file_digest(Path(v)) if name in FILES and v and Path(v).exists() else v

    named = {k: {n: part(n, v) for n, v in d.items()} for k, d in request.items()}
    return f"{SLUGS.get(method, 'run')}-{hashlib.sha256(json.dumps(named, sort_keys=True).encode()).hexdigest()[:12]}"


@dataclass
class Prepared:
    inputs: dict  # INPUTS: run()'s arguments
    opts: TransferOptions
    run_dir: Path
    made: list[Path] = field(default_factory=list)  # the input copies this request wrote (see discard)

    @property
    def request(self) -> dict:
        return {"inputs": self.inputs, "options": given_options(self.opts)}


def prepare(r: Request, out: Path, sources: list | None = None) -> Prepared:
    """The checked request and run folder for ``r`` (uploads copied under ``out/inputs``). ``sources``:
    where the input files may come from (the page's upload folder and samples); nothing is written for a
    request refused here."""
    out = Path(out)
    if sources is not None:
        r = dataclasses.replace(r, video=r.video and _from(r.video, sources, "--video"),
                                prompt_embeds=r.prompt_embeds and _from(r.prompt_embeds, sources, "--prompt-embeds"),
                                image=r.image and _from(r.image, sources, "--image"))
    inputs, opts = check_request(r)  # a bad field: refused before any copy
    if sources is not None and opts.inject_embeds and opts.inject_embeds not in [p for _, p in emb_runs(out)]:
        # a server folder named by the client would be read and hashed whole (run_name): only what the page lists
        raise ValueError("--inject-embeds: not the embeddings of a finished DiTFlow (emb) run under --out; pick one "
                         "from the list")
    if inputs["image"]:
        check_image(inputs["image"])
    made: list[Path] = []
    inputs.update(video=_stash(inputs["video"], out, made), prompt_embeds=_stash(inputs["prompt_embeds"], out, made),
                  image=_stash(inputs["image"], out, made))
    named = _named(inputs, opts, model_fingerprint(inputs["model"]))
    return Prepared(inputs, opts, out / "runs" / run_name(named, r.method), made)


def _named(inputs: dict, opts: TransferOptions, model: str | None = None) -> dict:
    """What names a run folder: the request, with a local model's fingerprint (``model``: a model rewritten in
    place gets a folder of its own, not the old one, which transfer would refuse). Without an image, the
    request as the app named it before it took images."""
    named = {"inputs": {k: v for k, v in inputs.items() if k != "image" or v}, "options": given_options(opts)}
    return {**named, "model": {"digest": model}} if model else named


def discard(prep: Prepared) -> None:
    """Undo what a refused request wrote: its run folder when that holds nothing but the request record (a
    refusal has nothing to resume), and then its input copies. A run folder that stays (saved steps) keeps
    them: resuming it reads them."""
    with contextlib.suppress(OSError):
        if [p.name for p in prep.run_dir.iterdir()] == [REQUEST_FILE]:
            (prep.run_dir / REQUEST_FILE).unlink()
            prep.run_dir.rmdir()
    if prep.run_dir.exists():
        return
    for p in prep.made:
        p.unlink(missing_ok=True)


def warm_imports() -> None:
    """Import on the calling thread what runs import lazily: diffusers' (and transformers') lazy modules are
    not thread-safe, and the page's memory prediction and a run may first touch them at the same time. What
    each family needs comes from the registry (its classes, ``lazy_classes``, its package's modules)."""
    import importlib

    from ..families import FAMILIES

    names = [f"diffusers.{n}" for fam in FAMILIES.values() for n in (fam.transformer_class, fam.vae_class)]
    names += [n for fam in FAMILIES.values() for n in fam.lazy_classes]
    if not _has_transformers():
        names = [n for n in names if not n.startswith("transformers.")]
    for name in names:
        package, _, cls = name.rpartition(".")
        with contextlib.suppress(ImportError, AttributeError):
            getattr(importlib.import_module(package), cls)
    packages = [fam.__module__.rpartition(".")[0] for fam in FAMILIES.values()]
    for mod in ("diffusers.models.embeddings", "diffusers.models.attention_processor",
                "diffusers.models.attention_dispatch", *packages, *(f"{p}.memory" for p in packages),
                "ditflow_fast.guidance.loop", "ditflow_fast.transfer_api.run", "ditflow_fast.viewer.transfer",
                "ditflow_fast.viewer.motion", "ditflow_fast.video_io"):
        with contextlib.suppress(ImportError):
            importlib.import_module(mod)


def total_steps(model: str, opts: TransferOptions) -> int | None:
    """The run's denoising steps: ``opts.steps``, else the model's default resolved as a run resolves it
    (None when that cannot be read without running)."""
    if opts.steps:
        return int(opts.steps)
    try:
        from ..transfer_api.checks import check_device

        held = HeldModel(model)  # nothing loaded: the family and the configs
        tcfg, _ = held.configs
        cfg = opts.guidance_config(model).resolve(tcfg, device=check_device(opts.device), family=held.family)
        return int(cfg.steps)
    except Exception:  # noqa: BLE001 - only the progress bar's total; the run says what is wrong
        return None


# -- predicted memory ---------------------------------------------------------------------------------
@dataclass
class Memory:
    table: str
    peak_bytes: int | None
    device: str
    device_bytes: int | None
    what: str = "GPU memory"  # "memory" off CUDA: the host's

    @property
    def fits(self) -> bool:
        return self.peak_bytes is None or self.device_bytes is None or self.peak_bytes <= self.device_bytes

    def message(self) -> str:
        gib = 2 ** 30
        peak = "unknown" if self.peak_bytes is None else f"{self.peak_bytes / gib:.2f} GiB"
        if self.device_bytes is None:
            return f"Predicted peak {self.what}: {peak} (the run goes to {self.device}: its memory is not known here)"
        have = f"{self.device_bytes / gib:.2f} GiB"
        if self.fits:
            return f"Predicted peak {self.what}: {peak} of the {have} of {self.device}: fits"
        return (f"Refused: the predicted peak {self.what}, {peak}, does not fit the {have} of {self.device}. "
                "Use fewer frames or a smaller size, offload (model or group), or a device with more memory.")


_PEAK = re.compile(r"^predicted peak\s+([0-9.]+) GiB", re.M)
_available_host_bytes = available_bytes  # a module attribute: tests stand in another host


def _held_bytes() -> int:
    """What the model the app keeps loaded takes: the next run reuses or releases it, so it is available to it."""
    import torch

    mods = [m for held in list(_HELD.values()) for m in (held.components or {}).values()
            if isinstance(m, torch.nn.Module)]
    return sum(t.numel() * t.element_size() for m in mods for t in (*m.parameters(), *m.buffers()))


def _device_limit(device: str | None, gpu_memory_gib: float | None) -> tuple[str, int | None, str]:
    """``(the device, the memory a run there may take, what memory that is)``: a GPU's total, or off CUDA the
    host's available memory (and the held model's); ``gpu_memory_gib`` instead when given."""
    import torch

    from ..transfer_api.checks import check_device

    dev = check_device(device)
    given = None if gpu_memory_gib is None else int(gpu_memory_gib * 2 ** 30)
    if dev.type != "cuda":  # the run's tensors live in host memory (or share it: MPS)
        if given is not None:
            return str(dev), given, "memory"
        free = _available_host_bytes()
        return f"{dev} (available host memory)", None if free is None else free + _held_bytes(), "memory"
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(idx)
    return f"cuda:{idx} ({props.name})", int(props.total_memory) if given is None else given, "GPU memory"


def predict_memory(model: str, opts: TransferOptions, gpu_memory_gib: float | None = None) -> Memory:
    """The table ``transfer --dry-run`` prints for ``model`` and ``opts`` (from the configs, no weights) and
    its peak, against the device's memory (``gpu_memory_gib`` instead, when given: what to plan for on a
    shared GPU, and for tests)."""
    from ..families import detect, preset_family

    fam = preset_family(model) or detect(model)
    table = fam.dry_run_table(model, opts.guidance_config(model), opts.offload)
    m = _PEAK.search(table)
    peak = None if m is None else int(float(m.group(1)) * 2 ** 30)
    return Memory(table, peak, *_device_limit(opts.device, gpu_memory_gib))


# -- a run -------------------------------------------------------------------------------------------
class Cancelled(BaseException):  # noqa: N818 - like KeyboardInterrupt: no `except Exception` swallows it
    """Raised inside the model when the page that started the run went away; the saved state stays."""


class _Held(HeldModel):
    """A held model whose transformer blocks check ``cancel`` (the running job's event) before they run, so
    a run stops at the next block, not only at the next denoising step."""

    cancel: threading.Event | None = None
    _hooked = 0  # the load whose modules carry the hooks

    def load(self, dtype) -> dict:
        import torch

        comps = super().load(dtype)
        if self._hooked != self.loads:
            for name in ("transformer", "transformer_2"):
                tr = comps.get(name)
                if tr is None:
                    continue
                tr.register_forward_pre_hook(self.check)
                for m in tr.modules():
                    if isinstance(m, torch.nn.ModuleList):
                        for block in m:
                            block.register_forward_pre_hook(self.check)
            self._hooked = self.loads
        self.check()  # a load takes long: the page may have gone meanwhile
        return comps

    def check(self, *_):
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled()


DEVICE_LOCK = threading.Lock()  # one run at a time (the queue already serialises; this covers a stopping run)
_HELD: dict[tuple, _Held] = {}  # the last run's model, kept loaded for the next; used under DEVICE_LOCK


def held_model(model: str, opts: TransferOptions) -> _Held:
    """The model for a run of ``opts``: the last run's when it was the same (model, its fingerprint, dtype),
    else loaded anew, the old one released first (one model in memory at a time)."""
    held = _Held(model)  # a model that is not one leaves the held one alone
    # the folder's fingerprint in the key: a model rewritten in place is loaded again (as batch's workers do).
    # A run's offload hooks stay on the components (HeldModel.reset does not remove them): such runs load afresh.
    key = (held.ref, held.digest(), opts.dtype) if opts.offload == "none" else None
    if key in _HELD:
        return _HELD[key]
    for old in _HELD.values():
        old.release()
    _HELD.clear()
    if key is not None:
        _HELD[key] = held
    return held


class Job:
    """``transfer_api.run`` of a prepared request on a worker thread; :meth:`stop` ends it at the model's
    next block. ``updates`` gets ``(step, total, loss)`` after each denoising step, and None at the end."""

    def __init__(self, prepared: Prepared):
        self.prepared = prepared
        self.cancel = threading.Event()
        self.done = threading.Event()
        self.started = threading.Event()
        self.updates: queue.Queue = queue.Queue()
        self.error: str | None = None
        self.cancelled = False
        self.result = None
        self.thread = threading.Thread(target=self._work, name=f"ditflow-app {prepared.run_dir.name}", daemon=True)

    def start(self) -> Job:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.cancel.set()

    def _progress(self, step: int, total: int, loss: float | None) -> None:
        self.updates.put((step, total, loss))
        if self.cancel.is_set():
            raise Cancelled()

    def _work(self):
        from ..transfer_api import run

        p = self.prepared
        try:
            with DEVICE_LOCK:
                self.started.set()
                if self.cancel.is_set():
                    raise Cancelled()
                held = held_model(p.inputs["model"], p.opts)
                held.cancel = self.cancel
                try:
                    self.result = run(held, p.inputs["video"], p.opts, prompt=p.inputs["prompt"] or None,
                                      negative_prompt=p.inputs["negative_prompt"],
                                      prompt_embeds=p.inputs["prompt_embeds"], image=p.inputs.get("image"),
                                      out=p.run_dir,
                                      progress=self._progress, bar=False)
                finally:
                    held.cancel = None
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
            self.updates.put(None)


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
            state = f"stopped at step {max(read_progress(d)[0], 0)}" + (f" of {prep.opts.steps}" if prep.opts.steps
                                                                          else "")
        found.append(((d / REQUEST_FILE).stat().st_mtime, f"{d.name} ({state})", str(d)))
    return [(label, path) for _, label, path in sorted(found, reverse=True)]


def listed_run(out: Path, run_dir: str | None, *, start_over: bool = False) -> Prepared:
    """The request of a run that :func:`runs` lists under ``out`` (no other folder: a client names it), to resume it
    or, with ``start_over``, to run it again from its first step. Starting over is the way on when a run cannot
    resume (its local model was rewritten, say): transfer's ``--fresh`` deletes the run's saved steps and results,
    and only once the run's own checks have passed."""
    if not run_dir:
        raise ValueError("pick a run first")
    if run_dir not in [path for _, path in runs(out)]:
        raise ValueError(f"{run_dir}: not a run listed under --out; pick one from the list")
    prep = load_request(Path(run_dir))
    return dataclasses.replace(prep, opts=dataclasses.replace(prep.opts, fresh=True)) if start_over else prep


def save_request(prepared: Prepared) -> None:
    from ..atomic import write_json

    prepared.run_dir.mkdir(parents=True, exist_ok=True)
    write_json(prepared.run_dir / REQUEST_FILE, {**prepared.request, "time": time.time()})


def load_request(run_dir: Path) -> Prepared:
    """The :class:`Prepared` of a run the app started (to resume it after a restart), its options checked
    again; a folder from before the app kept requests this way is not one."""
    try:
        got = json.loads((Path(run_dir) / REQUEST_FILE).read_text())
        inputs, options = got["inputs"], got["options"]
        if isinstance(inputs, dict) and set(inputs) == set(INPUTS) - {"image"}:
            inputs = {**inputs, "image": None}  # kept by the app before it took images
        if not isinstance(inputs, dict) or set(inputs) != set(INPUTS) or not isinstance(options, dict):
            raise ValueError(f"'inputs' must hold {', '.join(INPUTS)}; 'options' a mapping")
        if not all(v is None or isinstance(v, str) for v in inputs.values()) or not inputs["model"]:
            raise ValueError("the inputs must be text and name a model")
        return Prepared(inputs, TransferOptions.from_kwargs(**options), Path(run_dir))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{run_dir}: not a run this app started (no valid {REQUEST_FILE}: {exc})") from None
