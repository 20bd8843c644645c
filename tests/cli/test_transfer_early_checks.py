"""``transfer`` refusals a review found late or lossy: ``--inject-embeds`` with ``--fresh``, ``--lr``, new parent
folders of a refused ``--out``, ``--cfg`` on a two-expert model, the device index, and ``TransferResult.save``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("av")

from _transfer_helpers import set_arg as _set  # noqa: E402
from _transfer_helpers import transfer_args as _args  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from ditflow_fast.cli.main import main  # noqa: E402
from ditflow_fast.families.cogvideox import tiny  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    tiny.write_tiny_assets(root)
    return root


@pytest.fixture(scope="module")
def emb_run(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("emb") / "run"
    assert main(_args(assets, out, "--opt-mode", "emb")) == 0
    return out


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


def test_fresh_with_embeddings_the_model_refuses_keeps_the_old_run(assets, emb_run, tmp_path, capsys):
    bad = tmp_path / "nan_embeds"
    bad.mkdir()
    for f in (emb_run / "embeds").iterdir():
        tensors = load_file(str(f))
        tensors["emb"][0] = float("nan")
        with safe_open(str(f), framework="pt") as h:
            meta = h.metadata()
        save_file(tensors, str(bad / f.name), metadata=meta)
    before = _snapshot(emb_run)
    args = _args(assets, emb_run, "--opt-mode", "emb", "--seed", "1", "--fresh", "--inject-embeds", str(bad))
    assert main(args) == 2
    assert "non-finite" in capsys.readouterr().err
    assert _snapshot(emb_run) == before  # the embeddings, state and record of the old run are all still there


def test_fresh_refuses_to_inject_the_embeddings_it_would_delete(assets, emb_run, capsys, no_load):
    before = _snapshot(emb_run)
    args = _args(assets, emb_run, "--opt-mode", "emb", "--seed", "1", "--fresh", "--inject-embeds",
                 str(emb_run / "embeds"))
    assert main(args) == 2
    assert "--fresh would delete these embeddings" in capsys.readouterr().err
    assert _snapshot(emb_run) == before


@pytest.mark.parametrize("folder,message", [("missing", "no such folder"), ("empty", "holds no emb_t")])
def test_an_unusable_inject_folder_is_refused_before_loading(assets, tmp_path, capsys, no_load, folder, message):
    (tmp_path / "empty").mkdir()
    args = _args(assets, tmp_path / "out", "--opt-mode", "emb", "--inject-embeds", str(tmp_path / folder))
    assert main(args) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("lr", [["0.002", "-0.001"], ["nan", "0.001"]])
def test_a_bad_learning_rate_is_refused_before_loading(assets, tmp_path, capsys, no_load, lr):
    args = _args(assets, tmp_path / "out") + ["--lr", *lr]
    assert main(args) == 2
    assert "--lr FIRST LAST) must be two finite numbers >= 0" in capsys.readouterr().err


@pytest.mark.parametrize("lr", [[0.01], (0.01, 0.002, 0.5), (True, 0.1), (0.01, -1.0)])
def test_the_api_refuses_a_learning_rate_that_is_not_two_rates(lr):
    from ditflow_fast.transfer_api.options import TransferOptions

    with pytest.raises(ValueError, match=r"lr \(--lr FIRST LAST\) must be two"):
        TransferOptions.from_kwargs(lr=lr)
    assert TransferOptions.from_kwargs(lr=0.01).lr == (0.01, 0.01)


def test_a_refused_run_removes_the_parent_folders_it_created(assets, tmp_path, capsys):
    bad = tmp_path / "wide.safetensors"
    save_file({"prompt": torch.zeros(1, tiny.TEXT_LEN, tiny.TEXT_DIM + 1)}, str(bad))  # refused after the lock
    out = tmp_path / "a" / "b" / "out"
    assert main(_set(_args(assets, out), "--prompt-embeds", str(bad))) == 2
    assert "must be [1, L, 16]" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_one_cfg_sets_both_experts_of_a_two_expert_model():
    from ditflow_fast.families import WanFamily
    from ditflow_fast.families.wan.presets import PRESETS
    from ditflow_fast.transfer_api.options import TransferOptions

    model = "Wan-AI/Wan2.2-T2V-A14B-Diffusers"
    tcfg = dict(PRESETS[model]["transformer"], experts=2)

    def scales(**kw):
        c = TransferOptions.from_kwargs(**kw).guidance_config(model).resolve(tcfg, device="cpu", family=WanFamily)
        return c.cfg_scale, c.cfg_scale_2

    assert scales() == (4.0, 3.0)  # the Wan team's pair
    assert scales(cfg=6.0) == (6.0, 6.0)


def test_a_cuda_index_the_machine_lacks_is_refused(monkeypatch):
    from ditflow_fast.transfer_api.checks import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="has 1 CUDA device"):
        check_device("cuda:3")
    assert check_device("cuda:0") == torch.device("cuda:0")


def test_save_picks_the_format_by_suffix_and_refuses_the_rest(tmp_path):
    from ditflow_fast.transfer_api.result import TransferResult

    r = TransferResult(frames=np.zeros((2, 16, 16, 3), np.uint8), fps=8, losses={}, passes=0)
    assert r.save(tmp_path / "a.gif").is_file()
    assert r.save(tmp_path / "frames").is_dir()
    assert r.save(tmp_path / "named.mp4", fmt="frames").is_dir()  # asked for by name
    for path, fmt, message in (("a.avi", None, "give a .mp4 or .gif name"), ("b.gif", "mp4", "contradicts")):
        with pytest.raises(ValueError, match=message):
            r.save(tmp_path / path, fmt=fmt)
        assert not (tmp_path / path).exists()


def _resolved(model, tcfg, family, **kw):
    from ditflow_fast.guidance.config import GuidanceConfig

    return GuidanceConfig(model=model, **kw).resolve(tcfg, device="cpu", family=family)


def test_a_single_expert_model_keeps_no_second_scale():
    from ditflow_fast.families import WanFamily
    from ditflow_fast.families.wan.presets import PRESETS

    model = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    assert _resolved(model, dict(PRESETS[model]["transformer"]), WanFamily, cfg_scale=6.0).cfg_scale_2 is None


@pytest.mark.parametrize("kw,message", [
    (dict(guidance_blocks=(1, 1)), r"guidance_blocks \(--guidance-block\) must name each block once"),
    (dict(guidance_blocks=()), r"guidance_blocks \(--guidance-block\) must name each block once"),
    (dict(injection_blocks=()), r"injection_blocks \(with injection on\)"),
    (dict(scheduler="dpm"), r"scheduler 'dpm': wan models sample with unipc"),
])
def test_blocks_and_schedulers_the_loop_cannot_use_are_refused_at_resolve(kw, message):
    from ditflow_fast.families import WanFamily
    from ditflow_fast.families.wan.presets import PRESETS

    model = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    with pytest.raises(ValueError, match=message):
        _resolved(model, dict(PRESETS[model]["transformer"]), WanFamily, **kw)
    assert _resolved(model, dict(PRESETS[model]["transformer"]), WanFamily, injection_blocks=(),
                     injection=False).injection_blocks == ()


def test_a_prompt_for_a_folder_without_its_text_encoder_is_refused_before_loading(assets, tmp_path, capsys, no_load):
    args = [a for a in _args(assets, tmp_path / "out") if "prompt_embeds" not in a and a != "--prompt-embeds"]
    assert main(args + ["--prompt", "a cat"]) == 2
    err = capsys.readouterr().err
    assert "has no tokenizer/ or text_encoder/" in err and "--prompt-embeds FILE" in err
