"""The device check's driver (scripts/gpu_check/): budgeting, step running, planning and the summary.

No package install, no GPU; the families' steps (family_steps.py) run once at toy size on the CPU (about
15 s). The whole rehearsal runs in CI through scripts/gpu_check/rehearse.sh.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GPU_CHECK = ROOT / "scripts" / "gpu_check"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"gpu_check_{name}", GPU_CHECK / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


check = _load("check")
summary = _load("summary")


def test_allot_fits_caps_and_skips():
    assert check.allot(100, 10, remaining=480, later_minimums=50, reserve=15) == (100, None)
    # capped by what is left after the later steps' minimums and the reserve
    assert check.allot(300, 10, remaining=200, later_minimums=50, reserve=15) == (135, None)
    timeout, why = check.allot(300, 60, remaining=100, later_minimums=50, reserve=15)
    assert timeout is None and "would run over" in why and "100 s left" in why and "65 s are kept" in why
    assert check.allot(10, 10, remaining=25, later_minimums=0, reserve=15) == (10, None)  # exactly enough


def test_later_reserve_ignores_steps_that_can_never_fit():
    assert check.later_reserve([20, 30], remaining=100, reserve=15) == 50
    assert check.later_reserve([20, 500], remaining=100, reserve=15) == 20


def test_wheel_name_version():
    assert check.wheel_name_version("diffusers-0.42.1-py3-none-any.whl") == ("diffusers", "0.42.1")
    assert check.wheel_name_version("/x/importlib_metadata-8.7.0-py3-none-any.whl") == ("importlib_metadata", "8.7.0")
    with pytest.raises(ValueError):
        check.wheel_name_version("diffusers-0.42.1.tar.gz")


def test_listed_wheels_are_pinned_and_small_set():
    lines = [ln.split("#")[0].strip() for ln in (GPU_CHECK / "wheels.txt").read_text().splitlines()]
    reqs = [ln for ln in lines if ln]
    assert reqs and all("==" in r for r in reqs), reqs
    assert {r.split("==")[0] for r in reqs} == {"diffusers", "importlib_metadata", "pykeops", "keopscore"}


def test_steps_run_time_out_and_skip_with_notes(tmp_path):
    c = check.Check(tmp_path / "out", sys.executable, budget=60, wheels=tmp_path / "none")
    py = sys.executable
    steps = [
        check.Step("sleeps", 1, 0.5, cmd=[py, "-c", "import time; print('started', flush=True); time.sleep(60)"]),
        check.Step("no-gpu", 10, 1, why_not="no CUDA device here"),
        check.Step("too-big", 1000, 500, cmd=[py, "-c", "pass"]),
        check.Step("fails", 10, 1, cmd=[py, "-c", "import sys; sys.exit(3)"]),
        check.Step("prints", 10, 1, cmd=[py, "-c", "print('figure 42')"], stdout="prints.txt"),
    ]
    t = time.monotonic()
    c.run_steps(steps)
    assert time.monotonic() - t < 30  # the sleeper was killed at its 1 s budget
    rows = {r["name"]: r for r in summary.read_jsonl(c.out / "steps.jsonl")}
    assert rows["sleeps"]["status"] == "timeout" and "killed after its 1 s budget" in rows["sleeps"]["reason"]
    assert "started" in (c.out / "sleeps.log").read_text()  # partial output kept
    assert rows["no-gpu"] == {**rows["no-gpu"], "status": "skipped", "reason": "no CUDA device here"}
    assert rows["too-big"]["status"] == "skipped" and "would run over" in rows["too-big"]["reason"]
    assert rows["fails"]["status"] == "failed" and rows["fails"]["rc"] == 3
    assert rows["prints"]["status"] == "ok" and (c.out / "prints.txt").read_text() == "figure 42\n"
    assert c.failed
    s = json.loads((c.out / "summary.json").read_text())  # rewritten after every step
    assert {p["step"] for p in s["problems"]} == {"sleeps", "fails"}
    assert {x["what"] for x in s["skipped"]} == {"no-gpu", "too-big"}


def _fake_check(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "no_such_dist_xyz-1.0-py3-none-any.whl").write_bytes(b"")
    return check.Check(tmp_path / "out", sys.executable, budget=480, wheels=wheels)


def test_plan_without_a_gpu_is_the_rehearsal(tmp_path):
    steps = check.plan(_fake_check(tmp_path), {"device": None, "torch_cuda": None, "nvcc": None})
    steps = {s.name: s for s in steps}
    assert steps["install_wheels"].why_not is None and steps["install_wheels"].cmd[-1].endswith(".whl")
    assert "--no-index" in steps["install_wheels"].cmd and "--no-deps" in steps["install_wheels"].cmd
    assert "CPU build" in steps["build_native"].why_not
    for name in ("bench:cogvideox-5b-f6", "bench:cogvideox-5b-f13", "bench:wan2.1-1.3b-f21", "guided_step",
                 "family_steps", "bench-peers:cogvideox-5b-f6"):
        assert "no CUDA device" in steps[name].why_not
    assert steps["rehearsal:bench-smoke"].why_not is None and "--rehearsal" in steps["rehearsal:guided-step-toy"].cmd
    assert "--rehearsal" in steps["rehearsal:family-steps-toy"].cmd
    smoke = steps["rehearsal:bench-smoke"].cmd
    assert smoke[smoke.index("--backends") + 1].endswith(",keops,faiss_gpu")  # their skip reasons get printed
    assert steps["pytest_gpu"].why_not is None and "--continue-on-collection-errors" in steps["pytest_gpu"].cmd


def test_plan_on_a_gpu_fits_the_eight_minutes(tmp_path):
    before = {"device": {"name": "NVIDIA H200", "capability": "9.0"}, "torch_cuda": "13.0", "nvcc": "V13.0"}
    steps = check.plan(_fake_check(tmp_path), before)
    names = [s.name for s in steps]
    assert not [n for n in names if n.startswith("rehearsal:")]
    assert all(s.why_not is None for s in steps), [(s.name, s.why_not) for s in steps]
    by = {s.name: s for s in steps}
    build_env = by["build_native"].env
    assert build_env["TORCH_CUDA_ARCH_LIST"] == "9.0" and build_env["DITFLOW_FAST_BUILD_CUDA"] == "1"
    for preset in check.GPU_PRESETS:
        cmd = by[f"bench:{preset}"].cmd
        assert cmd[cmd.index("--device") + 1] == "cuda" and cmd[cmd.index("--dtype") + 1] == "bfloat16"
        assert cmd[cmd.index("--backends") + 1] == "triton,cuda,torch,sdpa"
    peers = by["bench-peers:cogvideox-5b-f6"].cmd
    assert peers[peers.index("--backends") + 1] == "keops,faiss_gpu" and peers[peers.index("--modes") + 1] == "argmax"
    assert by["family_steps"].cmd[-2:] == ["--out", str(tmp_path / "out" / "family_steps.json")]
    # every step gets at least its minimum inside the default budget
    assert sum(s.minimum for s in steps) + check.FINAL_RESERVE_S <= check.DEFAULT_BUDGET_S


def test_a_step_is_told_its_timeout(tmp_path):
    c = check.Check(tmp_path / "out", sys.executable, budget=60, wheels=tmp_path / "none")
    code = "import os; print(os.environ['GPU_CHECK_STEP_TIMEOUT_S'])"
    step = check.Step("says", 7, 1, cmd=[sys.executable, "-c", code], stdout="says.txt")
    c.run_steps([step])
    assert (c.out / "says.txt").read_text() == "7\n"


def _bench_record():
    rows = [
        {"impl": "gemm", "mode": "gemm", "status": "ok", "median_s": 0.01, "flops": 1e12},
        {"impl": "research", "mode": "soft", "status": "ok", "median_s": 0.04, "flops": 1e12,
         "peak_extra_bytes": 2**31, "memory_label": "measured"},
        {"impl": "triton", "mode": "soft", "status": "ok", "median_s": 0.02, "flops": 1e12, "speedup_vs_research": 2.0},
        {"impl": "cuda", "mode": "soft_fwd_bwd", "status": "skipped", "reason": "has no backward", "flops": 4e12},
    ]
    return {"preset": {"name": "cogvideox-5b-f6", "tokens": 8100, "heads": 48, "head_dim": 64}, "dtype": "bfloat16",
            "device": "cuda", "machine": {"gpu": "NVIDIA H200"}, "rows": rows}


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" time="3.5">
<testcase classname="tests.gpu.test_triton_gpu" name="test_a" time="1"/>
<testcase classname="tests.gpu.test_triton_gpu" name="test_b" time="1">
<failure message="AssertionError: rel err 0.1">x</failure></testcase>
<testcase classname="tests.test_guidance_gpu" name="test_c" time="0"><skipped message="needs a CUDA device"/></testcase>
</testsuite></testsuites>"""


