"""The driver of ``ditflow-fast batch``: Ray actors, job scheduling, retries, the manifest, the summary.

- Workers: an embedded local Ray by default (``--workers N`` CPU workers; one worker per GPU when
  Ray sees GPUs), or an existing cluster with ``--address``. Each worker is one long-lived actor
  (:class:`~ditflow_fast.batch.worker.TransferWorker`) that keeps its loaded model between jobs.
- Scheduling: jobs are queued grouped by (model, dtype); an idle worker takes the next job of the
  model it holds, else the next job in the queue.
- Failures: a job that raises is recorded as failed with its error and the others go on. A worker
  whose process dies (killed, out of host memory, a lost node) is replaced and its job goes back to
  the front of the queue, to be resumed by another worker from the job's saved state (``transfer``
  saves it after every denoising step); at most ``--max-retries`` times.
- ``OUT/manifest.jsonl``: one JSON line appended per event (``start``, ``done``, ``failed``,
  ``worker-died``, ``skipped``); a line torn by a crash mid-write is skipped when the manifest is read.
  A rerun skips every job whose last record is ``done`` with the same options and the same input
  files (size and modification time of its video, image, prompt and embedding files and local model
  folder; of every file in a folder) and whose ``OUT/<id>/config.json`` exists, and resumes the others.
  Two batches into one ``OUT`` at once: the second is refused (a lock).
- A job whose options or input files changed since its last record is run again into its
  ``OUT/<id>/``, which then holds the earlier run: ``transfer`` resumes it when the run key is the
  same (a file only touched), and refuses it otherwise (naming what differs), which the batch records
  as that job's failure, with a hint. ``--fresh-changed`` (``BatchSettings.fresh_changed``) runs such
  jobs with ``fresh=True`` (``transfer --fresh``) instead (first attempt only: a retry after a worker died
  resumes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from .jobs import Job

MANIFEST = "manifest.jsonl"
FAULT_ENV = "DITFLOW_FAST_BATCH_FAULT"


@dataclass
class BatchSettings:
    out: Path
    workers: int | None = None  # CPU workers (default 1), or at most this many GPU workers
    address: str | None = None  # an existing Ray cluster; None: an embedded local one
    max_retries: int = 2  # retries of a job whose worker died
    max_models: int = 1  # models a worker keeps loaded
    threads: int | None = None  # torch threads per worker
    progress: bool = True
    retry_failed: bool = False  # rerun jobs that failed with their own error on unchanged inputs
    fresh_changed: bool = False  # jobs whose options or inputs changed since their last run: transfer --fresh


class Manifest:
    """``OUT/manifest.jsonl``: one JSON line appended per record (one writer: the driver, under the lock).

    Each record is one ``write`` of its whole line and a flush, so the file grows by one line per
    event (never rewritten). A crash mid-write can leave a torn last line: it is skipped when the
    manifest is read, and the next record starts on a line of its own.
    """

    def __init__(self, path: Path):
        self.path = path
        self.records: list[dict] = []
        self._sep = b""
        if path.exists():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                self._sep = b"\n"  # a torn last line: the next record must not be glued to it
            for raw in data.decode("utf-8", "replace").splitlines():
                try:
                    rec = json.loads(raw)
                except ValueError:
                    continue  # a line torn by a crash mid-write, or anything foreign
                if isinstance(rec, dict):
                    self.records.append(rec)

    def add(self, **rec) -> dict:
        rec = {"time": round(time.time(), 3), **rec}
        line = json.dumps(rec, default=str)
        with open(self.path, "ab") as fh:
            fh.write(self._sep + line.encode() + b"\n")
            fh.flush()
        self._sep = b""
        self.records.append(json.loads(line))
        return rec

    def latest(self) -> dict[str, dict]:
        """The last ``done``/``failed`` record per job id."""
        last: dict[str, dict] = {}
        for rec in self.records:
            if rec.get("event") in ("done", "failed") and "id" in rec:
                last[rec["id"]] = rec
        return last


def _fault() -> tuple[str, int] | None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    job_id, _, steps = spec.rpartition(":")
    return job_id, int(steps)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ValueError("ditflow-fast batch runs on Ray: pip install -e '.[cluster]' in the checkout") from None
    return ray


def _start_ray(ray, s: BatchSettings) -> bool:
    """Connect to or start Ray; True when this process started it (and so shuts it down)."""
    if ray.is_initialized():
        return False
    common = dict(log_to_driver=False, configure_logging=False, include_dashboard=False)
    # Ray (2.60) warns on every start that it turned on its default token authentication; batch keeps that
    # default (RAY_AUTH_MODE still decides) and only drops the notice from its output
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = notice.level
    notice.setLevel(logging.ERROR)
    try:
        if s.address:
            ray.init(address=s.address, **common)
        else:
            ray.init(num_cpus=s.workers or None, **common)
    finally:
        notice.setLevel(level)
    return True


def _inputs_stamp(job: Job) -> dict:
    """Size and modification time of a job's input files: a job is run again when they change. A folder (a
    model, embeddings, a video's frames) by those of every file in it, hashed: a file rewritten in place
    changes neither the folder's own size nor its time. Nothing is read."""
    stamp = {}
    for dest in ("video", "image", "prompt_embeds", "inject_embeds", "model"):
        v = job.options.get(dest)
        if isinstance(v, str) and v:
            try:
                st = os.stat(v)
                stamp[dest] = _folder_stamp(v) if os.path.isdir(v) else [st.st_size, st.st_mtime_ns]
            except OSError:
                stamp[dest] = None
    return stamp


