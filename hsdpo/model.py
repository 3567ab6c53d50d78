"""Models and tokenizers: build a tokenizer from a corpus, tiny Qwen2 configs from presets, or load
any causal LM by hub name or path. Everything saved loads with AutoModelForCausalLM/AutoTokenizer.
"""

from __future__ import annotations

import json
import os
import posixpath
from pathlib import Path
from typing import Iterable, Literal

from pydantic import Field

from hsdpo.configbase import StrictModel, first_line
from hsdpo.prompts import Template

EOS = "<|endoftext|>"
PAD = "<|pad|>"

# Qwen2-architecture presets (random init). `tiny` trains in minutes on 2 CPU cores.
PRESETS: dict[str, dict[str, int]] = {
    "micro": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4),
}


class TokenizerBuildConfig(StrictModel):
    kind: Literal["bpe", "char"] = Field("bpe", description="bpe with single-digit numbers, or one token a character")
    vocab_size: int = Field(512, ge=64, description="BPE vocabulary size (special tokens included)")


class ModelConfig(StrictModel):
    name_or_path: str | None = Field(None, description="hub id or local folder; None = build from `preset`")
    preset: Literal["micro", "tiny", "small"] = Field("tiny", description="Qwen2 shape when building from scratch")
    tokenizer: str | None = Field(None, description="tokenizer hub id or folder; None = same as model, or built from the training corpus")
    build_tokenizer: TokenizerBuildConfig = Field(default_factory=TokenizerBuildConfig)
    max_position_embeddings: int = Field(1024, description="context length of a model built from a preset")
    trust_remote_code: bool = Field(False, description="let a model's own code (config auto_map) run: training, reference, sampling, eval, export")
    prompt_template: Template = Field("qa", description="prompt format (hsdpo.prompts)")


def build_tokenizer(corpus: Iterable[str], out_dir: str | Path | None = None, cfg: TokenizerBuildConfig | None = None):
    """Train a fast tokenizer on `corpus`; numbers split into single digits (arithmetic stays learnable)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    cfg = cfg or TokenizerBuildConfig()
    texts = list(corpus)
    specials = [EOS, PAD]
    if cfg.kind == "char":
        chars = sorted({c for t in texts for c in t})
        vocab = {tok: i for i, tok in enumerate(specials + chars)}
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
        tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
        tok.decoder = decoders.Fuse()
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=cfg.vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
        tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, padding_side="left")
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def tiny_config(preset: str, vocab_size: int, max_position_embeddings: int = 1024, eos_token_id: int = 0, pad_token_id: int = 1):
    from transformers import Qwen2Config

    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; presets: {', '.join(PRESETS)}")
    return Qwen2Config(
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=eos_token_id,
        bos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        **PRESETS[preset],
    )


def build_model(preset: str, tokenizer, max_position_embeddings: int = 1024, seed: int = 0):
    """A randomly initialised Qwen2 model of a preset shape, sized to `tokenizer`."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(preset, len(tokenizer), max_position_embeddings, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return AutoModelForCausalLM.from_config(config)


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """From a hub id, a local folder or a folder URI (fetched to a local cache first)."""
    from transformers import AutoTokenizer

    from hsdpo.rundir import fetch_dir

    tok = AutoTokenizer.from_pretrained(fetch_dir(name_or_path), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str, trust_remote_code: bool = False, dtype: str = "auto", device: str | None = None,
               **kwargs):
    """From a hub id, a local folder or a folder URI (fetched to a local cache first)."""
    from transformers import AutoModelForCausalLM

    from hsdpo.rundir import fetch_dir

    model = AutoModelForCausalLM.from_pretrained(fetch_dir(name_or_path), trust_remote_code=trust_remote_code,
                                                 dtype=dtype, **kwargs)
    return model.to(device) if device else model