def test_summary_from_a_partial_outdir(tmp_path):
    out = tmp_path
    (out / "steps.jsonl").write_text(json.dumps({"name": "pytest_gpu", "status": "ok", "seconds": 4.0}) + "\n"
                                     + json.dumps({"name": "bench:x", "status": "timeout", "reason": "killed"}) + "\n"
                                     + '{"name": "cut by a ki')  # a line cut by a kill is dropped
    (out / "bench.jsonl").write_text(json.dumps(_bench_record()) + "\n")
    (out / "pytest-gpu.xml").write_text(JUNIT)
    (out / "guided_step.json").write_text(json.dumps({
        "what": "CogVideoX-5B step", "amf_backend": "triton",
        "timing": {"iteration_s": 2.0, "forward_s": 0.5, "amf_s": 0.2, "backward_s": 1.3, "amf_share": 0.1},
        "memory": {"measured_peak_bytes": 14 * 2**30, "predicted_without_vae_bytes": 14.5 * 2**30}}))
    (out / "env.json").write_text(json.dumps({"device": {"name": "NVIDIA H200", "capability": "9.0",
                                                         "total_memory_bytes": 140 * 2**30},
                                              "driver": "580.159", "versions": {"torch": "2.11.0", "triton": "3.6.0"}}))
    s = summary.write(out)
    assert [st["name"] for st in s["steps"]] == ["pytest_gpu", "bench:x"]
    assert s["pytest_gpu"]["passed"] == 1 and s["pytest_gpu"]["failed"] == 1 and s["pytest_gpu"]["skipped"] == 1
    b = s["bench"][0]
    assert b["gemm_tflop_s"] == 100.0 and not b["rehearsal"]
    share = {(r["impl"], r["mode"]): r["share_of_gemm"] for r in b["rows"]}
    assert share[("triton", "soft")] == 0.5 and share[("research", "soft")] == 0.25
    assert share[("cuda", "soft_fwd_bwd")] is None
    assert {"what": "bench cogvideox-5b-f6: cuda soft_fwd_bwd", "why": "has no backward"} in s["skipped"]
    assert s["problems"] == [{"step": "bench:x", "status": "timeout", "reason": "killed"}]
    md = (out / "summary.md").read_text()
    for text in ("NVIDIA H200", "580.159", "FAILED tests.gpu.test_triton_gpu::test_b",
                 "| triton | soft | 20.000 | 50.00 | 50.0% |", "AMF share of the step | 10.0%", "14.00 GiB",
                 "bench:x: timeout: killed"):
        assert text in md, text
    assert json.loads((out / "summary.json").read_text())["bench"][0]["preset"] == "cogvideox-5b-f6"


