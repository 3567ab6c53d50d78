"""Decode throughput of the hf sampler backend (hsdpo.sampling.hf.HFSampler) as a plain object, no
Ray: the class the `sample` stage runs inside its Ray Data actors, on one device.

The model has the Qwen2.5-1.5B shape with random weights (hidden 1536, 28 layers, 12 heads, 2 KV
heads, intermediate 8960, vocab 151936, tied embeddings), saved as an HF folder and loaded by the
sampler, with a character tokenizer built in code (padded to the vocab size). A random model
almost never emits eos, so every row decodes the full --max-new-tokens: tokens/s is pure decode.
Needs only torch + transformers (+ numpy).

    python3 benchmarks/gpu_sampling.py --out gpu_sampling.json                 # GPU, bf16, batch 64
    python3 benchmarks/gpu_sampling.py --preset micro --device cpu --out x.json  # CPU smoke run

Prints and writes: tokens/s, wall per timed batch, model load time, and 2·params·tokens/s as
achieved model TFLOP/s (no MFU: no peak-FLOPs guess for an unknown device).
"""

from __future__ import annotations

import argparse
import json
import platform
import string
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, without installing it

SHAPES = {
    "qwen2.5-1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         intermediate_size=8960, vocab_size=151936, max_position_embeddings=4096),
    "micro": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, vocab_size=512, max_position_embeddings=1024),
}


def build_tokenizer(vocab_size: int, out: str):
    """One token a printable character, plus filler tokens up to vocab_size; eos 0, pad 1."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable))
    fill = [f"<t{i}>" for i in range(vocab_size - 2 - len(chars))]
    vocab = {tok: i for i, tok in enumerate(["<|endoftext|>", "<|pad|>", *chars, *fill])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|pad|>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>",
                                   padding_side="left")
    fast.save_pretrained(out)
    return fast


def build_model(preset: str, out: str, device: str, dtype) -> int:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(tie_word_embeddings=True, eos_token_id=0, bos_token_id=0, pad_token_id=1, rope_theta=1e6,
                      **SHAPES[preset])
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return params


def prompts(count: int) -> list[str]:
    names = ["Tom", "Ana", "Raj", "Mei", "Olu", "Sam"]
    return [f"Question: {names[i % 6]} has {3 + i % 17} boxes with {2 + i % 9} pens each and gives away {i % 5} "
            f"pens. How many pens are left?\nAnswer: " for i in range(count)]


def main() -> None:
    p = argparse.ArgumentParser(description="hf sampler decode throughput, no Ray")
    p.add_argument("--preset", default="qwen2.5-1.5b", choices=sorted(SHAPES))
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="bfloat16 / float32 (default: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batches", type=int, default=2, help="timed batches (after one short warm-up batch)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args()

    import numpy as np
    import torch
    import transformers

    from hsdpo.prompts import STOP_STRINGS
    from hsdpo.sampling.hf import HFSampler, describe

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build_tokenizer(SHAPES[args.preset]["vocab_size"], tmp)
        params = build_model(args.preset, tmp, device, getattr(torch, dtype))
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        sampler = HFSampler(tmp, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                            stop_strings=STOP_STRINGS, device=device, dtype=dtype)
        load_s = time.perf_counter() - t0

    def batch(i: int, size: int) -> dict:
        return {"prompt": np.array(prompts(size), dtype=object), "seed": np.arange(i * size, (i + 1) * size)}

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    t0 = time.perf_counter()
    sampler(batch(0, args.batch_size))  # warm-up at full length: kernels, allocator, stop-string tables
    sync()
    warmup_s = time.perf_counter() - t0
    walls, tokens = [], 0
    for i in range(args.batches):
        t0 = time.perf_counter()
        out = sampler(batch(i + 1, args.batch_size))
        sync()
        walls.append(time.perf_counter() - t0)
        tokens += int(out["num_tokens"].sum())
        assert not any(out["error"]), out["error"][0]
    wall = sum(walls)
    res = {
        "preset": args.preset, "device": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu",
        "dtype": dtype, "torch": torch.__version__, "transformers": transformers.__version__, "params": params,
        "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "batches": args.batches,
        "tokens": tokens, "wall_s": wall, "batch_wall_s": walls, "tokens_per_s": tokens / wall,
        "model_tflops_per_s": 2 * params * tokens / wall / 1e12, "build_s": build_s, "load_s": load_s,
        "warmup_s": warmup_s, "sampler": describe(sampler),
        "finish_reasons": {r: int((out["finish_reason"] == r).sum()) for r in ("stop", "length", "error")},
    }
    print(f"{args.preset} on {res['device']} ({dtype}), batch {args.batch_size} x {args.max_new_tokens} new tokens: "
          f"{res['tokens_per_s']:.0f} tokens/s, {res['model_tflops_per_s']:.2f} model TFLOP/s "
          f"(load {load_s:.1f} s, warm-up {warmup_s:.1f} s, batches {', '.join(f'{w:.2f}' for w in walls)} s)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
