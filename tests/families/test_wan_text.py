"""Wan prompt encoding with the model's umT5 (ditflow_fast.families.wan.text), on a tiny encoder built here."""

from __future__ import annotations

import builtins

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from ditflow_fast.errors import ModelError  # noqa: E402
from ditflow_fast.families.wan import text as wan_text  # noqa: E402
from ditflow_fast.families.wan.tiny import TEXT_DIM  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return wan_text.save_tiny_umt5(tmp_path_factory.mktemp("umt5"))


def test_embeds_are_trimmed_and_zero_padded(folder):
    texts = {"prompt": "a dog running  on a beach", "negative": "a cat", "empty": ""}
    out = wan_text.encode_prompts_umt5(str(folder), texts, "cpu", torch.float32)
    assert set(out) == set(texts)
    for name, n_words in (("prompt", 6), ("negative", 2)):
        e = out[name]
        assert e.shape == (1, 512, TEXT_DIM) and e.dtype == torch.float32
        assert e[0, :n_words].abs().sum(-1).gt(0).all()  # real tokens
        assert torch.equal(e[0, n_words:], torch.zeros(512 - n_words, TEXT_DIM))  # zeros after the real length
    assert torch.equal(out["empty"], torch.zeros(1, 512, TEXT_DIM))  # no tokens at all
    assert not torch.allclose(out["prompt"][0, :2], out["negative"][0, :2])  # two prompts differ


def test_matches_the_pipeline_procedure(folder):
    """What WanPipeline._get_t5_prompt_embeds computes, spelled out on the same tokenizer and encoder."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    tok = AutoTokenizer.from_pretrained(str(folder), subfolder="tokenizer")
    enc = UMT5EncoderModel.from_pretrained(str(folder), subfolder="text_encoder").eval()
    text = "a car driving down a road at night"
    inp = tok([text], padding="max_length", max_length=16, truncation=True, add_special_tokens=True,
              return_attention_mask=True, return_tensors="pt")
    seq = inp.attention_mask.gt(0).sum(dim=1).long()
    with torch.no_grad():
        e = enc(inp.input_ids, inp.attention_mask).last_hidden_state
    e = torch.stack([torch.cat([u[:v], u.new_zeros(16 - v, u.size(1))]) for u, v in zip(e, seq, strict=True)])
    ours = wan_text.encode_prompts_umt5(str(folder), {"p": text}, "cpu", torch.float32, max_length=16)["p"]
    assert torch.equal(ours, e)
    # Truncation at max_length: 8 words into 4 tokens.
    short = wan_text.encode_prompts_umt5(str(folder), {"p": text}, "cpu", torch.float32, max_length=4)["p"]
    assert short.shape == (1, 4, TEXT_DIM) and short.abs().sum(-1).gt(0).all()


def test_bf16_encoder_returns_float32(folder):
    out = wan_text.encode_prompts_umt5(str(folder), {"p": "a dog"}, "cpu", torch.bfloat16, max_length=8)["p"]
    assert out.dtype == torch.float32 and out[0, :2].abs().sum() > 0


def test_folder_without_text_encoder(tmp_path):
    from ditflow_fast.families.wan import tiny as wan_tiny

    path = wan_tiny.save_tiny_wan(tmp_path / "m")
    with pytest.raises(ModelError, match="--prompt.*text_encoder.*--prompt-embeds FILE"):
        wan_text.encode_prompts_umt5(str(path), {"p": "a dog"}, "cpu", torch.float32)


def test_missing_transformers(monkeypatch, folder):
    real = builtins.__import__

    def fake(name, *a, **kw):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("no transformers")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ModelError, match=r"--prompt.*pip install -e '\.\[text\]'.*--prompt-embeds FILE"):
        wan_text.encode_prompts_umt5(str(folder), {"p": "a dog"}, "cpu", torch.float32)


def test_prompt_clean_like_the_pipeline():
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    for s in ["  a &amp;amp; b\n\tc  ", "x  y", "&lt;tag&gt;"]:
        assert wan_text._clean(s) == prompt_clean(s)
