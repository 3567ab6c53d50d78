"""Padding saved by ordering a rank's slice by length, and by packing (`packing: true`).

Real GSM8K train problems, a BPE tokenizer built from them (nothing downloaded): each pair is the
problem's gold solution (chosen) and the gold solution of a random other problem (rejected: a
stand-in for a sampled solution of another length); SFT examples are the problems with their gold
solutions. For the recipe's batch shapes, the share of real tokens among the tokens a forward
computes: micro-batches cut from the slice in stream order and ordered by length as hsdpo's worker
does (`Task.length`), each example a padded row (chosen and rejected padded to one width), or
ordered and packed into rows of `max_length` tokens (`collate_rows(pack=...)`).

`--time N` also times N forward + backward passes of the `small` preset (CPU, fp32) over the same
ordered micro-batches, padded and packed, alternating, and checks that their log-probs agree.

    python benchmarks/padding.py                      # ../shared/data/gsm8k/train.jsonl
    python benchmarks/padding.py --time 40
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from hsdpo.model import build_tokenizer
from hsdpo.prompts import format_prompt
from hsdpo.train.config import DPOConfig, SFTConfig
from hsdpo.train.worker import Task

MAX_LENGTH = 1024  # the 1.5B recipe's SFT and DPO


def micro_batches(task: Task, per_rank: int, micro: int, ordered: bool, draws: int, seed: int = 0):
    rnd = random.Random(seed)
    for _ in range(draws):
        mine = rnd.sample(range(len(task)), per_rank)
        if ordered:
            mine.sort(key=task.length)
        for a in range(0, per_rank, micro):
            yield mine[a:a + micro]


def efficiency(task: Task, per_rank: int, micro: int, ordered: bool, draws: int, packed: bool = False) -> float:
    real = computed = 0
    sides = len(task.sides)
    for m in micro_batches(task, per_rank, micro, ordered, draws):
        real += task.tokens(m)
        computed += task.batch(m).input_ids.numel() if packed else sides * len(m) * max(task.length(i) for i in m)
    return real / computed


def timed(tasks: dict[str, Task], tokenizer, per_rank: int, micro: int, n: int) -> dict[str, float]:
    """Seconds of forward + backward over the same micro-batches, padded and packed, alternating."""
    import torch

    from hsdpo.model import build_model
    from hsdpo.train.tokenize import LogpModel

    pad = tasks["padded"]
    model = LogpModel(build_model("small", tokenizer, MAX_LENGTH), chunk=128)
    batches = list(micro_batches(pad, per_rank, micro, True, -(-n * micro // per_rank), seed=1))[:n]
    secs = {k: 0.0 for k in tasks}
    for i, m in enumerate(batches):
        out = {}
        for name, task in (tasks.items() if i % 2 else reversed(tasks.items())):
            b = task.batch(m)
            t0 = time.perf_counter()
            logps, _ = model(*b.logp_args())
            logps.sum().backward()
            secs[name] += time.perf_counter() - t0
            out[name] = logps.detach()
        assert torch.allclose(out["padded"], out["packed"], rtol=1e-4, atol=1e-3), "packed log-probs differ"
        model.zero_grad(set_to_none=True)
    return {k: v / len(batches) for k, v in secs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"))
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--time", type=int, default=0, help="also time this many SFT micro-batches on CPU (small preset)")
    args = ap.parse_args()
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    rnd = random.Random(0)
    pairs = [{"prompt": format_prompt(r["question"]), "chosen": r["answer"],
              "rejected": rows[rnd.randrange(len(rows))]["answer"], "weight": 1.0,
              "ref_chosen_logp": 0.0, "ref_rejected_logp": 0.0} for r in rows]
    sft_rows = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs]
    with tempfile.TemporaryDirectory() as d:
        tok = build_tokenizer([p["prompt"] + p["chosen"] for p in pairs], d)
    tasks = {(kind, packing): Task.from_rows(kind, cfg(max_length=MAX_LENGTH, packing=packing), data, tok)
             for kind, cfg, data in (("dpo", DPOConfig, pairs), ("sft", SFTConfig, sft_rows))
             for packing in (False, True)}
    print(f"{len(pairs)} GSM8K problems; real tokens / computed tokens per forward (rows of {MAX_LENGTH} when packed)")
    print(f"{'':5} {'a rank':>6} {'micro':>6} {'stream order':>13} {'by length':>10} {'packed':>7}"
          f" {'computed, packed':>17}")
    for kind, per_rank, micro in (("dpo", 8, 2), ("dpo", 16, 4), ("sft", 16, 4), ("sft", 32, 8)):
        a = efficiency(tasks[kind, False], per_rank, micro, False, args.draws)
        b = efficiency(tasks[kind, False], per_rank, micro, True, args.draws)
        c = efficiency(tasks[kind, True], per_rank, micro, True, args.draws, packed=True)
        print(f"{kind:5} {per_rank:>6} {micro:>6} {a:>13.3f} {b:>10.3f} {c:>7.3f} {b / c:>16.2f}x")
    if args.time:
        secs = timed({"padded": tasks["sft", False], "packed": tasks["sft", True]}, tok, 16, 4, args.time)
        print(f"sft, 4 examples a forward, small preset on CPU, {args.time} micro-batches: padded "
              f"{secs['padded'] * 1e3:.1f} ms, packed {secs['packed'] * 1e3:.1f} ms a forward + backward "
              f"({secs['padded'] / secs['packed']:.2f}x)")


if __name__ == "__main__":
    main()
