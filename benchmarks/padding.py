"""Padding saved by ordering a rank's slice by length before it is cut into micro-batches.

Real GSM8K train problems, a BPE tokenizer built from them (nothing downloaded): each pair is the
problem's gold solution (chosen) and the gold solution of a random other problem (rejected: a
stand-in for a sampled solution of another length). For the recipe's batch shapes, the share of
real tokens among the tokens a forward computes (chosen and rejected padded to one width), with
the slice in stream order and ordered by length as hsdpo's worker does (`Task.length`).

    python benchmarks/padding.py                      # ../shared/data/gsm8k/train.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

from hsdpo.model import build_tokenizer
from hsdpo.prompts import format_prompt
from hsdpo.train.config import DPOConfig
from hsdpo.train.worker import Task


def efficiency(task: Task, per_rank: int, micro: int, ordered: bool, draws: int, seed: int = 0) -> float:
    rnd = random.Random(seed)
    real = computed = 0
    for _ in range(draws):
        mine = rnd.sample(range(len(task)), per_rank)
        if ordered:
            mine.sort(key=task.length)
        for a in range(0, per_rank, micro):
            m = mine[a:a + micro]
            real += task.tokens(m)
            computed += 2 * len(m) * max(task.length(i) for i in m)
    return real / computed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"))
    ap.add_argument("--draws", type=int, default=2000)
    args = ap.parse_args()
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    rnd = random.Random(0)
    pairs = [{"prompt": format_prompt(r["question"]), "chosen": r["answer"],
              "rejected": rows[rnd.randrange(len(rows))]["answer"], "weight": 1.0,
              "ref_chosen_logp": 0.0, "ref_rejected_logp": 0.0} for r in rows]
    with tempfile.TemporaryDirectory() as d:
        tok = build_tokenizer([p["prompt"] + p["chosen"] for p in pairs], d)
    task = Task.from_rows("dpo", DPOConfig(max_length=1024), pairs, tok)
    print(f"{len(pairs)} GSM8K pairs; real tokens / computed tokens per forward")
    print(f"{'pairs a rank':>12} {'micro':>6} {'stream order':>13} {'by length':>10} {'computed':>9}")
    for per_rank, micro in ((8, 2), (16, 4), (32, 4)):
        a = efficiency(task, per_rank, micro, False, args.draws)
        b = efficiency(task, per_rank, micro, True, args.draws)
        print(f"{per_rank:>12} {micro:>6} {a:>13.3f} {b:>10.3f} {a / b:>9.2f}x")


if __name__ == "__main__":
    main()
