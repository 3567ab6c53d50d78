"""Verifier throughput, side by side in one run on GSM8K-format solutions:

  (a) full profile: `hsdpo.verifier.verify(solution, gold, question)`: answer, six error dimensions,
      wrongness, absurdity, hard negative (every step checked exactly, operands grounded);
  (b) answer only:  math-verify's `verify(parse(gold), parse(solution))` with its defaults.

Solutions are GSM8K test gold solutions plus four perturbed copies of each (an altered intermediate
result, the final answer off by one, an absurd final answer, a cut mid-step). The two are timed in
interleaved chunks, so that a busy machine slows both alike. Target: (a) at least as fast as (b)
per solution, i.e. ratio (a)/(b) >= 1.

    python benchmarks/verifier_speed.py                  # all 1,319 problems, 6,595 solutions
    python benchmarks/verifier_speed.py --problems 200   # quick
    python benchmarks/verifier_speed.py --out verifier_speed.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


def build_cases(problems: int) -> list[tuple[str, str, str]]:
    """(solution, gold answer, question) for each gold solution and its perturbed copies."""
    from hsdpo.verifier import extract_answer
    from hsdpo.verifier.perturb import absurd_final, alter_intermediate, final_off_by_one, truncate_mid_step

    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:problems]]
    cases = []
    for i, row in enumerate(rows):
        sol, question = row["answer"], row["question"]
        gold = extract_answer(sol).answer or ""
        rng = random.Random(i)
        variants = [alter_intermediate(sol, rng), final_off_by_one(sol), absurd_final(sol), truncate_mid_step(sol, rng)]
        cases += [(sol, gold, question)] + [(p.text, gold, question) for p in variants if p is not None]
    return cases


def run(cases: list[tuple[str, str, str]], chunk: int) -> dict:
    from math_verify import parse, verify as mv_verify

    from hsdpo.verifier import verify, warmup

    warmup()
    for sol, gold, question in cases[:20]:  # warm both: imports, regex and parser caches
        verify(sol, gold, question)
        mv_verify(parse(gold), parse(sol))
    ours_s = mv_s = 0.0
    agree = ours_correct = mv_correct = 0
    for start in range(0, len(cases), chunk):
        part = cases[start : start + chunk]
        t0 = time.perf_counter()
        ours = [verify(sol, gold, question).correct for sol, gold, question in part]
        t1 = time.perf_counter()
        theirs = [mv_verify(parse(gold), parse(sol)) for sol, gold, _ in part]
        t2 = time.perf_counter()
        ours_s, mv_s = ours_s + (t1 - t0), mv_s + (t2 - t1)
        agree += sum(a == b for a, b in zip(ours, theirs))
        ours_correct, mv_correct = ours_correct + sum(ours), mv_correct + sum(theirs)
    n = len(cases)
    return {
        "solutions": n,
        "full_profile_solutions_per_s": n / ours_s,
        "math_verify_answer_only_solutions_per_s": n / mv_s,
        "ratio_full_over_answer_only": mv_s / ours_s,
        "correct_full_profile": ours_correct,
        "correct_math_verify": mv_correct,
        "agreement_on_correct": agree / n,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=1319, help="GSM8K test problems used (5 solutions each)")
    parser.add_argument("--chunk", type=int, default=100, help="solutions per interleaved timing chunk")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    result = run(build_cases(args.problems), args.chunk)
    print(f"{'':24}{'solutions/s':>14}")
    print(f"{'full profile (hsdpo)':24}{result['full_profile_solutions_per_s']:>14.0f}")
    print(f"{'answer only (math-verify)':24}{result['math_verify_answer_only_solutions_per_s']:>14.0f}")
    print(f"ratio full / answer-only: {result['ratio_full_over_answer_only']:.2f}")
    print(f"{result['solutions']} solutions on {result['machine']}")
    print(f"judged correct: hsdpo {result['correct_full_profile']}, math-verify {result['correct_math_verify']}, "
          f"agreement {result['agreement_on_correct']:.3f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
