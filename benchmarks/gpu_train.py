"""DPO step throughput and MFU on one GPU: hsdpo's worker (DeepSpeed ZeRO-2, bf16, cached reference
log-probs) beside a plain PyTorch loop (bf16 weights, fused AdamW), same model, pairs and lengths.

Runs the *same* code as `hsdpo dpo` (`hsdpo.train.worker.train_worker`) as a plain process with world
size 1 (no Ray). The default shape is Qwen2.5-1.5B (random weights): hidden 1536, 28 layers,
12 heads, 2 KV heads, intermediate 8960, vocab 151936, tied embeddings.

    python benchmarks/gpu_train.py --out /tmp/gpu_train.json                     # H100/H200
    python benchmarks/gpu_train.py --preset micro --device cpu --steps 3 --pairs 4 --seq 64 --out /tmp/x.json
    python benchmarks/gpu_train.py --variant 'compile:{"compile": true}' \
        --variant 'one bucket:{"deepspeed": {"zero_optimization": {"reduce_bucket_size": 2e9}}}' \
        --profile 3 --out /tmp/gpu_train.json                                     # more rows + where time goes

`--variant NAME:JSON` adds an hsdpo row with those DPOConfig fields changed (repeatable); `--profile K`
runs the plain loop and an hsdpo row (default, or `--profile-changes JSON`) once more and records K
steps after the warm-up under torch.profiler; the top kernels and ops (device and host time) go next
to `--out`, headed by the places that read the device in those steps (CUDA's sync debug mode).
`--plain-compile` adds the plain loop under torch.compile.

MFU = model FLOPs / step time / peak dense bf16 FLOP/s (hsdpo.train.mfu): 6 x matmul params per
(non-pad) token, less the LM head's share at the positions where it does not run (the prompt: log-probs
are taken at scored positions only, in both loops); unknown devices report none. Peak memory is torch.cuda.max_memory_allocated per phase.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import random
import time
import warnings

import torch

QWEN25_15B = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                  intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=4096,
                  rope_theta=1_000_000.0)


class IdTokenizer:
    """Text is space-separated token ids: lengths are exact and nothing is downloaded."""

    eos_token_id, pad_token_id = 0, 1

    def __call__(self, text: str | list[str], add_special_tokens: bool = False) -> dict:
        """One text, or a batch of them (as a Hugging Face tokenizer takes them)."""
        if isinstance(text, list):
            return {"input_ids": [self(t)["input_ids"] for t in text]}
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


def run_plain(args, device: str, pairs: list[dict], steps: int | None = None, warmup: int | None = None,
              compiled: bool = False, step_hook=None) -> dict:
    """The baseline: bf16 weights, fused AdamW, chosen+rejected in one forward, chunked log-probs;
    `compiled`: each decoder layer and the log-softmax chunk under torch.compile, as hsdpo's `compile`."""
    from hsdpo.train.losses import weighted_dpo_loss
    from hsdpo.train.mfu import flops_per_token, head_flops_per_token, peak_flops, step_flops
    from hsdpo.train.tokenize import _chunk_logps, pair_batch, sequence_logps, split_model

    reset_mem()
    model = build_model(args, device).train()
    chunk_fn = _chunk_logps
    if compiled:
        for layer in split_model(model)[0].layers:
            layer.compile()
        chunk_fn = torch.compile(_chunk_logps)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=device == "cuda")
    tok = IdTokenizer()
    b = pair_batch(tok, pairs, args.seq).to(device)
    n = len(pairs)
    ref = torch.tensor([[p["ref_chosen_logp"], p["ref_rejected_logp"]] for p in pairs], device=device)
    w = torch.tensor([p["weight"] for p in pairs], device=device)
    tokens = int(b.attention_mask.sum())
    times = []
    warmup = args.warmup if warmup is None else warmup
    for step in range(warmup + (args.steps if steps is None else steps)):
        sync(device)
        t0 = time.perf_counter()
        logps, _ = sequence_logps(model, b.input_ids, b.loss_mask, args.chunk, chunk_fn, b.scored)
        loss, _ = weighted_dpo_loss(logps[:n], logps[n:], ref[:, 0], ref[:, 1], w, beta=0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if step >= warmup:
            times.append(time.perf_counter() - t0)
        if step_hook:
            step_hook()
    dt = sum(times) / len(times)
    peak = peak_flops() if device == "cuda" else None
    out = {"name": "plain pytorch" + (" + compile" if compiled else ""), "step_s": dt, "tokens_per_s": tokens / dt,
           "mfu": step_flops(flops_per_token(model), head_flops_per_token(model), tokens, len(b.scored)) / dt / peak
           if peak else None,
           "peak_mem_gib": mem_gib(), "first_loss": None}
    del model, opt
    return out


def run_hsdpo(args, device: str, pairs: list[dict], name: str = "hsdpo (DeepSpeed ZeRO-2)",
              changes: dict | None = None, steps: int | None = None, warmup: int | None = None,
              step_hook=None) -> dict:
    """hsdpo's DPO worker, world size 1, ZeRO-2, no export, no checkpoints; `changes` edits the config;
    `step_hook` is called after each step's metrics (the worker syncs the device there)."""
    from hsdpo.train import worker
    from hsdpo.train.config import DPOConfig
    from hsdpo.train.worker import train_worker

    reset_mem()
    warmup = args.warmup if warmup is None else warmup
    fields = dict(use_gpu=device == "cuda", steps=warmup + (args.steps if steps is None else steps),
                  batch_size=len(pairs), micro_batch_size=len(pairs), max_length=args.seq, lr=1e-6, zero_stage=2,
                  logp_chunk=args.chunk, precision="bf16" if device == "cuda" else "fp32",
                  gradient_checkpointing=args.grad_ckpt, min_lr_ratio=1.0)
    cfg = DPOConfig(**{**fields, **(changes or {})})
    spec = {"kind": "dpo", "cfg": cfg.model_dump(mode="json"), "export": False, "out_dir": None}
    reduce_metrics = worker.reduce_metrics
    if step_hook:
        def hooked(sums):
            out = reduce_metrics(sums)
            step_hook()
            return out
        worker.reduce_metrics = hooked
    try:
        hist = train_worker(spec, rows=pairs, model=build_model(args, device), tokenizer=IdTokenizer())
    finally:
        worker.reduce_metrics = reduce_metrics
    timed = hist[warmup:]
    dt = sum(h["step_s"] for h in timed) / len(timed)
    mfu = [h["mfu"] for h in timed if h.get("mfu") is not None]
    return {"name": name, "step_s": dt, "tokens_per_s": sum(h["tokens_per_s"] * h["step_s"] for h in timed) / len(timed) / dt,
            "mfu": sum(mfu) / len(mfu) if mfu else None, "peak_mem_gib": mem_gib(), "first_loss": hist[0]["loss"],
            "changes": changes or {}}


def parse_variant(text: str) -> tuple[str, dict]:
    """`NAME:JSON` -> (name, DPOConfig field changes)."""
    name, sep, blob = text.partition(":")
    if not sep or not name.strip():
        raise SystemExit(f"--variant {text!r}: expected NAME:JSON, e.g. 'compile:{{\"compile\": true}}'")
    try:
        changes = json.loads(blob)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--variant {name}: bad JSON ({e})") from None
    if not isinstance(changes, dict):
        raise SystemExit(f"--variant {name}: JSON must be an object of DPOConfig fields")
    from pydantic import ValidationError

    from hsdpo.train.config import DPOConfig

    try:
        DPOConfig(**changes)
    except ValidationError as e:
        err = e.errors()[0]
        raise SystemExit(f"--variant {name}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    return name.strip(), changes


def profile(args, device: str, pairs: list[dict], out_prefix: str) -> list[str]:
    """K steps of the plain loop and of hsdpo under torch.profiler, after the usual warm-up steps (not
    recorded, nor is the model build or engine setup); the top ops by self device time and by self
    host time, one text file a run. `--profile-changes JSON` edits the hsdpo run's config."""
    from torch.profiler import ProfilerActivity, schedule
    from torch.profiler import profile as torch_profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    changes = parse_variant(f"profile:{args.profile_changes}")[1] if args.profile_changes else None
    written = []
    for tag, fn, kw in (("plain", run_plain, {}), ("hsdpo", run_hsdpo, {"changes": changes})):
        # the profiler's own warm-up step is one of ours: `args.warmup` steps in all before K recorded
        warm, done = max(1, args.warmup), [0]
        with torch_profile(activities=acts, schedule=schedule(wait=warm - 1, warmup=1, active=args.profile, repeat=1)) as prof, \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")

            def step_hook():
                prof.step()
                done[0] += 1
                if done[0] == warm and device == "cuda":  # from here on, every device read warns
                    torch.cuda.set_sync_debug_mode("warn")

            try:
                fn(args, device, pairs, steps=args.profile, warmup=warm, step_hook=step_hook, **kw)
            finally:
                if device == "cuda":
                    torch.cuda.set_sync_debug_mode(0)
        reads = collections.Counter(f"{os.path.relpath(w.filename)}:{w.lineno}" for w in caught
                                    if "synchroniz" in str(w.message))
        avg = prof.key_averages()
        path = f"{out_prefix}.profile_{tag}.txt"
        with open(path, "w") as f:
            f.write(f"{tag}: {args.profile} steps recorded after {warm} warm-up steps; {kw.get('changes') or ''}\n")
            f.write(f"== device reads in the recorded steps (torch.cuda sync debug mode): {sum(reads.values())}\n")
            f.writelines(f"{n:6d}  {where}\n" for where, n in reads.most_common(20))
            if device == "cuda":
                f.write(sorted_table(avg, ("self_device_time_total", "self_cuda_time_total")))
            f.write(sorted_table(avg, ("self_cpu_time_total",)))
        written.append(path)
    return written


def sorted_table(avg, keys: tuple[str, ...]) -> str:
    """key_averages table by the first sort key this torch knows (names changed across versions)."""
    for key in keys:
        try:
            return f"== by {key}\n{avg.table(sort_by=key, row_limit=40)}\n"
        except (AttributeError, KeyError, RuntimeError):
            continue
    return f"== none of {keys} is known to this torch\n"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def table(rows: list[dict], args, device_name: str) -> str:
    head = f"DPO step, {args.preset}, {args.pairs} pairs x {args.seq} tokens, {device_name}"
    w = max([28] + [len(r["name"]) for r in rows])
    lines = [head, f"{'':{w}} {'step s':>8} {'tokens/s':>10} {'MFU':>7} {'peak GiB':>9}"]
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "n/a"
        lines.append(f"{r['name']:{w}} {r['step_s']:8.3f} {r['tokens_per_s']:10.0f} {mfu:>7} {mem:>9}")
    return "\n".join(lines)


def combined_table(paths: list[str]) -> str:
    """The rows of several result files (one a process, gpu_check.sh) in one table; the first file's
    arguments and device head it."""
    runs = [json.load(open(p)) for p in paths]
    rows = [r for run in runs for r in run["results"]]
    args = argparse.Namespace(**runs[0]["args"])
    return table(rows, args, runs[0]["device"])


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
    ap.add_argument("--plain-compile", action="store_true", help="also a plain-loop row with torch.compile (as hsdpo's)")
    ap.add_argument("--skip-default", action="store_true", help="no default hsdpo row (only --variant rows)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:JSON",
                    help="an extra hsdpo row with these DPOConfig field changes (repeatable)")
    ap.add_argument("--profile", type=int, default=0, metavar="K", help="also profile K steps of plain and hsdpo")
    ap.add_argument("--profile-changes", metavar="JSON", help="DPOConfig changes for the profiled hsdpo run")
    ap.add_argument("--out", help="JSON results path (required unless --table)")
    ap.add_argument("--table", nargs="+", metavar="JSON", help="print one table of the rows in these result files and exit")
    args = ap.parse_args()
    if args.table:
        print(combined_table(args.table))
        return
    if not args.out:
        ap.error("--out is required")
    for k, v in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29533"), ("RANK", "0"), ("WORLD_SIZE", "1"),
                 ("LOCAL_RANK", "0")):
        os.environ.setdefault(k, v)
    vocab = QWEN25_15B["vocab_size"] if args.preset == "qwen2.5-1.5b" else (args.vocab or 512)
    pairs = make_pairs(args.pairs, args.seq, vocab)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    variants = [parse_variant(v) for v in args.variant]  # fail on a typo before any model is built
    rows: list[dict] = []

    def add(row: dict) -> None:  # written after every row: a timeout keeps what was measured
        rows.append(row)
        with open(args.out, "w") as f:
            json.dump({"device": device_name, "args": vars(args), "results": rows}, f, indent=2)
        print(table([row], args, device_name), flush=True)

    if not args.skip_plain:
        add(run_plain(args, args.device, pairs))
    if not args.skip_default:
        add(run_hsdpo(args, args.device, pairs))
    if args.plain_compile:
        add(run_plain(args, args.device, pairs, compiled=True))
    for name, changes in variants:
        try:
            add(run_hsdpo(args, args.device, pairs, name=f"hsdpo {name}", changes=changes))
        except Exception as e:  # one failing variant must not lose the rows already measured
            print(f"variant {name} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", flush=True)
    print(table(rows, args, device_name), flush=True)
    if args.profile:
        for path in profile(args, args.device, pairs, os.path.splitext(args.out)[0]):
            print(f"profile: {path}", flush=True)


if __name__ == "__main__":
    main()
