"""Hostile model text: every call returns a verdict within the time budget, raises nothing,
executes nothing, and garbage is never correct. Also: off the main thread, and a math-verify
comparison that overruns its deadline (the child is killed and respawned)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hsdpo.verifier import Verdict, VerifierConfig, verify, warmup

CFG = VerifierConfig()  # the default 1 s budget
# Wall-clock slack for a shared, loaded 2-core machine: the scheduler, not the verifier.
GRACE_S = 0.5
QUESTION = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips?"


def _hostile(tmp: Path) -> dict[str, str]:
    return {
        "python_power": "The answer is 9**9**9**9",
        "caret_power": "#### 9^9^9^9",
        "latex_power": "\\boxed{10^{10^{10}}}",
        "power_in_step": "We get $10^{10^{10}} = 5$ and 2**100000 = 3\n#### 5",
        "deep_parens": "(" * 20_000 + "1" + ")" * 20_000 + " = 1\n#### 1",
        "open_parens": "(" * 20_000,
        "deep_boxed": "\\boxed{" * 20_000 + "1",
        "deep_boxed_closed": "\\boxed{" * 20_000 + "1" + "}" * 20_000,
        "megabyte_equations": "1 + 1 = 2. " * 100_000,
        "megabyte_digits": "7" * 1_000_000,
        "megabyte_newlines": "\n" * 1_000_000 + "#### ",
        "many_annotations": "<<1+1=2>>2 " * 50_000,
        "many_answer_is": "the answer is " * 50_000,
        "many_answer_lines": "**Final Answer:** x\n" * 50_000,
        "answer_line_markup": "*#" * 500_000 + "Final answer",
        "answer_line_long": "Answer: " + "word, " * 200_000,
        "answer_line_digits": "Answer: " + "7" * 1_000_000 + " apples",
        "hash_dollars": "#### " + "$" * 300_000 + "x",
        # unit words that are no unit tail: each word must match one way (this took minutes)
        "unit_words": "#### 18 dollars were spent altogether during their weekend trip to the county fair 2",
        "unit_words_long": "The answer is 1" + " aaaa" * 38 + " 5",
        "heading_one_word": "#### " + "a" * 49_000,
        "inject_os": f"The answer is __import__('os').system('touch {tmp}/pwned1')",
        "inject_boxed": f"\\boxed{{__import__('os').system('touch {tmp}/pwned2')}}",
        "inject_eval": f"#### eval(\"open('{tmp}/pwned3', 'w')\")",
        "inject_step": f"__import__('os').system('touch {tmp}/pwned4') = 72\n#### 72 + exec('1')",
        "nan": "The answer is NaN",
        "inf": "#### inf",
        "latex_inf": "\\boxed{\\infty}",
        "huge_exponent": "#### 1e999999999",
        "tiny_exponent": "The answer is 1e-999999999",
        "lone_surrogates": "The answer is \ud800\udfff \udc00 5",
        "control_chars": "\x00\x01\x1b[31m\x7f The answer is \x08\x0c 7",
        "huge_fraction": "\\boxed{\\frac{1}{" + "9" * 5000 + "}}",
        "symbolic_bomb": "\\boxed{" + "+".join(f"x^{{{i}}}" for i in range(300)) + "}",
        "factorial_bomb": "\\boxed{10000000!}",
        "empty": "",
    }


def _check(v: Verdict) -> None:
    assert isinstance(v, Verdict)
    assert not v.correct
    for x in (*v.profile.as_tuple(), v.wrongness, v.absurdity):
        assert 0.0 <= x <= 1.0
    assert v.pred_answer is None or (len(v.pred_answer) <= 1000 and v.pred_answer.encode("utf-8"))


@pytest.fixture(scope="module", autouse=True)
def _symbolic_child() -> None:
    assert warmup(120.0)


@pytest.mark.parametrize("gold", ["72", "\\frac{\\pi}{2}"])
def test_hostile_inputs_are_safe_and_bounded(gold: str, tmp_path: Path) -> None:
    slow = []
    for name, text in _hostile(tmp_path).items():
        hostile_question = gold == "72" and name != "factorial_bomb"  # once is enough for the question path
        questions = (QUESTION, text[:100_000]) if hostile_question else (QUESTION,)
        for question in questions:
            # Timed twice at most: a scheduler stall on a busy machine does not repeat, a
            # computation that ignores the budget does.
            elapsed = []
            for _ in range(2):
                start = time.perf_counter()
                v = verify(text, gold, question, cfg=CFG)
                elapsed.append(time.perf_counter() - start)
                _check(v)
                if name == "factorial_bomb" and "symbolic_timeout" in v.flags:
                    assert warmup(120.0)  # the killed child is back before the next call
                if elapsed[-1] <= CFG.timeout_s + GRACE_S:
                    break
            if min(elapsed) > CFG.timeout_s + GRACE_S:
                slow.append((name, round(min(elapsed), 2)))
    assert slow == []
    assert not list(tmp_path.iterdir()), "hostile text executed code"


def test_hostile_gold_answer_never_matches_garbage() -> None:
    for gold in ("9**9**9**9", "\\boxed{" * 5000, "NaN", ""):
        v = verify("The answer is \\infty and 9**9**9**9 and NaN", gold, cfg=CFG)
        _check(v)


def test_off_main_thread_with_symbolic_answers() -> None:
    cases = [("\\boxed{\\pi/2}", "\\frac{\\pi}{2}", True), ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", True),
             ("\\boxed{(1, 3]}", "(1,3)", False), ("#### 1,000", "1000", True)] * 4
    cfg = VerifierConfig(timeout_s=20.0)  # several threads share one child: queueing, not a hang
    with ThreadPoolExecutor(4) as pool:
        verdicts = list(pool.map(lambda c: verify(c[0], c[1], cfg=cfg), cases))
    assert [v.correct for v in verdicts] == [c[2] for c in cases]
    assert threading.current_thread() is threading.main_thread()


def test_symbolic_overrun_is_a_flag_and_the_child_recovers() -> None:
    done: list[tuple[float, Verdict]] = []

    def run() -> None:
        start = time.perf_counter()
        done.append((time.perf_counter() - start, verify("\\boxed{10000000!}", "\\frac{\\pi}{2}", cfg=CFG)))
        done[-1] = (time.perf_counter() - start, done[-1][1])

    worker = threading.Thread(target=run)  # off the main thread: SIGALRM could not help here
    worker.start()
    worker.join(30)
    elapsed, v = done[0]
    assert not v.correct and "symbolic_timeout" in v.flags
    assert elapsed <= CFG.timeout_s + GRACE_S
    assert warmup(120.0)
    assert verify("\\boxed{\\pi/2}", "\\frac{\\pi}{2}", cfg=CFG).correct
