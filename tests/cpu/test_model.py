"""Tokenizers built from a corpus and tiny Qwen2 models: save, reload with Auto*, generate."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hsdpo.model import PRESETS, TokenizerBuildConfig, build_model, build_tokenizer, resolve_model_path, tiny_config
from hsdpo.prompts import format_prompt

CORPUS = [format_prompt(f"Tom has {i} apples. He gets {i % 7} more. How many?") + f"{i}+{i % 7} = <<{i}+{i % 7}={i + i % 7}>>{i + i % 7}\n#### {i + i % 7}" for i in range(200)]


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_tokenizer_roundtrip_and_digits(tmp_path, kind):
    tok = build_tokenizer(CORPUS, tmp_path, TokenizerBuildConfig(kind=kind, vocab_size=300))
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = CORPUS[123]
    assert again.decode(again(text)["input_ids"]) == text
    assert again.eos_token == "<|endoftext|>" and again.pad_token_id != again.eos_token_id
    assert again.padding_side == "left"
    # numbers are single digits, so arithmetic stays learnable
    assert [t for t in again.tokenize("1234") if t.strip("Ġ")] == ["1", "2", "3", "4"]
    assert len(tok) == len(again)


def test_tiny_model_saves_reloads_and_generates(tmp_path):
    tok = build_tokenizer(CORPUS, tmp_path)
    model = build_model("micro", tok, max_position_embeddings=128, seed=3)
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert again.config.model_type == "qwen2" and again.config.vocab_size == len(tok)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    ids = tok(format_prompt("Ann has 3 pens."), return_tensors="pt")
    out = again.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape == (1, ids["input_ids"].shape[1] + 6)
    # same seed, same weights
    twin = build_model("micro", tok, max_position_embeddings=128, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


def test_presets_and_unknown_preset():
    assert tiny_config("tiny", 100).hidden_size == PRESETS["tiny"]["hidden_size"]
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        tiny_config("huge", 100)


def test_resolve_model_path(tmp_path):
    (tmp_path / "sft" / "model").mkdir(parents=True)
    (tmp_path / "sft" / "model" / "config.json").write_text("{}")
    assert resolve_model_path(str(tmp_path), "sft") == f"{tmp_path}/sft/model"
    assert resolve_model_path(str(tmp_path), "Qwen/Qwen2.5-1.5B") == "Qwen/Qwen2.5-1.5B"