def check_weights(path: str) -> None:
    """A model folder (local or a URI) whose weights would fail every worker's load: none there, a
    sharded index naming a missing shard, a safetensors file cut short (a copy that stopped, a full
    disk). Reads only each file's header. A hub id is left to the loaders."""
    from hsdpo.config import InputError
    from hsdpo.rundir import _fs, is_uri

    if not (is_uri(path) or os.path.isdir(path)):
        return
    fs, root = _fs(path)
    root = root.rstrip("/")
    names = {posixpath.basename(n) for n in fs.ls(root, detail=False)}
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if index in names:
            try:
                with fs.open(f"{root}/{index}", "rb") as fh:
                    shards = sorted(set(json.load(fh)["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                raise InputError(f"model {path}: its {index} does not read ({first_line(err)})") from None
            missing = [s for s in shards if s not in names]
            if missing:
                raise InputError(f"model {path}: no {missing[0]}, a shard its {index} names"
                                 + (f" ({len(missing)} missing)" if len(missing) > 1 else ""))
            break
    else:
        shards = [n for n in ("model.safetensors", "pytorch_model.bin") if n in names][:1]
        if not shards:
            raise InputError(f"model {path}: no weights (no model.safetensors, pytorch_model.bin or a"
                             " sharded index of them)")
    for shard in shards:
        if shard.endswith(".safetensors"):
            _check_safetensors(fs, f"{root}/{shard}", path)


def _check_safetensors(fs, file: str, path: str) -> None:
    """The header of a safetensors file (a little-endian u64 length, then that much JSON naming each
    tensor's byte range) read and checked against the file's size."""
    from hsdpo.config import InputError

    size = fs.size(file)
    bad = f"model {path}: its {posixpath.basename(file)} is"
    with fs.open(file, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise InputError(f"{bad} not a safetensors file or cut short ({size} bytes); copy or export it again")
        try:
            header = json.loads(fh.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
            raise InputError(f"{bad} not a safetensors file ({first_line(err)})") from None
    if 8 + n + end > size:
        raise InputError(f"{bad} cut short: {size} bytes of {8 + n + end}; copy or export it again")


def resolve_model_path(run_dir: str, ref: str) -> str:
    """`ref` is a run-dir stage folder holding a model (`sft`, `dpo`), or a path / hub id.
    Stage folders keep the HF model under `<stage>/model/`. A `~/` path comes back expanded (the
    loaders would take it for a hub id)."""
    from hsdpo.rundir import RunDir, _fs, is_uri

    rd = RunDir(run_dir)
    candidate = rd.path(ref, "model")
    fs, p = _fs(candidate)
    if fs.exists(p + "/config.json"):
        check_weights(candidate)
        return candidate
    if rd.manifest(ref) is not None:
        from hsdpo.config import InputError

        raise InputError(f"model {ref}: stage output {rd.path(ref)} holds no model (model/config.json); run its stage first")
    check_model_source(ref)
    local = os.path.expanduser(ref)
    return local if not is_uri(ref) and os.path.isdir(local) else ref


def check_model_source(ref: str, what: str = "model", needs: str | None = "config.json") -> None:
    """A one-line `InputError` on the driver, before any worker starts, when `ref` is neither a folder
    (local or a URI) holding `needs` nor a hub id whose `needs` is in the local hub cache or on the
    hub; `needs=None` asks only for a folder or a well-formed hub id. Unchecked, each Ray Train
    worker or actor fails in turn, retries included, with a traceback from inside transformers."""
    from hsdpo.config import InputError
    from hsdpo.rundir import _fs, is_uri

    if is_uri(ref) or os.path.isdir(os.path.expanduser(ref)):
        fs, p = _fs(ref if is_uri(ref) else os.path.expanduser(ref))
        if not fs.exists(p) or (needs and not fs.exists(p.rstrip("/") + "/" + needs)):
            raise InputError(f"{what} {ref}: no such folder" + (f" holding {needs}" if needs else ""))
        if needs == "config.json":
            check_weights(ref if is_uri(ref) else os.path.expanduser(ref))
        return
    from huggingface_hub import constants, file_exists, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(ref)
    except HFValidationError:
        raise InputError(f"{what} {ref}: no such folder, run-dir stage or hub id") from None
    if needs is None or isinstance(try_to_load_from_cache(ref, needs), str):
        return
    where = f"not a run-dir stage with a model, nor a folder; as a hub id its {needs} is"
    if constants.HF_HUB_OFFLINE:
        raise InputError(f"{what} {ref}: {where} not in the local hub cache (HF_HUB_OFFLINE is set)")
    try:
        found = file_exists(ref, needs)
    except Exception as err:  # noqa: BLE001 -- no network, gated, unknown repo
        raise InputError(f"{what} {ref}: {where} not in the local hub cache and the hub cannot be asked"
                         f" ({first_line(err)})") from None
    if not found:
        raise InputError(f"{what} {ref}: {where} not on the hub")
