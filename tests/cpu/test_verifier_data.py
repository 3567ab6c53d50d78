"""The verifier on real data: GSM8K train and MATH-500 gold solutions, and a perturbation suite
built from GSM8K test gold solutions (rates reported in docs/verifier.md).

These tests check what the verifier finds, not how fast: they raise the time budget so that a
busy shared machine cannot turn a slow call into a miss (speed: test_verifier_hostile.py and
benchmarks/verifier_speed.py).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from hsdpo.verifier import VerifierConfig, extract_answer, verify, warmup
from hsdpo.verifier.perturb import absurd_final, alter_intermediate, final_off_by_one, truncate_mid_step

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CFG = VerifierConfig(timeout_s=30.0)


@pytest.fixture(scope="module")
def rows(data_dir: Path) -> Callable[[str], list[dict[str, str]]]:
    """Rows of a data file under ../shared/data (the `data_dir` fixture fails if it is missing)."""

    def read(name: str) -> list[dict[str, str]]:
        with open(data_dir / name) as f:
            return [json.loads(line) for line in f]

    return read


@pytest.fixture(scope="module", autouse=True)
def _symbolic_child() -> None:
    assert warmup(120.0), "math-verify child did not start"


def test_gsm8k_train_gold_all_correct_and_arithmetic_clean(rows) -> None:
    data = rows("gsm8k/train.jsonl")
    assert len(data) == 7473
    wrong, flagged = [], set()
    for i, row in enumerate(data):
        gold = extract_answer(row["answer"])
        assert gold.rule == "hash"
        v = verify(row["answer"], gold.answer or "", row["question"], cfg=CFG)
        if not v.correct:
            wrong.append((i, v.pred_answer, gold.answer, v.flags))
        if v.profile.arithmetic > 0:
            flagged.add(i)
        assert "verifier_error" not in v.flags and "timeout" not in v.flags
    assert wrong == []
    assert 1 - len(flagged) / len(data) >= 0.995
    listed = json.loads((FIXTURES / "verifier_gsm8k_arithmetic_exceptions.json").read_text())["exceptions"]
    assert all(e["reason"] for e in listed)
    assert flagged == {e["index"] for e in listed}, "update the fixture: each exception needs its reason"


def test_math500_gold_correct(rows) -> None:
    data = rows("math500/test.jsonl")
    assert len(data) == 500
    correct = boxed_correct = 0
    for row in data:
        gold = extract_answer(row["answer"])
        assert gold.rule == "answer_is" and gold.answer
        correct += verify(row["answer"], gold.answer, row["question"], cfg=CFG).correct
        # Without its "The answer is" line the solution is judged by its \boxed{} answer, which
        # often differs from the gold spelling: this exercises equivalence (math-verify) for real.
        body = row["answer"][: row["answer"].rfind("The answer is")]
        boxed_correct += verify(body, gold.answer, row["question"], cfg=CFG).correct
    assert correct / len(data) >= 0.99
    assert boxed_correct / len(data) >= 0.99


def perturbation_rates(data: list[dict[str, str]]) -> dict[str, tuple[int, int]]:
    """(detected, total) per perturbation kind over GSM8K test gold solutions."""
    counts = {"altered_step": [0, 0], "off_by_one": [0, 0], "absurd": [0, 0], "truncated": [0, 0]}

    def count(kind: str, detected: bool) -> None:
        counts[kind][0] += detected
        counts[kind][1] += 1

    for i, row in enumerate(data):
        sol, question = row["answer"], row["question"]
        gold = extract_answer(sol).answer or ""
        rng = random.Random(i)
        if (p := alter_intermediate(sol, rng)) is not None:
            v = verify(p.text, gold, question, cfg=CFG)
            count("altered_step", v.profile.arithmetic > 0 and v.first_error_step == p.step)
        if (p := final_off_by_one(sol)) is not None:
            v = verify(p.text, gold, question, cfg=CFG)
            count("off_by_one", not v.correct and v.profile.numeric <= CFG.tau_numeric and v.hard_negative)
        if (p := absurd_final(sol, "-5000" if i % 2 else "1000000000")) is not None:
            v = verify(p.text, gold, question, cfg=CFG)
            count("absurd", v.absurdity >= 0.5 and not v.hard_negative)
        if (p := truncate_mid_step(sol, rng)) is not None:
            v = verify(p.text, gold, question, cfg=CFG)
            count("truncated", v.profile.format > 0 and "truncated" in v.flags)
    return {k: (a, b) for k, (a, b) in counts.items()}


def test_perturbations_detected(rows) -> None:
    rates = perturbation_rates(rows("gsm8k/test.jsonl"))
    for kind, (hit, total) in rates.items():
        assert total >= 1000, kind
        assert hit / total >= 0.95, f"{kind}: {hit}/{total}"