def _folder_stamp(root: str) -> str:
    h = hashlib.sha256()
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(d, name)
            try:
                st = os.stat(path)  # a link's target: a hub cache's snapshot links to its blobs
                seen = f"{st.st_size}\0{st.st_mtime_ns}"
            except OSError:
                seen = "missing"
            h.update(f"{os.path.relpath(path, root)}\0{seen}\n".encode())
    return "files:" + h.hexdigest()[:16]


def _image_record(job: Job, res: dict) -> dict:
    """A job with an ``image``: its path and how the run took it (the run's ``record["image"]``)."""
    if not job.options.get("image"):
        return {}
    return {"image": {"path": job.options["image"], "conditioning": (res.get("record") or {}).get("image")}}


def _pick(pending: deque, model_key) -> Job:
    for i, job in enumerate(pending):
        if job.model_key == model_key:
            del pending[i]
            return job
    return pending.popleft()


def run_batch(jobs: list[Job], s: BatchSettings) -> dict[str, dict]:
    """Run ``jobs`` into ``s.out``; returns ``id -> result`` (``status``: done, failed or skipped)."""
    ray = _import_ray()
    out = Path(s.out).expanduser()
    from ..atomic import check_writable, dir_lock

    check_writable(out, option="--out", folder=True)
    lock = dir_lock(out, "ditflow-fast batch")
    try:
        return _run(ray, jobs, s, out)
    finally:
        os.close(lock)


CHANGED_HINT = ("(batch: its options or input files changed since its last run into this folder; "
                "--fresh-changed starts such jobs over)")


def _plan(jobs: list[Job], last: dict[str, dict], out: Path, retry_failed: bool
          ) -> tuple[dict[str, dict], list[Job], set[str]]:
    """``(results of the jobs not to run, the jobs to run, ids of those whose options or inputs changed
    since their last record)``. Skipped: done before with the same options and input files, its
    ``config.json`` there. Reported, not run: failed before with its own error, on the same options and
    inputs (unless ``retry_failed``). A job refused because its folder holds the run of other options
    or inputs (a ``stale`` failure) stays changed until it is started over (``--fresh-changed``)."""
    results: dict[str, dict] = {}
    todo: list[Job] = []
    changed: set[str] = set()
    for job in jobs:
        prev = last.get(job.id)
        same = (prev is not None and prev.get("fingerprint") == job.fingerprint
                and prev.get("inputs") == _inputs_stamp(job) and not prev.get("stale"))
        if same and prev["event"] == "done" and (out / job.id / "config.json").exists():
            results[job.id] = {"status": "skipped", "seconds": prev.get("seconds"), "worker": prev.get("worker"),
                               "attempts": 0, "error": None, "cache": prev.get("cache")}
        elif same and prev["event"] == "failed" and not retry_failed and prev.get("job_error"):
            # the job's own error, on unchanged inputs: it would fail again (--retry-failed runs it anyway)
            results[job.id] = {"status": "failed", "seconds": prev.get("seconds"), "worker": prev.get("worker"),
                               "attempts": 0, "error": "(earlier run) " + str(prev.get("error")), "cache": None}
        else:
            todo.append(job)
            if prev is not None and not same:
                changed.add(job.id)
    return results, todo, changed


