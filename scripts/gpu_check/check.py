"""The device check's driver (``scripts/gpu_check.sh OUTDIR`` runs it): install offline, build, test,
benchmark, one guided step, the families' real-size steps, the GPU peers, summary; each step a subprocess
under its own time budget (which it reads as ``GPU_CHECK_STEP_TIMEOUT_S``).

Standard library only: it starts before the package is installed. Everything a step produces goes
into OUTDIR as it is made (a log per step, ``steps.jsonl``, the JSON of the step), and the summary
(``summary.md``, ``summary.json``, see ``summary.py``) is rewritten after every step, so a kill at
any point still leaves the figures gathered so far.

Budgets. The whole check has ``--budget`` seconds (default 480: 8 minutes on an H200). Each step has
a budget (its timeout when time allows) and a minimum (less than that is not worth starting); a step
is given ``min(budget, time left - the minimums of the steps after it - the final reserve)`` and is
skipped with a note when that is below its minimum (:func:`allot`). Steps that cannot run here (no
CUDA device, a CPU build of torch) are skipped with that reason and keep no reserve.

Without a CUDA device (the rehearsal) the same steps run where they can: the install from the
carried wheels, the pure-Python package, ``--dry-run``, ``pytest -m gpu`` (everything skips), and
toy-size stand-ins of the benchmark (the GPU peers print why they skip), the guided step and the family
steps on the CPU, labelled as rehearsal.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import summary  # noqa: E402

DEFAULT_BUDGET_S = 480
FINAL_RESERVE_S = 15  # the closing env probe and the summary
GPU_PRESETS = ("cogvideox-5b-f6", "cogvideox-5b-f13", "wan2.1-1.3b-f21")
BENCH_IMPLS = "triton,cuda,torch,sdpa"  # plus the research row and the bare GEMM, always run
# What a GPU user would pick instead of the package for the argmax (issue 31): KeOps over LazyTensors (pykeops,
# carried: wheels.txt) and faiss-gpu's flat inner-product top-1 (its wheels cannot be carried: bench/peers.py).
# Their own bench step, so that KeOps' first compile cannot eat the main benchmark's time.
GPU_PEERS = "keops,faiss_gpu"
NOT_RUN_YET = ("added for issue 31 and never run on a GPU before this check: the KeOps and faiss-gpu argmax peer rows "
               "(step bench-peers) and the real-size guided steps of the families (step family_steps, "
               "family_steps.json); each is skipped with its reason where its package, its time or its memory is "
               "missing")


@dataclass
class Step:
    name: str
    budget: float  # the timeout when there is time for it
    minimum: float  # below this it is skipped
    cmd: list[str] | None = None
    why_not: str | None = None  # set when the step cannot run on this machine
    env: dict | None = None
    stdout: str | None = None  # file name in OUTDIR for stdout, when it is the step's product


def allot(budget: float, minimum: float, remaining: float, later_minimums: float,
          reserve: float = FINAL_RESERVE_S) -> tuple[float | None, str | None]:
    """(timeout, None) for a step that fits, or (None, why) for one that would run over."""
    avail = remaining - reserve - later_minimums
    if avail < minimum:
        return None, (f"would run over the check's budget: {max(remaining, 0):.0f} s left, this step needs at "
                      f"least {minimum:.0f} s and {later_minimums + reserve:.0f} s are kept for the steps after it")
    return min(budget, avail), None


def later_reserve(minimums: list[float], remaining: float, reserve: float = FINAL_RESERVE_S) -> float:
    """Seconds to keep for the steps still to come: the sum of their minimums, leaving out a step
    whose minimum could never fit in what is left (it will be skipped anyway)."""
    return sum(m for m in minimums if m <= remaining - reserve)


def wheel_name_version(filename: str) -> tuple[str, str]:
    """('diffusers', '0.42.1') from 'diffusers-0.42.1-py3-none-any.whl'."""
    parts = Path(filename).name.split("-")
    if len(parts) < 5 or not filename.endswith(".whl"):
        raise ValueError(f"not a wheel file name: {filename}")
    return parts[0], parts[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Check:
    def __init__(self, outdir: Path, py: str, budget: float, wheels: Path):
        self.out, self.py, self.budget, self.wheels = outdir, py, budget, wheels
        self.t0 = time.monotonic()
        self.failed = False
        self.current: subprocess.Popen | None = None  # the running step (its own process group)
        outdir.mkdir(parents=True, exist_ok=True)
        for stale in ("steps.jsonl", "bench.jsonl", "guided_step.json", "family_steps.json", "pytest-gpu.xml",
                      "dry_run.txt"):
            (outdir / stale).unlink(missing_ok=True)
        self.meta = {"started": now(), "budget_s": budget, "python": py, "outdir": str(outdir),
                     "commit": self._git("rev-parse", "HEAD"), "dirty": bool(self._git("status", "--porcelain")),
                     "wheels": sorted(p.name for p in wheels.glob("*.whl")) if wheels.is_dir() else []}
        self._save_meta()

    def _git(self, *args) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    def _save_meta(self):
        (self.out / "check.json").write_text(json.dumps(self.meta, indent=1) + "\n")

    def stop(self, signum, frame):
        """SIGTERM/SIGINT (the wrapper's hard limit): end the running step's process group too (it is
        a session of its own, which outlives this process otherwise), then exit 124."""
        if self.current is not None:
            try:
                os.killpg(self.current.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        print(f"device check stopped by signal {signum}", flush=True)
        os._exit(124)

    def remaining(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def record(self, **row):
        with open(self.out / "steps.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        self.meta["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        self._save_meta()
        try:
            summary.write(self.out)
        except Exception as exc:  # the summary must never end the check
            print(f"summary not written: {type(exc).__name__}: {exc}", flush=True)

    def skip(self, step: Step, why: str):
        print(f"== {step.name}: skipped: {why}", flush=True)
        self.record(name=step.name, status="skipped", reason=why, seconds=0, timeout=None)

    def run(self, step: Step, timeout: float) -> int | None:
        """Run ``step.cmd`` in its own process group with ``timeout``; rc, or None when it timed out."""
        log = self.out / f"{step.name.replace(':', '-')}.log"
        print(f"== {step.name} (timeout {timeout:.0f} s): {' '.join(step.cmd)}", flush=True)
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        # HF_HUB_OFFLINE: nothing may wait on a network the GPU machine does not have
        # GPU_CHECK_STEP_TIMEOUT_S: the step's own guard (family_steps.py) plans within what it was given
        env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "GPU_CHECK_STEP_TIMEOUT_S": f"{timeout:.0f}",
                    **(step.env or {})})
        t = time.monotonic()
        with open(log, "w") as lf:
            out = open(self.out / step.stdout, "w") if step.stdout else lf
            try:
                proc = subprocess.Popen(step.cmd, cwd=REPO, env=env, stdout=out, stderr=lf, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
                self.current = proc
                try:
                    rc = proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    rc = None
                    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                        try:
                            os.killpg(proc.pid, sig)
                        except ProcessLookupError:
                            break
                        try:
                            proc.wait(timeout=grace)
                            break
                        except subprocess.TimeoutExpired:
                            continue
            finally:
                self.current = None
                if out is not lf:
                    out.close()
        secs = time.monotonic() - t
        shown = self.out / step.stdout if step.stdout else log
        tail = shown.read_text(errors="replace").splitlines()[-12:]
        print("\n".join("   | " + ln[:200] for ln in tail), flush=True)
        if rc is None:
            status, reason = "timeout", f"killed after its {timeout:.0f} s budget; partial output in {log.name}"
        elif rc != 0:
            status, reason = "failed", f"exit status {rc}; see {log.name}"
        else:
            status, reason = "ok", None
        if status != "ok":
            self.failed = True
        print(f"   {step.name}: {status} in {secs:.1f} s" + (f" ({reason})" if reason else ""), flush=True)
        self.record(name=step.name, status=status, reason=reason, seconds=round(secs, 1), timeout=round(timeout),
                    rc=rc, log=log.name)
        return rc

    def run_steps(self, steps: list[Step]):
        for i, step in enumerate(steps):
            if step.why_not:
                self.skip(step, step.why_not)
                continue
            remaining = self.remaining()
            later = later_reserve([s.minimum for s in steps[i + 1:] if not s.why_not], remaining)
            timeout, why = allot(step.budget, step.minimum, remaining, later)
            if timeout is None:
                self.skip(step, why)
            else:
                self.run(step, timeout)

    def probe(self, name: str) -> dict:
        path = self.out / name
        subprocess.run([self.py, str(HERE / "envinfo.py"), str(path)], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
        return summary.read_json(path) or {}

    def installed_version(self, dist: str) -> str | None:
        code = ("import importlib.metadata as m, sys\ntry: print(m.version(sys.argv[1]))\n"
                "except m.PackageNotFoundError: pass")
        done = subprocess.run([self.py, "-c", code, dist], capture_output=True, text=True, timeout=60)
        return done.stdout.strip() or None


def cuda_home_env(nvcc_path: str | None) -> dict:
    """CUDA_HOME (the toolkit root, symlinks resolved, where its headers are) and nvcc's folder on PATH,
    unless CUDA_HOME is set already; torch's own guess from a symlinked nvcc can miss the headers."""
    if not nvcc_path or os.environ.get("CUDA_HOME"):
        return {}
    real = Path(nvcc_path).resolve()
    env = {"PATH": str(real.parent) + os.pathsep + os.environ.get("PATH", "")}
    if (real.parent.parent / "include" / "cuda_runtime.h").exists():
        env["CUDA_HOME"] = str(real.parent.parent)
    return env


def plan(check: Check, before: dict) -> list[Step]:
    """The steps for this machine, in order of value: install, build, tests, benchmark, guided step."""
    py = check.py
    cuda = bool(before.get("device"))
    torch_cuda = before.get("torch_cuda")
    no_gpu = "no CUDA device here (torch.cuda.is_available() is False)"
    out = check.out
    steps: list[Step] = []

    wheels = sorted(check.wheels.glob("*.whl")) if check.wheels.is_dir() else []
    need = []
    for w in wheels:
        name, version = wheel_name_version(w.name)
        have = check.installed_version(_norm(name))
        if have != version:
            need.append(str(w))
    if not wheels:
        why = f"no wheels in {check.wheels} (run scripts/fetch_gpu_wheels.sh here and carry the folder)"
    elif not need:
        why = "every carried wheel is already installed at its version"
    else:
        why = None
    steps.append(Step("install_wheels", 90, 10, why_not=why,
                      cmd=[py, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
                           "--disable-pip-version-check", *need]))
    # The package itself, pure Python (editable: tests import it from the tree); the native build is its own step.
    steps.append(Step("install_package", 90, 10, env={"DITFLOW_FAST_BUILD_CPU": "0"},
                      cmd=[py, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "-e", str(REPO)]))
    if torch_cuda is None:
        why = "this torch is a CPU build (torch.version.cuda is None): the CUDA extension is built on a GPU machine"
    elif not before.get("nvcc"):
        why = "no nvcc on PATH: the CUDA extension cannot be built (the cuda rows skip)"
    else:
        why = None
    cap = (before.get("device") or {}).get("capability") or "9.0"
    build_env = {"DITFLOW_FAST_BUILD_CPU": "1", "DITFLOW_FAST_BUILD_CUDA": "1", "TORCH_CUDA_ARCH_LIST": cap,
                 "MAX_JOBS": str(os.cpu_count() or 4)}
    build_env.update(cuda_home_env(before.get("nvcc_path")))
    steps.append(Step("build_native", 300, 30, why_not=why, env=build_env,
                      cmd=[py, "setup.py", "-q", "build_ext", "--inplace"]))
    steps.append(Step("dry_run", 60, 8, stdout="dry_run.txt",
                      cmd=[py, "-m", "ditflow_fast.cli", "transfer", "--dry-run", "--model", "THUDM/CogVideoX-5b",
                           "--frames", "49"]))
    steps.append(Step("pytest_gpu", 180, 30,
                      cmd=[py, "-m", "pytest", "-m", "gpu", "tests", "-q", "-rs", "-p", "no:cacheprovider",
                           "--continue-on-collection-errors", f"--junitxml={out / 'pytest-gpu.xml'}"]))

    def bench(preset: str, budget: float, minimum: float, repeats: int, impls: str = BENCH_IMPLS,
              name: str = "bench", modes: tuple[str, ...] = ()) -> Step:
        return Step(f"{name}:{preset}", budget, minimum, why_not=None if cuda else no_gpu,
                    cmd=[py, "-m", "ditflow_fast.cli", "bench", "--preset", preset, "--backends", impls,
                         *(("--modes", ",".join(modes)) if modes else ()),
                         "--dtype", "bfloat16", "--device", "cuda", "--repeats", str(repeats), "--warmup", "1",
                         "--out", str(out / "bench.jsonl")])

    steps.append(bench(GPU_PRESETS[0], 90, 20, 5))
    steps.append(Step("guided_step", 150, 45, why_not=None if cuda else no_gpu,
                      cmd=[py, str(HERE / "guided_step.py"), "--out", str(out / "guided_step.json")]))
    # Real-size guided steps of the other families (family_steps.py); it skips a model predicted past the
    # time this step is given or past the GPU's free memory.
    steps.append(Step("family_steps", 180, 45, why_not=None if cuda else no_gpu,
                      cmd=[py, str(HERE / "family_steps.py"), "--out", str(out / "family_steps.json")]))
    steps.append(bench(GPU_PRESETS[0], 90, 20, 3, impls=GPU_PEERS, name="bench-peers", modes=("argmax",)))
    steps.append(bench(GPU_PRESETS[1], 110, 25, 5))
    steps.append(bench(GPU_PRESETS[2], 110, 25, 3))
    if not cuda:  # the rehearsal's toy stand-ins: the same code paths on the CPU, labelled as such
        steps.append(Step("rehearsal:bench-smoke", 120, 15,
                          cmd=[py, "-m", "ditflow_fast.cli", "bench", "--preset", "smoke", "--backends",
                               f"{BENCH_IMPLS},{GPU_PEERS}",
                               "--dtype", "float32", "--device", "cpu", "--repeats", "2", "--warmup", "1",
                               "--no-memory", "--out", str(out / "bench.jsonl")]))
        steps.append(Step("rehearsal:guided-step-toy", 120, 15,
                          cmd=[py, str(HERE / "guided_step.py"), "--rehearsal",
                               "--out", str(out / "guided_step.json")]))
        steps.append(Step("rehearsal:family-steps-toy", 120, 15,
                          cmd=[py, str(HERE / "family_steps.py"), "--rehearsal",
                               "--out", str(out / "family_steps.json")]))
    return steps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="the device check (see scripts/gpu_check.sh)")
    ap.add_argument("outdir")
    ap.add_argument("--budget", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET_S", DEFAULT_BUDGET_S)),
                    help=f"seconds for the whole check (default {DEFAULT_BUDGET_S}; env GPU_CHECK_BUDGET_S)")
    ap.add_argument("--python", default=sys.executable,
                    help="the environment to install into and run (default: this one)")
    ap.add_argument("--wheels", default=str(REPO / ".gpu_wheels"), help="folder of the carried wheels")
    a = ap.parse_args(argv)
    check = Check(Path(a.outdir).resolve(), a.python, a.budget, Path(a.wheels))
    signal.signal(signal.SIGTERM, check.stop)
    signal.signal(signal.SIGINT, check.stop)
    before = check.probe("env-before.json")
    check.meta["rehearsal"] = not before.get("device")
    check._save_meta()
    dev = before.get("device") or {}
    print(f"device check: {dev.get('name') or 'no CUDA device (rehearsal)'}; python {a.python}; "
          f"torch {before.get('versions', {}).get('torch')}; budget {a.budget:.0f} s; writing to {check.out}",
          flush=True)
    if not (before.get("versions") or {}).get("xformers"):
        check.meta.setdefault("notes", []).append(
            "xformers is not installed here: the SDPA-with-coordinates rows are torch's "
            "scaled_dot_product_attention (peer `sdpa`); the benchmark has no xformers row")
        check._save_meta()
    check.meta.setdefault("notes", []).append(NOT_RUN_YET)
    check._save_meta()
    print(f"device check: {NOT_RUN_YET}", flush=True)
    check.run_steps(plan(check, before))
    check.probe("env.json")
    check.meta.update(finished=now(), elapsed_s=round(time.monotonic() - check.t0, 1))
    check._save_meta()
    s = summary.write(check.out)
    text = (check.out / "summary.md").read_text()
    print("\n" + (text if len(text) < 9000 else text[:9000] + "\n... (cut; the whole summary is summary.md)"))
    print(f"device check: {len(s['problems'])} problem(s), {len(s['skipped'])} skipped item(s); "
          f"{check.meta['elapsed_s']:.0f} s of {a.budget:.0f}; summary in {check.out / 'summary.md'}")
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