def test_summary_of_the_family_steps(tmp_path):
    (tmp_path / "family_steps.json").write_text(json.dumps({
        "device": "NVIDIA H100", "note": "first run", "gemm_tflop_s": 700.0, "gemm_dtype": "bf16", "time_limit_s": 180,
        "elapsed_s": 95, "models": [
            {"model": "Lightricks/LTX-Video", "frames": 121, "height": 512, "width": 768, "tokens": 6144,
             "status": "ok", "build_s": 2.0, "reference_s": 0.2, "guided_step_s": 1.5, "denoise_forward_s": 0.3,
             "peak_bytes": 6 * 2**30, "predicted_peak_bytes": 5 * 2**30, "predicted": {"total_s": 16}},
            {"model": "hunyuanvideo-community/HunyuanVideo", "frames": 17, "height": 544, "width": 960,
             "status": "skipped", "reason": "predicted 40 s > 10 s left of this step's 180 s"}]}))
    s = summary.write(tmp_path)
    assert {"what": "family step hunyuanvideo-community/HunyuanVideo",
            "why": "predicted 40 s > 10 s left of this step's 180 s"} in s["skipped"]
    md = (tmp_path / "summary.md").read_text()
    assert "| Lightricks/LTX-Video | 121 x 512x768 | 6144 | ok | 2.0 s | 0.200 s | 1.500 s | 0.300 s | 6.00 GiB | " \
           "5.00 GiB | 16 s |  |" in md
    assert "bf16 GEMM 700.00 TFLOP/s; 180 s given, 95 s used" in md


def test_summary_of_an_empty_outdir(tmp_path):
    s = summary.write(tmp_path)
    assert s["steps"] == [] and s["bench"] == [] and s["guided_step"] is None and s["family_steps"] is None
    assert "no benchmark record" in (tmp_path / "summary.md").read_text()


def test_gpu_check_sh_needs_an_outdir():
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr


def test_cuda_home_from_a_symlinked_nvcc(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_HOME", raising=False)
    root = tmp_path / "cuda-13.0"
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "include" / "cuda_runtime.h").write_text("")
    (root / "bin" / "nvcc").write_text("")
    (tmp_path / "nvcc").symlink_to(root / "bin" / "nvcc")
    env = check.cuda_home_env(str(tmp_path / "nvcc"))
    assert env["CUDA_HOME"] == str(root.resolve()) and env["PATH"].startswith(str((root / "bin").resolve()))
    assert check.cuda_home_env(None) == {}
    monkeypatch.setenv("CUDA_HOME", "/given")
    assert check.cuda_home_env(str(tmp_path / "nvcc")) == {}


