"""``ditflow-fast batch JOBS.jsonl --out DIR``: many transfers on Ray (the ``cluster`` extra).

Each line of JOBS is a JSON object whose keys are ``transfer``'s options with underscores (``video``,
``prompt``, ``prompt_embeds``, ``model``, ``image``, ``frames``, ``opt_mode``, ``loss``, ``seed``, ...) plus
an optional ``id`` (default ``job-<line>``); ``transfer``'s options given here are the defaults of every
job. ``image``: the first frame of the job's video (image-to-video, as ``transfer --image``); required
for an image-to-video model. Job ``ID`` writes ``DIR/ID/`` exactly as ``transfer --out DIR/ID`` does;
``DIR/manifest.jsonl`` records every job's outcome; the reference latents and targets are cached in
``DIR/.ref_cache`` (``--ref-cache``, ``--no-ref-cache``). The same command again skips finished jobs (same options,
same input files) and resumes the others; ``--fresh-changed`` starts over those whose options or
inputs changed. Exit status: 0 when every job is done, 1 when any failed, 2 for a bad JOBS file or
option.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# batch's own options that shadow transfer's
_OWN = ("out", "quiet", "dry_run", "ref_cache", "help", "func")


def _transfer_actions() -> list[argparse.Action]:
    """``transfer``'s options, to offer each as a default of every job (its parser is the one place
    that knows their flags, types and help)."""
    from .transfer import add_transfer_parser

    sub = argparse.ArgumentParser(add_help=False).add_subparsers()
    add_transfer_parser(sub)
    return [a for a in sub.choices["transfer"]._actions if a.option_strings and a.dest not in _OWN]


def add_batch_parser(sub) -> None:
    p = sub.add_parser("batch", help="many transfers (JOBS.jsonl) on Ray workers that keep their models loaded",
                       description=__doc__.split("\n\n")[0].splitlines()[0] + "\n\n" + __doc__.split("\n\n", 1)[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("jobs", metavar="JOBS.jsonl", help="one JSON object per line: transfer's options + optional 'id'")
    p.add_argument("--out", required=True, help="DIR: DIR/<id>/ per job, DIR/manifest.jsonl")
    p.add_argument("--workers", type=int, help="CPU workers of the embedded Ray (default 1); with GPUs: at most "
                   "this many, one per GPU (default: every GPU)")
    p.add_argument("--address", help="join an existing Ray cluster (e.g. 'auto' or 'ray://head:10001') instead "
                   "of starting an embedded one; its nodes need ditflow-fast installed and DIR shared")
    p.add_argument("--max-retries", type=int, default=2, help="retries of a job whose worker died (default 2)")
    p.add_argument("--models-per-worker", type=int, default=1, help="models a worker keeps loaded (default 1)")
    p.add_argument("--ref-cache", metavar="DIR", help="reference cache (default OUT/.ref_cache)")
    p.add_argument("--no-ref-cache", action="store_true", help="compute every job's reference itself")
    p.add_argument("--retry-failed", action="store_true", help="rerun jobs that failed with their own error "
                   "although their inputs did not change since (by default they are reported, not rerun)")
    p.add_argument("--fresh-changed", action="store_true", help="start over (transfer --fresh) the jobs whose "
                   "options or input files changed since their last run into OUT (by default such a job resumes "
                   "its folder when transfer finds the same run there, else it fails naming what differs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("defaults of every job (transfer's options)")
    for act in _transfer_actions():
        kw = dict(dest=act.dest, default=argparse.SUPPRESS, help=act.help)
        flags = act.option_strings
        if isinstance(act, argparse._StoreTrueAction):
            kw["action"] = "store_true"
        elif isinstance(act, argparse.BooleanOptionalAction):
            kw["action"], flags = argparse.BooleanOptionalAction, flags[:1]  # it adds the --no- form itself
        else:
            kw.update(action="append" if isinstance(act, argparse._AppendAction) else "store", type=act.type,
                      choices=act.choices, metavar=act.metavar, nargs=act.nargs)
        g.add_argument(*flags, **kw)
    p.set_defaults(func=run_batch_cli)


def run_batch_cli(a) -> int:
    from ..batch.jobs import JobsError, parse_jobs
    from ..batch.runner import BatchSettings, run_batch, summary_table

    given = {k: v for k, v in vars(a).items()
             if k not in ("jobs", "out", "workers", "address", "max_retries", "models_per_worker", "ref_cache",
                          "no_ref_cache", "quiet", "func", "command", "retry_failed", "fresh_changed")}
    for name in ("workers", "max_retries", "models_per_worker"):
        v = getattr(a, name)
        if v is not None and v < (0 if name == "max_retries" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be {'>= 0' if name == 'max_retries' else 'positive'}, "
                             f"got {v}")
    out = Path(a.out).expanduser()
    if not a.no_ref_cache:
        given["ref_cache"] = a.ref_cache or str(out / ".ref_cache")
    try:
        jobs = parse_jobs(a.jobs, given)
    except JobsError as exc:
        print(f"ditflow-fast batch: error: {exc}", file=sys.stderr)
        return 2
    settings = BatchSettings(out=out, workers=a.workers, address=a.address, max_retries=a.max_retries,
                             max_models=a.models_per_worker, threads=given.get("threads"), progress=not a.quiet,
                             retry_failed=a.retry_failed, fresh_changed=a.fresh_changed)
    results = run_batch(jobs, settings)
    print(summary_table(results))
    return 1 if any(r["status"] == "failed" for r in results.values()) else 0