def _run(ray, jobs: list[Job], s: BatchSettings, out: Path) -> dict[str, dict]:
    from tqdm.auto import tqdm

    from .worker import TransferWorker

    manifest = Manifest(out / MANIFEST)
    results, todo, changed = _plan(jobs, manifest.latest(), out, s.retry_failed)
    if results:
        manifest.add(event="skipped", done=sorted(k for k, r in results.items() if r["status"] == "skipped"),
                     failed_before=sorted(k for k, r in results.items() if r["status"] == "failed"))
    if not todo:
        return results
    order = {}
    for job in todo:  # grouped by model, in the order the models first appear
        order.setdefault(job.model_key, len(order))
    pending = deque(sorted(todo, key=lambda j: order[j.model_key]))
    fault = _fault()
    started = _start_ray(ray, s)
    bar = tqdm(total=len(jobs), initial=len(results), desc="jobs", unit="job", disable=not s.progress,
               dynamic_ncols=True, file=sys.stderr)
    actors: dict[str, object] = {}
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus:
            n, opts = min(gpus, s.workers or gpus), {"num_gpus": 1, "num_cpus": 0}
        else:
            n, opts = s.workers or 1, {"num_cpus": 1}
        remote = ray.remote(max_restarts=0, max_task_retries=0)(TransferWorker)
        serial = iter(range(1 << 30))

        def spawn() -> str:
            name = f"w{next(serial)}"
            actors[name] = remote.options(**opts).remote(name, s.threads, s.max_models)
            return name

        idle = [spawn() for _ in range(n)]
        held: dict[str, tuple] = {}
        running: dict[object, tuple[str, Job]] = {}
        attempts: dict[str, int] = {}
        stamps: dict[str, dict] = {}  # each job's input files as its latest attempt started
        while pending or running:
            while idle and pending:
                w = idle.pop(0)
                job = _pick(pending, held.get(w))
                attempts[job.id] = attempts.get(job.id, 0) + 1
                die = fault[1] if fault and fault[0] == job.id and attempts[job.id] == 1 else None
                fresh = s.fresh_changed and job.id in changed and attempts[job.id] == 1  # a retry resumes
                stamps[job.id] = _inputs_stamp(job)
                manifest.add(event="start", id=job.id, worker=w, attempt=attempts[job.id],
                             **({"fresh": True} if fresh else {}))
                options = {**job.options, "fresh": True} if fresh else job.options
                ref = actors[w].run.remote(job.id, options, str(out / job.id), die)
                running[ref] = (w, job)
                held[w] = job.model_key
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                w, job = running.pop(ref)
                try:
                    res = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                    why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    manifest.add(event="worker-died", id=job.id, worker=w, attempt=attempts[job.id], error=why)
                    ray.kill(actors.pop(w), no_restart=True)
                    held.pop(w, None)
                    idle.append(spawn())
                    if attempts[job.id] <= s.max_retries:
                        pending.appendleft(job)  # resumed from its saved state by the next idle worker
                        continue
                    res = {"ok": False, "worker": w, "seconds": None,
                           "error": f"its worker died {attempts[job.id]} times (last: {why})"}
                except ray.exceptions.RayError as exc:
                    res = {"ok": False, "worker": w, "seconds": None, "error": f"{type(exc).__name__}: {exc}"}
                    idle.append(w)
                else:
                    idle.append(w)
                cache = (res.get("record") or {}).get("ref_cache")
                cache = None if cache is None else {e["kind"]: "hit" if e["hit"] else "miss" for e in cache["events"]}
                error = res.get("error")
                # transfer refused the folder: it holds the run of the job's earlier options or inputs
                stale = bool(error) and job.id in changed and "holds a run with other" in error
                if stale:
                    error = f"{error} {CHANGED_HINT}"
                rec = manifest.add(event="done" if res["ok"] else "failed", id=job.id, line=job.line, worker=w,
                                   attempt=attempts[job.id], seconds=res.get("seconds"), model=res.get("model"),
                                   fingerprint=job.fingerprint, cache=cache, error=error,
                                   resumed_from_step=(res.get("record") or {}).get("resumed_from_step"),
                                   job_error="traceback" in res, inputs=stamps[job.id],
                                   traceback=res.get("traceback"), **({"stale": True} if stale else {}),
                                   **_image_record(job, res))
                results[job.id] = {"status": rec["event"], "seconds": rec["seconds"], "worker": w,
                                   "attempts": attempts[job.id], "error": rec["error"], "cache": cache,
                                   "resumed_from_step": rec["resumed_from_step"]}
                bar.update(1)
                bar.set_postfix(failed=sum(r["status"] == "failed" for r in results.values()))
    finally:
        bar.close()
        for a in actors.values():
            ray.kill(a, no_restart=True)
        if started:
            ray.shutdown()
    return {j.id: results[j.id] for j in jobs}


def summary_table(results: dict[str, dict]) -> str:
    """The end-of-batch table: one row per job, then the totals."""
    rows = [("job", "status", "seconds", "worker", "tries", "ref cache", "error")]
    for job_id, r in results.items():
        cache = ",".join(f"{k} {v}" for k, v in (r.get("cache") or {}).items()) or "-"
        err = (r.get("error") or "").splitlines()[0] if r.get("error") else ""
        rows.append((job_id, r["status"], "-" if r.get("seconds") is None else f"{r['seconds']:.2f}",
                     r.get("worker") or "-", str(r.get("attempts", 0)), cache, err[:100]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1] for row in rows]
    done = [r for r in results.values() if r["status"] == "done"]
    n = {k: sum(r["status"] == k for r in results.values()) for k in ("done", "failed", "skipped")}
    per = f", {sum(r['seconds'] for r in done) / len(done):.2f} s per job run" if done else ""
    lines.append(f"{n['done']} done, {n['failed']} failed, {n['skipped']} skipped (finished before){per}")
    return "\n".join(line.rstrip() for line in lines)
