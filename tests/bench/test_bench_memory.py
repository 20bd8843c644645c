"""The bench's CPU memory probe rebuilds the case it was given: ``--layout`` included (bthd's q/k are strided views
of ``[B, T, H, d]`` tensors, another case than bhtd's contiguous ones)."""

from __future__ import annotations

import json
import subprocess

from ditflow_fast.bench import cases, memory, memprobe
from ditflow_fast.bench.spec import CaseSpec
from ditflow_fast.cli import memprobe as memprobe_cli


def test_measure_passes_the_layout_to_the_probe(monkeypatch):
    seen = {}

    def fake_run(cmd, **kw):
        seen["cmd"] = cmd
        return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps({"peak_extra_bytes": 1}) + "\n", stderr="")

    monkeypatch.setattr(memory.subprocess, "run", fake_run)
    memory.measure(CaseSpec("torch", "soft", "tiny", layout="bthd"))
    cmd = seen["cmd"]
    assert cmd[cmd.index("--layout") + 1] == "bthd"


def test_probe_builds_the_case_in_its_layout(monkeypatch, capsys):
    built = []
    monkeypatch.setattr(cases, "build_case", lambda spec: built.append(spec) or (lambda: None))
    monkeypatch.setattr(memprobe, "cpu_peak_extra", lambda run: {"peak_extra_bytes": 0})
    assert memprobe_cli.main(["--preset", "tiny", "--impl", "torch", "--mode", "soft", "--layout", "bthd"]) == 0
    assert built[0].layout == "bthd"
    memprobe_cli.main(["--preset", "tiny", "--impl", "torch", "--mode", "soft"])
    assert built[1].layout == "bhtd"