def test_a_stopped_check_ends_its_running_step(tmp_path):
    """The wrapper's hard limit sends SIGTERM: the step (a session of its own) must not outlive the check."""
    pidfile = tmp_path / "pid"
    sleeper = tmp_path / "sleeper.py"
    sleeper.write_text(f"import os, time\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n")
    driver = tmp_path / "driver.py"
    driver.write_text(
        f"import signal, sys\nsys.path.insert(0, {str(GPU_CHECK)!r})\nimport check\n"
        f"c = check.Check(check.Path({str(tmp_path / 'out')!r}), sys.executable, 60, check.Path('/nonexistent'))\n"
        "signal.signal(signal.SIGTERM, c.stop)\n"
        f"c.run(check.Step('sleeper', 60, 1, cmd=[sys.executable, {str(sleeper)!r}]), 60)\n")
    proc = subprocess.Popen([sys.executable, str(driver)])
    for _ in range(200):
        if pidfile.exists() and pidfile.read_text():
            break
        time.sleep(0.1)
    pid = int(pidfile.read_text())
    proc.terminate()
    assert proc.wait(timeout=20) == 124
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"step process {pid} outlived the stopped check")


# -- the families' real-size steps (family_steps.py): its pieces here, its whole run at toy size --------------
family_steps = _load("family_steps")


def test_parameters_go_to_meta_and_buffers_keep_their_values():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 4)
            self.norm = torch.nn.LayerNorm(4)
            self.register_buffer("table", torch.arange(5.0))

    with family_steps.params_on_meta():
        m = M()
    assert all(p.is_meta for p in m.parameters()) and torch.equal(m.table, torch.arange(5.0))
    assert not torch.nn.Linear(2, 2).weight.is_meta  # the patch ends with the block
    type(m)._keep_in_fp32_modules = ["norm"]
    family_steps.materialise(m, "cpu", torch.bfloat16)
    assert m.lin.weight.dtype == torch.bfloat16 and m.norm.weight.dtype == torch.float32  # as diffusers loads them
    assert torch.equal(m.norm.weight, torch.ones(4)) and torch.equal(m.norm.bias, torch.zeros(4))
    assert m.lin.weight.float().abs().max() > 0 and not m.lin.weight.requires_grad


def test_the_guard_skips_what_would_not_fit():
    guess = {"total_s": 40.0, "build_s": 5.0, "compute_s": 20.0}
    assert family_steps.guard(guess, 0.3, 10 * 2**30, left_s=60, limit_s=180, free_bytes=80 * 2**30) is None
    why = family_steps.guard(guess, 0.3, 10 * 2**30, left_s=30, limit_s=180, free_bytes=80 * 2**30)
    assert why.startswith("predicted 40.0 s") and "30 s left of this step's 180 s" in why
    why = family_steps.guard(guess, 0.3, 75 * 2**30, left_s=600, limit_s=600, free_bytes=80 * 2**30)
    assert why.startswith("predicted peak 75.0 GiB (+15%") and "80.0 GiB free" in why


def test_forward_flops_count_the_text_only_where_it_joins_the_attention():
    cfg = {"num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 3}
    joint = types.SimpleNamespace(text_position="prefix", block_count=lambda c: 3)
    cross = types.SimpleNamespace(text_position="none", block_count=lambda c: 3)
    assert family_steps.forward_flops(cross, cfg, 100, 10, 5) == 2 * 100 * 10 + 4 * 3 * 10**2 * 16
    assert family_steps.forward_flops(joint, cfg, 100, 10, 5) == 2 * 100 * 15 + 4 * 3 * 15**2 * 16


def test_family_steps_rehearsal_runs_the_loop_and_predicts_the_real_size(tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "fs.json"
    done = subprocess.run([sys.executable, str(GPU_CHECK / "family_steps.py"), "--rehearsal", "--out", str(out),
                           "--models", "Lightricks/LTX-Video,hunyuanvideo-community/HunyuanVideo"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["rehearsal"] and doc["status"] == "done" and len(doc["models"]) == 2
    for m in doc["models"]:
        assert m["status"] == "ok" and m["rehearsal_size"] and m["guided_step_s"] > 0 and m["denoise_forward_s"] > 0
        assert m["loss"] is not None and m["predicted"]["total_s"] > 0
    ltx, hy = doc["models"]
    assert ltx["tokens"] == 16 * 16 * 24 and 1.8e9 < ltx["parameters"] < 2.1e9  # LTX-Video 2B, real size
    assert 12e9 < hy["parameters"] < 14e9 and 20 * 2**30 < hy["predicted_peak_bytes"] < 40 * 2**30
