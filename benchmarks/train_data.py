"""Training data at MetaMathQA scale: the time until every worker holds the tokenised table, and
what a worker holds, side by side in one run on a local Ray:

  (a) per worker, per text (hsdpo before the tokenised table): every worker receives the rows and
      tokenises all of them, one tokenizer call per prompt and per completion, into lists of
      Python ints (the former `encode` loop, kept here as the baseline);
  (b) tokenised once (hsdpo now, `launch.tokenized_dataset`): Ray Data tasks tokenise the table in
      batches and materialise it; every worker reads the token arrays into flat int32 arrays
      (`worker.Task`).

Rows: GSM8K train and MATH-500 solutions, cycled to `--rows` (MetaMathQA has 395k), formatted with
the alpaca prompt as the Qwen2.5-1.5B recipe does; a 32k BPE tokenizer built from them (nothing
downloaded). `--workers` Ray tasks stand in for the training workers (1 CPU each) and report the
growth of their resident memory while building the table. Nothing is trained.

    python benchmarks/train_data.py                          # 100,000 rows, 2 workers
    python benchmarks/train_data.py --rows 395000 --workers 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def build_rows(n: int) -> list[dict[str, str]]:
    from hsdpo.prompts import format_prompt

    base = [json.loads(line) for f in ("gsm8k/train.jsonl", "math500/test.jsonl")
            for line in (DATA / f).read_text().splitlines() if line.strip()]
    return [{"prompt": format_prompt(f"{base[i % len(base)]['question']} ({i})", "alpaca"),
             "completion": base[i % len(base)]["answer"]} for i in range(n)]


def rss() -> int:
    """Private resident memory (RssAnon): the object store's shared pages a worker maps are not its own."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon"))


def per_text_worker(rows, tokenizer_path: str, max_length: int) -> dict:
    """(a): the former per-worker tokenisation, one call per text, Python lists."""
    import gc

    from hsdpo.model import load_tokenizer

    tok = load_tokenizer(tokenizer_path)
    gc.collect()
    before, t0 = rss(), time.perf_counter()
    items = []
    for r in rows:
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        c = tok(r["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        if len(p) + len(c) > max_length:
            p = p[-(max_length // 2):] if len(p) > max_length // 2 else p
            c = c[: max_length - len(p)]
        items.append((p + c, len(p)))
    dt = time.perf_counter() - t0
    gc.collect()
    return {"s": dt, "rss_delta": rss() - before, "tokens": sum(len(ids) for ids, _ in items)}


def table_worker(ds, pad_id: int) -> dict:
    """(b): what `worker.train_worker` does with the materialised dataset (`worker.load_task`)."""
    import gc

    from hsdpo.train.config import SFTConfig
    from hsdpo.train.worker import load_task

    gc.collect()
    before, t0 = rss(), time.perf_counter()
    task = load_task("sft", SFTConfig(), pad_id, shard=ds)
    dt = time.perf_counter() - t0
    gc.collect()
    return {"s": dt, "rss_delta": rss() - before, "tokens": int(task.ntokens.sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()

    import ray

    from hsdpo.model import TokenizerBuildConfig, build_tokenizer
    from hsdpo.train.config import SFTConfig
    from hsdpo.train.launch import tokenized_dataset

    rows = build_rows(args.rows)
    tok_dir = tempfile.mkdtemp(prefix="hsdpo-bench-tok-")
    tok = build_tokenizer([r["prompt"] + r["completion"] for r in rows[:20_000]], tok_dir,
                          cfg=TokenizerBuildConfig(vocab_size=32_000))
    ray.init(num_cpus=max(args.workers, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    worker_a = ray.remote(num_cpus=1)(per_text_worker)
    worker_b = ray.remote(num_cpus=1)(table_worker)
    ray.get(worker_a.remote(rows[:10], tok_dir, args.max_length))  # warm the worker processes' imports
    rows_ref = ray.put(rows)

    t0 = time.perf_counter()
    a = ray.get([worker_a.remote(rows_ref, tok_dir, args.max_length) for _ in range(args.workers)])
    a_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    ds = tokenized_dataset("sft", SFTConfig(max_length=args.max_length), rows, tok_dir)
    tokenise_s = time.perf_counter() - t0
    b = ray.get([worker_b.remote(ds, tok.pad_token_id) for _ in range(args.workers)])
    b_wall = time.perf_counter() - t0
    assert {r["tokens"] for r in a} == {r["tokens"] for r in b}, "the two tokenise differently"

    tokens = a[0]["tokens"]
    mib = 2**20
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "rows": args.rows, "tokens": tokens,
           "workers": args.workers,
           "per_text": {"wall_s": a_wall, "worker_s": max(r["s"] for r in a),
                        "worker_mib": max(r["rss_delta"] for r in a) / mib},
           "table": {"wall_s": b_wall, "tokenise_s": tokenise_s, "worker_s": max(r["s"] for r in b),
                     "worker_mib": max(r["rss_delta"] for r in b) / mib}}
    print(f"{args.rows:,} rows, {tokens:,} tokens ({tokens / args.rows:.0f} a row), {args.workers} workers,"
          f" {out['machine']}")
    print(f"{'':>26} {'until all hold it':>18} {'a worker builds':>16} {'a worker holds':>15} {'B/token':>8}")
    for name, key in (("(a) per worker, per text", "per_text"), ("(b) tokenised once", "table")):
        r = out[key]
        print(f"{name:>26} {r['wall_s']:>16.1f} s {r['worker_s']:>14.1f} s {r['worker_mib']:>11.0f} MiB"
              f" {r['worker_mib'] * mib / tokens:>8.1f}")
    print(f"(b) tokenising {out['table']['tokenise_s']:.1f} s of its {b_wall:.1f} s; ratios (a)/(b): time to all"
          f" workers {a_wall / b_wall:.2f}x, memory a worker {out['per_text']['worker_mib'] / out['table']['worker_mib']:.1f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
