"""Reading ``JOBS.jsonl``: one JSON object per line, keys ``transfer``'s options with underscores plus ``id``.

Every line is checked before anything runs (JSON, object, known keys, values of the right type and
choice, ids unique and usable as folder names, a video and a prompt, a readable ``image``, and an
``image`` for an image-to-video model given as a local folder); all problems are reported together,
each with its line number and the line's key names. A job's options are the command
line's (the batch's defaults) overridden by the line's, checked by :class:`TransferOptions` (the
rules of ``ditflow-fast transfer`` and of :func:`ditflow_fast.transfer`), so a job means exactly
what the same ``transfer`` command or call means.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..transfer_api.options import TransferOptions, python_names

# the arguments of a transfer that are not options (``run``'s own arguments)
INPUTS = ("video", "prompt", "negative_prompt", "prompt_embeds", "model", "image")
DEFAULT_MODEL = "THUDM/CogVideoX-5b"
# transfer's options a job may not set: the batch decides where a job writes and that it is quiet
RESERVED = ("out", "quiet", "dry_run")
RESERVED_IDS = ("manifest.jsonl",)
OPTIONS = tuple(f.name for f in dataclasses.fields(TransferOptions))
# TransferOptions leaves the types of its text options to the run: a job's are checked here, before any worker
_TEXTS = INPUTS + tuple(f.name for f in dataclasses.fields(TransferOptions) if f.type in ("str", "str | None"))
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")  # fullmatch: "$" would let a final newline through


class JobsError(ValueError):
    """A JOBS file with problems; ``problems`` lists ``(line, message)``."""

    def __init__(self, path, problems: list[tuple[int, str]]):
        self.problems = problems
        lines = "\n".join(f"  {path}:{n}: {m}" if n else f"  {path}: {m}" for n, m in problems)
        super().__init__(f"{len(problems)} problem(s) in the jobs file, nothing was run:\n{lines}")


@dataclass
class Job:
    id: str
    line: int
    options: dict  # key -> value: the batch's defaults merged with the line's (inputs and options)

    @property
    def model_key(self) -> tuple[str, str]:
        return str(self.options.get("model") or DEFAULT_MODEL), str(self.options.get("dtype") or "")

    @property
    def fingerprint(self) -> str:
        """A hash of the options that change the job's result (not ``threads`` nor ``ref_cache``)."""
        kept = {k: v for k, v in self.options.items()
                if k not in ("threads", "ref_cache") and v is not None and v is not False}
        return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def split(options: dict) -> tuple[dict, TransferOptions]:
    """A job's ``options`` -> (``run``'s inputs, the checked :class:`TransferOptions`); raises the
    ``ValueError``/``TypeError`` of the first bad one, in the command line's words (``--flags``)."""
    inputs = {k: options.get(k) for k in INPUTS}
    inputs["model"] = inputs["model"] or DEFAULT_MODEL
    inputs["negative_prompt"] = inputs["negative_prompt"] or ""
    return inputs, TransferOptions.from_kwargs(**{k: v for k, v in options.items() if k not in INPUTS})


def _absolute(options: dict) -> dict:
    """Paths made absolute against the current folder (workers may run elsewhere); a model that is
    not a local folder (a hub id) is left as it is."""
    out = dict(options)
    for key in ("video", "image", "prompt_embeds", "inject_embeds", "ref_cache", "model"):
        v = out.get(key)
        if isinstance(v, str) and v and (key != "model" or Path(v).expanduser().exists()):
            out[key] = str(Path(v).expanduser().absolute())
    return out


def _check(options: dict) -> str | None:
    """The first problem of a job's merged options, by their key names, or None."""
    for key in _TEXTS:
        v = options.get(key)
        if v is not None and not isinstance(v, str):
            return f"{key!r} must be a string, got {v!r}"
    try:
        split(options)
    except (ValueError, TypeError) as exc:
        return python_names(str(exc))
    if not options.get("video"):
        return "no 'video' (give it in the line or as --video on the command line)"
    if not options.get("prompt") and not options.get("prompt_embeds"):
        return "no 'prompt' or 'prompt_embeds'"
    return None


def _image_problem(job_id: str, options: dict, image_models: dict) -> str | None:
    """A job's ``image`` that cannot be read, or an image-to-video model's job without one, naming the job.
    ``image_models``: model -> whether it is an I2V model, filled as models are met (one look per model)."""
    image = options.get("image")
    if image:
        from ..video_io import read_image

        try:
            read_image(image, option="'image'")  # decoded once here: a broken file fails now, not on a worker
        except (ValueError, TypeError) as exc:
            return f"job {job_id!r}: {exc}"
        return None
    model = str(options.get("model") or DEFAULT_MODEL)
    if model not in image_models:
        image_models[model] = _image_model(model)
    if image_models[model]:
        return f"job {job_id!r}: 'image' is required: {model} is an image-to-video model"
    return None


def _image_model(model: str) -> bool:
    """Whether a local model folder is an image-to-video model's, from its configs (no weights). A hub id is
    not looked up here (no network before the batch starts): its worker refuses the job, before loading it.
    A folder whose configs cannot be read is left to its worker, which says what is wrong with it."""
    if not Path(model).expanduser().is_dir():
        return False
    from ..transfer_api import HeldModel

    try:
        held = HeldModel(model)
        return bool(held.family.image_model(held.configs[0]))
    except Exception:  # noqa: BLE001 - any unreadable model: the worker's error names it
        return False


def parse_jobs(path, defaults: dict | None = None) -> list[Job]:
    """The jobs of ``path`` (blank lines skipped), or :class:`JobsError` with every problem found.
    ``defaults``: options of every job (the batch's command line), overridden by a line's."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise JobsError(path, [(0, f"cannot be read ({exc})")]) from None
    known = list(INPUTS) + [k for k in OPTIONS if k not in RESERVED]
    defaults = dict(defaults or {})
    problems: list[tuple[int, str]] = []
    jobs: list[Job] = []
    seen: dict[str, int] = {}
    image_models: dict[str, bool] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.append((n, f"not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(obj, dict):
            problems.append((n, f"must be a JSON object, got {type(obj).__name__}"))
            continue
        job_id = obj.pop("id", None)
        bad = []
        for key in obj:
            if key in RESERVED:
                bad.append(f"{key!r} is set by the batch (each job writes OUT/<id>/), not by a job")
            elif key not in known:
                near = difflib.get_close_matches(key.replace("-", "_"), known + ["id"], n=1)
                bad.append(f"unknown key {key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
        if bad:
            problems += [(n, b) for b in bad]
            continue
        job_id = f"job-{n}" if job_id is None else job_id
        if not isinstance(job_id, str) or not _ID.fullmatch(job_id) or job_id in RESERVED_IDS:
            problems.append((n, f"'id' must be a folder name of letters, digits, '.', '_', '-' (not starting "
                                f"with '.' or '-'), got {job_id!r}"))
            continue
        if job_id in seen:
            problems.append((n, f"id {job_id!r} is already the id of line {seen[job_id]}"))
            continue
        seen[job_id] = n
        options = _absolute({**defaults, **obj})
        problem = _check(options) or _image_problem(job_id, options, image_models)
        if problem:
            problems.append((n, problem))
            continue
        jobs.append(Job(job_id, n, options))
    if problems:
        raise JobsError(path, problems)
    if not jobs:
        raise JobsError(path, [(0, "holds no jobs")])
    return jobs
