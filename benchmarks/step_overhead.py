"""Host-side work of one DPO optimizer step: what the training loop asks of the device beyond the
model's own forward and backward, counted on CPU, side by side for a plain PyTorch loop and hsdpo's
DeepSpeed ZeRO-2 engine (fused_clip on and off, bf16 as on GPU).

On a GPU each dispatched aten op that computes is a kernel launch (~5-10 us of host time), views are
host-only bookkeeping, and a device read (`.item()`, `bool(tensor)`, a synchronize) makes the host
wait for the queue to drain, after which the GPU idles until the host has queued more work. A
step that launches thousands of tiny kernels *after* a device read leaves the GPU waiting on the
host; that is the part of a step that does not shrink with a faster GPU. This counts both, on the
parameter layout of Qwen2.5-1.5B (28 decoder layers: 338 tensors) at a tiny width, so the count is
exact and the CPU wall time is host overhead rather than arithmetic.

    python benchmarks/step_overhead.py                 # ~20 s on 2 CPU cores
    python benchmarks/step_overhead.py --layers 4      # a smaller layout

Prints one row per loop: ops dispatched in backward (with ZeRO's gradient reduction) and in the
optimizer step (compute ops, views, device reads), DeepSpeed's device synchronizes in the whole
step (forward to optimizer), median host ms of backward and of the optimizer step (timed in other
steps, run without the counting); then the ratios against the plain loop.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# ops that only make a new tensor header (no kernel on any device)
VIEW_OPS = {"view", "_unsafe_view", "detach", "slice", "t", "transpose", "as_strided", "alias", "expand",
            "unsqueeze", "squeeze", "select", "permute", "split", "split_with_sizes", "unbind", "narrow",
            "lift_fresh", "_reshape_alias", "reshape"}
READ_OPS = {"_local_scalar_dense", "is_nonzero", "item"}


class OpCount(TorchDispatchMode):
    """Counts aten ops as they are dispatched: compute ops, views, device reads."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    def summary(self) -> dict[str, int]:
        views = sum(n for k, n in self.ops.items() if k in VIEW_OPS)
        reads = sum(n for k, n in self.ops.items() if k in READ_OPS)
        return {"compute": sum(self.ops.values()) - views - reads, "views": views, "reads": reads}


class SyncCount:
    """Counts DeepSpeed's accelerator synchronize calls (its throughput timer and overlap paths call
    it); on CPU they do nothing, so wrapping the accelerator's method changes no result."""

    def __init__(self):
        from deepspeed.accelerator import get_accelerator

        self.acc, self.n = get_accelerator(), 0
        self.orig = self.acc.synchronize

    def __enter__(self):
        def counted(*a, **k):
            self.n += 1
            return self.orig(*a, **k)
        self.acc.synchronize = counted
        return self

    def __exit__(self, *exc):
        self.acc.synchronize = self.orig


def build_model(layers: int):
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    cfg = Qwen2Config(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=64, vocab_size=256, tie_word_embeddings=True, use_cache=False)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)


def loss_of(model, ids):
    return model(input_ids=ids).logits.float().logsumexp(-1).mean()


def measure(name: str, backward, step, forward, steps: int, warmup: int) -> dict:
    """Ops counted in one step under the dispatch mode; host times from `steps` other steps run
    without it (the mode's Python call per op would otherwise be most of what is timed)."""
    for _ in range(warmup):
        backward(forward())
        step()
    with SyncCount() as sync:
        loss = forward()
        with OpCount() as bw:
            backward(loss)
        with OpCount() as st:
            step()
    times = collections.defaultdict(list)
    for _ in range(steps):
        loss = forward()
        t0 = time.perf_counter()
        backward(loss)
        t1 = time.perf_counter()
        step()
        t2 = time.perf_counter()
        times["backward"].append(t1 - t0)
        times["step"].append(t2 - t1)
    counts = {"backward": bw.summary(), "step": {**st.summary(), "synchronize": sync.n}}
    return {"name": name, **counts, **{f"{k}_ms": 1e3 * statistics.median(v) for k, v in times.items()}}


def run_plain(args, ids) -> dict:
    model = build_model(args.layers)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)

    def step():
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return measure("plain pytorch (clip_grad_norm_ + fused AdamW)", lambda loss: loss.backward(), step,
                   lambda: loss_of(model, ids), args.steps, args.warmup)


def run_hsdpo(args, ids, name: str, changes: dict) -> dict:
    from hsdpo.train import strategy
    from hsdpo.train.config import DPOConfig

    t = DPOConfig(steps=100, batch_size=2, micro_batch_size=2, zero_stage=2, precision="bf16", **changes)
    engine = strategy.initialize(build_model(args.layers), t, 2, 1)

    def backward(loss):
        with strategy.grad_reduction(engine, t, 1):
            engine.backward(loss)

    def forward():
        return loss_of(engine, ids)

    return measure(name, backward, engine.step, forward, args.steps, args.warmup) | {"changes": changes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=28, help="decoder layers (28 = Qwen2.5-1.5B: 338 tensors)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    from hsdpo.train import strategy

    strategy.init_distributed(False)
    ids = torch.randint(0, 256, (2, 16))
    rows = [run_plain(args, ids),
            run_hsdpo(args, ids, "hsdpo ZeRO-2 (default: fused_clip)", {}),
            run_hsdpo(args, ids, "hsdpo ZeRO-2, fused_clip=false",
                      {"fused_clip": False}),
            run_hsdpo(args, ids, "hsdpo ZeRO-2, fused_clip=false, DeepSpeed's throughput timer on (the old default)",
                      {"fused_clip": False, "deepspeed": {"timers": {"throughput": {"enabled": True}}}})]
    n_params = sum(1 for _ in build_model(args.layers).parameters())
    print(f"\n{args.layers} layers, {n_params} parameter tensors, bf16, CPU, {args.steps} timed steps\n")
    print(f"{'loop':<82} {'bwd ops':>8} {'step ops':>9} {'views':>6} {'reads':>6} {'syncs':>6} {'bwd ms':>7} {'step ms':>8}")
    for r in rows:
        print(f"{r['name']:<82} {r['backward']['compute']:>8} {r['step']['compute']:>9} {r['step']['views']:>6}"
              f" {r['step']['reads']:>6} {r['step']['synchronize']:>6} {r['backward_ms']:>7.1f} {r['step_ms']:>8.1f}")
    base = rows[0]
    print("\nagainst the plain loop (step compute ops, step host ms):")
    for r in rows[1:]:
        print(f"  {r['name']}: {r['step']['compute'] / max(1, base['step']['compute']):.1f}x ops,"
              f" {r['step_ms'] / base['step_ms']:.2f}x host time")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"layers": args.layers, "parameters": n_params, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
