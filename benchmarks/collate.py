"""Host time to build a micro-batch from the tokenised table, against the row-at-a-time way it
was built before (kept here as the baseline): each example through a Python list into its row.

A DPO micro-batch is `[2n, T]` (chosen then rejected) cut from the table's flat int32 arrays
(`Task.batch` -> `tokenize.collate_rows`); on a GPU this is host work in every micro-step. Random
token ids, lengths 200-512 (prompt 50-150), as at the recipe's GPU benchmark shape. Both ways must
give the same tensors; the script checks that on every draw before it times anything.

    python benchmarks/collate.py --pairs 8 --rows 5000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa
import torch

from hsdpo.train.config import DPOConfig
from hsdpo.train.tokenize import Batch, Sequences, scored_positions
from hsdpo.train.worker import Task


def row_at_a_time(examples, pad_id: int) -> Batch:
    """The previous `collate`: a Python list a row."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        attn[i, :n] = 1
        mask[i, e.prompt_len:n] = 1
    return Batch(ids, attn, mask, scored_positions(mask))


def table(rows: int, rng: np.random.Generator) -> Sequences:
    lengths, prompt = rng.integers(200, 513, rows), rng.integers(50, 151, rows)
    offsets = np.zeros(rows + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Sequences(rng.integers(0, 151_000, offsets[-1]).astype(np.int32), offsets, prompt, np.zeros(rows, bool))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=8, help="pairs a micro-batch")
    ap.add_argument("--rows", type=int, default=5000, help="pairs in the table")
    ap.add_argument("--repeat", type=int, default=300)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    chosen, rejected = table(args.rows, rng), table(args.rows, rng)
    n = args.rows
    t = pa.table({**chosen.columns("chosen_"), **rejected.columns("rejected_"), "_idx": np.arange(n),
                  "weight": np.ones(n), "ref_chosen_logp": np.zeros(n), "ref_rejected_logp": np.zeros(n)})
    task = Task("dpo", DPOConfig(), t, pad_id=0)
    draws = [list(rng.integers(0, n, args.pairs)) for _ in range(args.repeat)]
    for idx in draws:
        a, b = task.batch(idx), row_at_a_time([side[i] for side in task.sides for i in idx], 0)
        assert all(torch.equal(x, y) for x, y in zip((a.input_ids, a.attention_mask, a.loss_mask, a.scored),
                                                      (b.input_ids, b.attention_mask, b.loss_mask, b.scored)))
    times = {}
    for name, fn in (("row at a time (before)", lambda idx: row_at_a_time([s[i] for s in task.sides for i in idx], 0)),
                     ("flat arrays (collate_rows)", task.batch)):
        t0 = time.perf_counter()
        for idx in draws:
            fn(idx)
        times[name] = (time.perf_counter() - t0) / len(draws) * 1e3
    print(f"{args.pairs} pairs a micro-batch ([{2 * args.pairs}, <=512]), {len(draws)} draws, identical tensors")
    for name, ms in times.items():
        print(f"  {name:28s} {ms:7.3f} ms")
    before, after = times.values()
    print(f"  ratio {before / after:.1f}x")


if __name__ == "__main__":
    main()
