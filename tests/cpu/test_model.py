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


def _weights(folder) -> None:
    """A weights file the driver's check reads the header of (resolution loads no weights)."""
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))


def test_resolve_model_path(tmp_path):
    (tmp_path / "sft" / "model").mkdir(parents=True)
    (tmp_path / "sft" / "model" / "config.json").write_text("{}")
    _weights(tmp_path / "sft" / "model")
    assert resolve_model_path(str(tmp_path), "sft") == f"{tmp_path}/sft/model"
    assert resolve_model_path(str(tmp_path), str(tmp_path / "sft" / "model")) == str(tmp_path / "sft" / "model")


def test_a_home_relative_model_path_comes_back_loadable(tmp_path, monkeypatch):
    """`~/m` passes the driver's check; unexpanded, every sampler actor would read it as a hub id."""
    from transformers import AutoConfig

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "m").mkdir()
    tiny_config("micro", 100).save_pretrained(tmp_path / "m")
    _weights(tmp_path / "m")
    path = resolve_model_path(str(tmp_path / "run"), "~/m")
    assert path == str(tmp_path / "m") and AutoConfig.from_pretrained(path).vocab_size == 100


def _fake_hub_cache(root, repo_id: str, files: dict[str, str]) -> None:
    """The layout huggingface_hub keeps downloads in: refs/main names a snapshot folder."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    for name, text in files.items():
        (repo / "snapshots" / "abc123" / name).write_text(text)


def test_a_model_that_cannot_load_is_one_line_on_the_driver(tmp_path, monkeypatch):
    """Stage folder without a model, bad path, folder without config.json, hub id neither cached nor
    reachable: each an InputError naming it, before any worker starts; a cached hub id passes."""
    from huggingface_hub import constants

    from hsdpo.config import InputError
    from hsdpo.model import check_model_source

    run = tmp_path / "run"
    (run / "pairs").mkdir(parents=True)
    (run / "pairs" / "_manifest.json").write_text('{"status": "complete"}')
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _fake_hub_cache(tmp_path / "hub", "org/cached", {"config.json": "{}"})
    assert resolve_model_path(str(run), "org/cached") == "org/cached"
    cases = [("pairs", "holds no model"), (str(tmp_path / "nope"), "no such folder, run-dir stage or hub id"),
             (str(tmp_path / "empty"), "no such folder holding config.json"),
             ("org/not-cached", "not in the local hub cache (HF_HUB_OFFLINE is set)"),
             ("sft", "not a run-dir stage with a model, nor a folder")]
    for ref, says in cases:
        with pytest.raises(InputError, match=None) as err:
            resolve_model_path(str(run), ref)
        assert says in str(err.value) and ref in str(err.value) and "\n" not in str(err.value), (ref, err.value)
    check_model_source(str(tmp_path / "empty"), what="tokenizer", needs=None)  # a folder is enough for a tokenizer
    with pytest.raises(InputError, match="tokenizer x//y: no such folder, run-dir stage or hub id"):
        check_model_source("x//y", what="tokenizer", needs=None)
