"""DPO step throughput and MFU on one GPU: hsdpo's worker (DeepSpeed ZeRO-2, bf16, cached reference
log-probs) beside a plain PyTorch loop (bf16 weights, fused AdamW), same model, pairs and lengths.

Runs the *same* code as `hsdpo dpo` (`hsdpo.train.worker.train_worker`) as a plain process with world
size 1 (no Ray). The default shape is Qwen2.5-1.5B (random weights): hidden 1536, 28 layers,
12 heads, 2 KV heads, intermediate 8960, vocab 151936, tied embeddings.

    python benchmarks/gpu_train.py --out /tmp/gpu_train.json                     # H100/H200
    python benchmarks/gpu_train.py --preset micro --device cpu --steps 3 --pairs 4 --seq 64 --out /tmp/x.json

MFU = 6 x matmul params x (non-pad) tokens / step time / peak dense bf16 FLOP/s (hsdpo.train.mfu);
unknown devices report none. Peak memory is torch.cuda.max_memory_allocated per phase.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import time

import torch

QWEN25_15B = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                  intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=4096,
                  rope_theta=1_000_000.0)


class IdTokenizer:
    """Text is space-separated token ids: lengths are exact and nothing is downloaded."""

    eos_token_id, pad_token_id = 0, 1

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [int(w) for w in text.split()]}


def make_pairs(n: int, seq: int, vocab: int, seed: int = 0) -> list[dict]:
    """n pairs; prompt 64 tokens (or seq/4), chosen/rejected fill the rest (+ eos) to exactly `seq`."""
    rnd = random.Random(seed)
    p = min(64, seq // 4)
    words = lambda k: " ".join(str(rnd.randrange(2, vocab)) for _ in range(k))  # noqa: E731
    return [{"pair_id": f"p{i}", "prompt": words(p), "chosen": words(seq - p - 1), "rejected": words(seq - p - 1),
             "weight": 0.5 + (i % 3) * 0.5, "ref_chosen_logp": -1.0 * seq, "ref_rejected_logp": -1.0 * seq}
            for i in range(n)]


def build_model(args, device: str):
    from transformers import AutoModelForCausalLM, Qwen2Config

    if args.preset == "qwen2.5-1.5b":
        cfg = Qwen2Config(**QWEN25_15B)
    else:
        from hsdpo.model import tiny_config

        cfg = tiny_config(args.preset, vocab_size=args.vocab or 512)
    cfg.use_cache = False
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        return AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")


def mem_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def reset_mem() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_plain(args, device: str, pairs: list[dict]) -> dict:
    """The baseline: bf16 weights, fused AdamW, chosen+rejected in one forward, chunked log-probs."""
    from hsdpo.train.losses import weighted_dpo_loss
    from hsdpo.train.mfu import flops_per_token, peak_flops
    from hsdpo.train.tokenize import pair_batch, pair_examples, sequence_logps

    reset_mem()
    model = build_model(args, device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=device == "cuda")
    tok = IdTokenizer()
    b = pair_batch(pair_examples(tok, pairs, args.seq), tok.pad_token_id).to(device)
    n = len(pairs)
    ref = torch.tensor([[p["ref_chosen_logp"], p["ref_rejected_logp"]] for p in pairs], device=device)
    w = torch.tensor([p["weight"] for p in pairs], device=device)
    tokens = int(b.attention_mask.sum())
    times = []
    for step in range(args.warmup + args.steps):
        sync(device)
        t0 = time.perf_counter()
        logps, _ = sequence_logps(model, b.input_ids, b.attention_mask, b.loss_mask, args.chunk)
        loss, _ = weighted_dpo_loss(logps[:n], logps[n:], ref[:, 0], ref[:, 1], w, beta=0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    dt = sum(times) / len(times)
    peak = peak_flops() if device == "cuda" else None
    out = {"name": "plain pytorch", "step_s": dt, "tokens_per_s": tokens / dt,
           "mfu": flops_per_token(model) * tokens / dt / peak if peak else None,
           "peak_mem_gib": mem_gib(), "first_loss": None}
    del model, opt
    return out


def run_hsdpo(args, device: str, pairs: list[dict]) -> dict:
    """hsdpo's DPO worker, world size 1, ZeRO-2, no export, no checkpoints."""
    from hsdpo.train.config import DPOConfig
    from hsdpo.train.worker import train_worker

    reset_mem()
    cfg = DPOConfig(use_gpu=device == "cuda", steps=args.warmup + args.steps, batch_size=len(pairs),
                    micro_batch_size=len(pairs), max_length=args.seq, lr=1e-6, zero_stage=2, logp_chunk=args.chunk,
                    precision="bf16" if device == "cuda" else "fp32", gradient_checkpointing=args.grad_ckpt,
                    min_lr_ratio=1.0)
    spec = {"kind": "dpo", "cfg": cfg.model_dump(mode="json"), "export": False, "out_dir": None}
    hist = train_worker(spec, rows=pairs, model=build_model(args, device), tokenizer=IdTokenizer())
    timed = hist[args.warmup:]
    dt = sum(h["step_s"] for h in timed) / len(timed)
    mfu = [h["mfu"] for h in timed if h.get("mfu") is not None]
    return {"name": "hsdpo (DeepSpeed ZeRO-2)", "step_s": dt, "tokens_per_s": sum(h["tokens_per_s"] * h["step_s"] for h in timed) / len(timed) / dt,
            "mfu": sum(mfu) / len(mfu) if mfu else None, "peak_mem_gib": mem_gib(), "first_loss": hist[0]["loss"]}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def table(rows: list[dict], args, device_name: str) -> str:
    head = f"DPO step, {args.preset}, {args.pairs} pairs x {args.seq} tokens, {device_name}"
    lines = [head, f"{'':28} {'step s':>8} {'tokens/s':>10} {'MFU':>7} {'peak GiB':>9}"]
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "n/a"
        lines.append(f"{r['name']:28} {r['step_s']:8.3f} {r['tokens_per_s']:10.0f} {mfu:>7} {mem:>9}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="qwen2.5-1.5b", help="qwen2.5-1.5b, or an hsdpo preset (micro, tiny, small)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--pairs", type=int, default=8, help="pairs per step (chosen+rejected: 2x sequences)")
    ap.add_argument("--seq", type=int, default=512, help="tokens per sequence")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--chunk", type=int, default=128, help="positions per log-softmax chunk")
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary of a tiny preset")
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing in the hsdpo run")
    ap.add_argument("--skip-plain", action="store_true")
    ap.add_argument("--out", required=True, help="JSON results path")
    args = ap.parse_args()
    for k, v in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29533"), ("RANK", "0"), ("WORLD_SIZE", "1"),
                 ("LOCAL_RANK", "0")):
        os.environ.setdefault(k, v)
    vocab = QWEN25_15B["vocab_size"] if args.preset == "qwen2.5-1.5b" else (args.vocab or 512)
    pairs = make_pairs(args.pairs, args.seq, vocab)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    rows = [] if args.skip_plain else [run_plain(args, args.device, pairs)]
    rows.append(run_hsdpo(args, args.device, pairs))
    print(table(rows, args, device_name), flush=True)
    with open(args.out, "w") as f:
        json.dump({"device": device_name, "args": vars(args), "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
