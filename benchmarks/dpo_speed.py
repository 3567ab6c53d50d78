"""Our DPO step against TRL's `DPOTrainer`, side by side in one run on CPU: same tiny Qwen2 model,
pairs, batch and sequence length, fp32, constant lr. TRL's default computes the reference log-probs
online (a second model forward every step); ours reads them from the cache `hsdpo reflogp` writes
(computed here once, outside the timed steps, as the stage does).

    pip install trl            # the optional `bench` extra
    python benchmarks/dpo_speed.py --steps 8 --pairs 8 --seq 128

Prints first-step losses (both ln 2: the policy starts as the reference) and steps/s, tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from hsdpo.model import build_model, build_tokenizer
from hsdpo.train.config import DPOConfig
from hsdpo.train.tokenize import pair_batch, sequence_logps
from hsdpo.train.worker import train_worker


def make_pairs(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = 3 + i, 5 + 2 * i
        rows.append({"pair_id": f"p{i}", "prompt": f"Question: Tom has {a} apples and buys {b} more. How many?\nAnswer: ",
                     "chosen": f"Tom has {a} apples. He buys {b} more, so {a} + {b} = {a + b}.\n#### {a + b}" * 2,
                     "rejected": f"Tom has {a} apples. He buys {b} more, so {a} + {b} = {a + b + 1}.\n#### {a + b + 1}" * 2,
                     "weight": 1.0})
    return rows


def cache_reference(model, tok, rows: list[dict], seq: int) -> None:
    b = pair_batch(tok, rows, seq)
    with torch.no_grad():
        logps, _ = sequence_logps(model.eval(), b.input_ids, b.loss_mask)
    n = len(rows)
    for i, r in enumerate(rows):
        r["ref_chosen_logp"], r["ref_rejected_logp"] = float(logps[i]), float(logps[n + i])


def run_trl(model_dir: str, rows: list[dict], args) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ds = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    with tempfile.TemporaryDirectory() as out:
        cfg = TRLConfig(output_dir=out, per_device_train_batch_size=args.pairs, max_steps=args.steps,
                        learning_rate=args.lr, beta=0.1, max_length=args.seq, logging_steps=1, report_to="none",
                        use_cpu=True, save_strategy="no", lr_scheduler_type="constant", warmup_steps=0,
                        max_grad_norm=1.0, seed=0, dataloader_num_workers=0, disable_dropout=True)
        trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Timer()])
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"name": "TRL DPOTrainer (online ref)", "first_loss": losses[0], "step_s": median(times[1:] or times)}


def run_ours(model_dir: str, rows: list[dict], args) -> dict:
    cfg = DPOConfig(steps=args.steps, batch_size=args.pairs, micro_batch_size=args.pairs, max_length=args.seq,
                    lr=args.lr, beta=0.1, min_lr_ratio=1.0, precision="fp32", zero_stage=2)
    spec = {"kind": "dpo", "cfg": cfg.model_dump(mode="json"), "model_path": model_dir, "tokenizer_path": model_dir,
            "export": False, "out_dir": None}
    hist = train_worker(spec, rows=rows)
    return {"name": "hsdpo (ZeRO-2, cached ref)", "first_loss": hist[0]["loss"],
            "step_s": median([h["step_s"] for h in hist[1:]] or [hist[0]["step_s"]])}


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--preset", default="micro")
    ap.add_argument("--out", default=None, help="JSON results path")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rows = make_pairs(args.pairs)
    model_dir = tempfile.mkdtemp(prefix="dpo_speed_")
    tok = build_tokenizer([r["prompt"] + r["chosen"] + r["rejected"] for r in rows] * 4, model_dir)
    model = build_model(args.preset, tok, max_position_embeddings=512, seed=0)
    model.save_pretrained(model_dir)
    cache_reference(model, tok, rows, args.seq)
    b = pair_batch(tok, rows, args.seq)
    tokens = int(b.attention_mask.sum())
    results = [run_trl(model_dir, rows, args), run_ours(model_dir, rows, args)]
    print(f"\nDPO step on CPU, {args.preset}, {args.pairs} pairs, <= {args.seq} tokens, {tokens} tokens/step")
    print(f"{'':30} {'first loss':>10} {'step s':>8} {'tokens/s':>9}")
    for r in results:
        r["tokens_per_s"] = tokens / r["step_s"]
        print(f"{r['name']:30} {r['first_loss']:10.5f} {r['step_s']:8.4f} {r['tokens_per_s']:9.0f}")
    speedup = results[0]["step_s"] / results[1]["step_s"]
    print(f"speedup (ours / TRL throughput): {speedup:.2f}x; first-loss gap {abs(results[0]['first_loss'] - results[1]['first_loss']):.2e}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "results": results, "speedup": speedup}, f, indent=2)


if __name__ == "__main__":
    main()
