"""The machine a benchmark record names: a CPU whose model name a hypervisor hides still gets a name of its own."""

from __future__ import annotations

from ditflow_fast.bench import record
from ditflow_fast.bench.report import _machine

ZEN3 = {"model name": "AMD EPYC", "cpu family": "25", "model": "1", "flags": "fpu avx2 fma"}
ZEN4 = {"model name": "AMD EPYC", "cpu family": "25", "model": "17", "flags": "avx2 fma avx512f avx512_bf16"}


def _machine_of(info: dict, monkeypatch) -> dict:
    monkeypatch.setattr(record, "_cpuinfo", lambda: info)
    return record.machine_info()


def test_a_hidden_model_name_gets_its_family_and_model(monkeypatch):
    zen3, zen4 = _machine_of(ZEN3, monkeypatch), _machine_of(ZEN4, monkeypatch)
    assert zen3["cpu"] == "AMD EPYC (family 25 model 1)" and zen4["cpu"] == "AMD EPYC (family 25 model 17)"
    assert record.machine_slug(zen3) != record.machine_slug(zen4)
    assert record.machine_slug(zen3).startswith("amd-epyc-family-25-model-1-")


def test_a_full_model_name_is_kept_as_it_is(monkeypatch):
    info = {"model name": "Intel(R) Xeon(R) Platinum 8480+", "cpu family": "6", "model": "143"}
    assert _machine_of(info, monkeypatch)["cpu"] == "Intel(R) Xeon(R) Platinum 8480+"


def test_the_kernel_relevant_instruction_sets_are_recorded_and_printed(monkeypatch):
    zen3, zen4 = _machine_of(ZEN3, monkeypatch), _machine_of(ZEN4, monkeypatch)
    assert zen3["cpu_isa"] == ["avx2", "fma"]
    assert zen4["cpu_isa"] == ["avx2", "fma", "avx512f", "avx512_bf16"]
    assert _machine({**zen4, "cores": 2}).endswith("2 cores, avx2 fma avx512f avx512_bf16")
    assert _machine({**zen3, "cpu_isa": []}).endswith("no AVX2")


def test_records_from_before_the_instruction_sets_still_print():
    old = {"cpu": "AMD EPYC", "cores": 2, "gpu": None}
    assert _machine(old) == "AMD EPYC, 2 cores"
    assert _machine({**old, "gpu": "NVIDIA H100"}) == "NVIDIA H100"


def test_this_machine_reads_back_a_non_empty_name():
    m = record.machine_info()
    assert m["cpu"] and set(m["cpu_isa"]) <= set(record.KERNEL_ISA)
