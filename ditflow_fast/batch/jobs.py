"""Reading ``JOBS.jsonl``: one JSON object per line, keys ``transfer``'s options with underscores plus ``id``.

Every line is checked before anything runs (JSON, object, known keys, values of the right type and
choice, ids unique and usable as folder names, a video and a prompt); all problems are reported
together, each with its line number. A job's options are the command line's (the batch's defaults)
overridden by the line's, turned into a ``transfer`` argument list and parsed by ``transfer``'s own
parser, so a job means exactly what the same ``ditflow-fast transfer`` command means.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

# transfer's options a job may not set: the batch decides where a job writes and that it is quiet
RESERVED = ("out", "quiet", "dry_run", "help", "func")
RESERVED_IDS = ("manifest.jsonl",)
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")  # fullmatch: "$" would let a final newline through


class JobsError(ValueError):
    """A JOBS file with problems; ``problems`` lists ``(line, message)``."""

    def __init__(self, path, problems: list[tuple[int, str]]):
        self.problems = problems
        lines = "\n".join(f"  {path}:{n}: {m}" if n else f"  {path}: {m}" for n, m in problems)
        super().__init__(f"{len(problems)} problem(s) in the jobs file, nothing was run:\n{lines}")


class _Raising(argparse.ArgumentParser):
    def error(self, message):  # noqa: D401 - argparse's hook
        raise ValueError(message)


def transfer_parser() -> argparse.ArgumentParser:
    """``transfer``'s parser, raising ``ValueError`` instead of exiting."""
    from ..cli.transfer import add_transfer_parser

    root = _Raising(prog="ditflow-fast", add_help=False)
    sub = root.add_subparsers(dest="command", parser_class=_Raising)
    add_transfer_parser(sub)
    return sub.choices["transfer"]


def job_actions(parser: argparse.ArgumentParser | None = None) -> dict[str, argparse.Action]:
    """``dest -> action`` of the options a job (and the batch command line) may set."""
    parser = parser or transfer_parser()
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest not in RESERVED}


@dataclass
class Job:
    id: str
    line: int
    options: dict  # dest -> value: the batch's defaults merged with the line's
    argv: list[str] = field(default_factory=list)  # transfer's arguments, without --out/--quiet

    @property
    def model_key(self) -> tuple[str, str]:
        return str(self.options.get("model") or "THUDM/CogVideoX-5b"), str(self.options.get("dtype") or "")

    @property
    def fingerprint(self) -> str:
        """A hash of the options that change the job's result (not ``threads`` nor ``ref_cache``)."""
        kept = {k: v for k, v in self.options.items()
                if k not in ("threads", "ref_cache") and v is not None and v is not False}
        return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def to_argv(options: dict, actions: dict[str, argparse.Action]) -> list[str]:
    """``{dest: value}`` -> transfer's argument list; raises ``ValueError`` naming the key."""
    argv: list[str] = []
    for dest in sorted(options):
        value, act = options[dest], actions[dest]
        flag = act.option_strings[-1]
        if value is None:
            continue
        if isinstance(act, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise ValueError(f"{dest!r} must be true or false, got {value!r}")
            argv += [flag] if value else []
        elif isinstance(act, argparse._AppendAction):
            values = value if isinstance(value, list) else [value]
            for v in values:
                if isinstance(v, (bool, dict, list)) or v is None:
                    raise ValueError(f"{dest!r} must be a value or a list of values, got {value!r}")
                argv += [flag, str(v)]
        else:
            if isinstance(value, (bool, dict, list)):
                raise ValueError(f"{dest!r} must be a single value, got {value!r}")
            argv += [f"{flag}={value}"]
    return argv


def _absolute(options: dict) -> dict:
    """Paths made absolute against the current folder (workers may run elsewhere); a model that is
    not a local folder (a hub id) is left as it is."""
    out = dict(options)
    for dest in ("video", "prompt_embeds", "inject_embeds", "ref_cache", "model"):
        v = out.get(dest)
        if isinstance(v, str) and v and (dest != "model" or Path(v).expanduser().exists()):
            out[dest] = str(Path(v).expanduser().absolute())
    return out


def parse_jobs(path, defaults: dict | None = None) -> list[Job]:
    """The jobs of ``path`` (blank lines skipped), or :class:`JobsError` with every problem found."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise JobsError(path, [(0, f"cannot be read ({exc})")]) from None
    parser = transfer_parser()
    actions = job_actions(parser)
    defaults = dict(defaults or {})
    problems: list[tuple[int, str]] = []
    jobs: list[Job] = []
    seen: dict[str, int] = {}
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
            elif key not in actions:
                near = difflib.get_close_matches(key.replace("-", "_"), list(actions) + ["id"], n=1)
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
        try:
            argv = to_argv(options, actions)
            ns = parser.parse_args(argv)
        except ValueError as exc:
            problems.append((n, str(exc)))
            continue
        if not ns.video:
            problems.append((n, "no 'video' (give it in the line or as --video on the command line)"))
            continue
        if not ns.prompt and not ns.prompt_embeds:
            problems.append((n, "no 'prompt' or 'prompt_embeds'"))
            continue
        jobs.append(Job(job_id, n, options, argv))
    if problems:
        raise JobsError(path, problems)
    if not jobs:
        raise JobsError(path, [(0, "holds no jobs")])
    return jobs
