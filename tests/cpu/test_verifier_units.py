"""Table-driven unit tests of the verifier, every expectation computed by hand.

Worked score examples (defaults: wrongness weights .5/.2/.15/.15 for answer/numeric/arithmetic/
logic, absurdity weights .3/.5/.2 for format/implausibility/numeric, numeric = ln(1 + |p-g|/s) /
ln(101) with s = max(|g|, 10)):

  near miss 73 for gold 72, one of two computations wrong:
    numeric = ln(1 + 1/72) / ln(101) = 0.0029888;  arithmetic = 1/2;  logic = 0
    wrongness = .5*1 + .2*0.0029888 + .15*.5 = 0.5755978;  absurdity = .2*0.0029888 = 0.0005978
  absurd -5000 for gold 72 after a correct chain (final is not the last result: logic 1/3):
    numeric = ln(1 + 5072/72) / ln(101) = 0.9249935;  implausibility = 1 (wrong sign)
    wrongness = .5 + .2*0.9249935 + .15/3 = 0.7349987;  absurdity = .5 + .2*0.9249935 = 0.6849987
"""

from __future__ import annotations

import math
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from hsdpo.verifier import ErrorProfile, VerifierConfig, extract_answer, verify, warmup
from hsdpo.verifier.answers import answer_candidates
from hsdpo.verifier.equivalence import answers_equivalent
from hsdpo.verifier.exact import DEFAULT_LIMITS, LimitExceeded, parse_number
from hsdpo.verifier.grounding import is_grounded, number_words, question_quantities
from hsdpo.verifier.scores import absurdity, is_hard_negative, magnitude_gap, numeric_distance, wrongness
from hsdpo.verifier.steps import Step, result_matches, split_steps, step_computations

CFG = VerifierConfig()
LN101 = math.log(101)
QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)
GOLD = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"


@pytest.fixture(scope="module", autouse=True)
def _symbolic_child() -> None:
    assert warmup(120.0)


@pytest.mark.parametrize(
    "text, answer, rule",
    [
        ("Natalia sold 72 clips.\n#### 72", "72", "hash"),
        ("So 3+4=7.\n#### 1,000", "1,000", "hash"),
        ("The answer is: \\left( 3, \\frac{\\pi}{2} \\right)", "\\left( 3, \\frac{\\pi}{2} \\right)", "answer_is"),
        ("so the answer is $\\boxed{52_8}.$The answer is: 52_8", "52_8", "answer_is"),
        ("The answer is <<8=8>>8.", "8", "answer_is"),
        ("Thus $\\boxed{\\frac{1}{\\sqrt{2}}}$.", "\\frac{1}{\\sqrt{2}}", "boxed"),
        ("first \\boxed{3}, finally \\fbox{12} here", "12", "boxed"),
        ("I think it is 5, then 7 apples", "7", "last_number"),
        ("It costs $1,234.50 in total", "1,234.50", "last_number"),
        ("so our answer is correct: 12", "12", "last_number"),
        ("\\boxed{3 + 4", "4", "last_number"),
        # math delimiters around the answer, an escaped dollar inside them, prose after them
        ("The final answer is $\\boxed{\\$36}$.", "\\$36", "answer_is"),
        ("Final Answer: The final answer is $\\frac{\\pi}{2}$. I hope it is correct.", "\\frac{\\pi}{2}", "answer_is"),
        ("The answer is $\\sqrt{2}$ meters.", "\\sqrt{2}", "answer_is"),
        ("The answer is \\(73\\).", "73", "answer_is"),
        ("The answer is \\[72\\]", "72", "answer_is"),
        ("The answer is: **72**", "72", "answer_is"),
        ("**The answer is: 72**", "72", "answer_is"),
        # a final `Answer:` line (instruct-model style), read like `answer is` content
        ("Natalia sold 48+24 = 72 clips.\nAnswer: 72", "72", "answer_line"),
        ("**Answer:** 72", "72", "answer_line"),
        ("**Final Answer**: 72", "72", "answer_line"),
        ("## Final answer: 72", "72", "answer_line"),
        ("#### Final Answer: 72", "72", "answer_line"),  # a heading, not GSM8K's `#### N`
        ("> **Final answer:** 12 dollars", "12", "answer_line"),
        ("Final answer: $\\frac{3}{4}$", "\\frac{3}{4}", "answer_line"),
        ("Answer: 72 apples (3 boxes of 24)", "72", "answer_line"),
        ("Answer: 72. She sold 72 clips.", "72", "answer_line"),
        ("Answer: \\$1,234.50 per week", "\\$1,234.50", "answer_line"),
        ("answer: x = 3", "x = 3", "answer_line"),
        ("Answer: 2, 3", "2, 3", "answer_line"),
        ("Answer: 5 \\text{ cm}", "5 \\text{ cm}", "answer_line"),
        ("Answer: (C)", "(C)", "answer_line"),
        ("So we get \\boxed{3} boxes.\nAnswer: 72", "72", "answer_line"),  # an `Answer:` line wins over \boxed
        # `answer is` content read as an `Answer:` line's: a remark after the number, prose that states none
        ("The answer is 72, which is the total.", "72", "answer_is"),
        ("So the answer is 72 (48 in April plus 24 in May).", "72", "answer_is"),
        ("The answer is 72 because she sold 48 + 24 of them.", "72", "answer_is"),
        ("The answer is $18 dollars, since 2 x 9 = 18.", "$18", "answer_is"),
        ("Answer: 72 because 48 + 24 = 72", "72", "answer_line"),
        ("We expect the answer is larger than 48.\nSo she sold $\\boxed{72}$ clips.", "72", "boxed"),
        # a markdown heading is not GSM8K's `#### N`
        ("#### Step 1: May\n48 / 2 = 24\n#### Final Answer\n\\boxed{72}", "72", "boxed"),
        ("#### Step 2: Total\n48 + 24 = 72\n\n**Answer:** 72", "72", "answer_line"),
        ("48 + 24 = 72\n#### The final answer is 72", "72", "answer_is"),
        ("#### 72 clips", "72", "hash"),
        ("#### Evelyn", "Evelyn", "hash"),  # a lone word on the last line is an answer, a heading's word is not
        ("#### Answer\n48 + 24 = 72", "72", "last_number"),
        ("48 + 24 = 72.\n\\boxed{72}\n\n#### Verification\n24 + 48 = 72, correct.", "72", "boxed"),
        ("The answer is 72.\n\n#### Note\nWe assumed she sold them all.", "72", "answer_is"),
        ("The answer is 72 after adding 48 and 24.", "72", "answer_is"),
        ("The answer is 72 from 48 + 24.", "72", "answer_is"),
        ("The answer is 4 by adding 2 and 2", "4", "answer_is"),
        ("He earns $2 million a year.\n#### $2 million", "$2 million", "hash"),  # the scale word is the number's
        ("So the answer is 200 thousand dollars.", "200 thousand", "answer_is"),
        # what does not start with a number is read whole, as before: LaTeX, words, a product
        ("The answer is 2\\sqrt{3} square units.", "2\\sqrt{3} square units", "answer_is"),
        ("Therefore, the answer is \\pi square units.", "\\pi square units", "answer_is"),
        ("The answer is New York.", "New York", "answer_is"),
        ("The answer is: \\text{Navin from Mauritius}", "\\text{Navin from Mauritius}", "answer_is"),
        ("The answer is: 6 by 4", "6 by 4", "answer_is"),
        ("#### x = 5", "x = 5", "hash"),
        ("#### -3.5", "-3.5", "hash"),
        ("So she sold 72, which is all of them", "72", "last_number"),
        ("the sequence 1,2,3", "3", "last_number"),
        ("She sold 1,000, in total", "1,000", "last_number"),
        ("no numbers here", None, "none"),
    ],
)
def test_extract_answer(text: str, answer: str | None, rule: str) -> None:
    got = extract_answer(text)
    assert (got.answer, got.rule) == (answer, rule)


@pytest.mark.parametrize(
    "pred, gold, equal",
    [
        ("72", "72", True),
        ("72.0", "72", True),
        ("1,000", "1000", True),
        ("$1,000", "1000", True),
        ("\\$1,000", "1000", True),
        ("50%", "50", True),
        ("72 clips", "72", True),
        ("1/2", "0.5", True),
        ("-0", "0", True),
        ("\\frac{1}{2}", "0.5", True),
        ("x = 3", "3", True),
        ("1.5e3", "1500", True),
        ("30^\\circ", "30", True),
        ("3.01", "3", False),
        ("73", "72", False),
        ("\\dfrac{3}{4}", "\\frac{3}{4}", True),
        ("2\\sqrt{2}", "\\sqrt{8}", True),
        ("\\pi/2", "\\frac{\\pi}{2}", True),
        ("(1, 2)", "(1,2)", True),
        ("[1, 2)", "(1, 2)", False),
        ("(2,12) \\cup (12,102)", "(2,12)\\cup(12,102)", True),
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
        ("x^2+1", "1+x^2", True),
        ("x^2+2", "1+x^2", False),
        ("1e999999999", "72", False),
        ("10^{10^{10}}", "72", False),
        ("10080", "10,\\!080", True),  # LaTeX thousands separators (MATH-500 golds)
        ("32348", "\\$32,\\!348", True),
        ("11111111100", "11,\\! 111,\\! 111,\\! 100", True),
        ("1{,}000", "1000", True),
        ("10081", "10,\\!080", False),
        ("90°", "90^\\circ", True),
        ("72 ° F", "72", True),
        ("$2 million", "2000000", True),
        ("2 million", "2", False),
    ],
)
def test_answers_equivalent(pred: str, gold: str, equal: bool) -> None:
    eq = answers_equivalent(pred, gold, time.monotonic() + 10, DEFAULT_LIMITS)
    assert eq.equal is equal, eq


@pytest.mark.parametrize(
    "text, value",
    [("1,234.5", Fraction(2469, 2)), ("$-3", Fraction(-3)), ("2^{10}", Fraction(1024)), ("\\sqrt{16}", Fraction(4)),
     ("3\\frac{1}{4}", Fraction(13, 4)), ("\\frac{6}{4}", Fraction(3, 2)), ("pi", None), ("(1, 2)", None),
     ("10,\\!080", Fraction(10080)), ("\\$32,\\!348", Fraction(32348)), ("1,\\!2", None),
     ("\\text{73}", Fraction(73)), ("\\mathbf{-5}", Fraction(-5)), ("72°", Fraction(72)), ("\\text{(C)}", None),
     # a scale word multiplies, a unit (also with / or a power) is dropped
     ("2 million", Fraction(2_000_000)), ("$1.5 million", Fraction(1_500_000)), ("3 thousand dollars", Fraction(3000)),
     ("-2 billion", Fraction(-2 * 10**9)), ("2 millionaires", Fraction(2)), ("two million", None),
     ("2 hundred thousand", Fraction(200_000)), ("5 km/h", Fraction(5)), ("5 cm^2", Fraction(5)),
     ("9.8 m/s^2", Fraction(49, 5)), ("60 m/s", Fraction(60)), ("5 a.m.", Fraction(5)),
     ("2 x^2", None), ("3 a/b", None)],  # another lone letter with a power or a slash is algebra, not a unit
)
def test_parse_number(text: str, value: Fraction | None) -> None:
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["9**9**9**9", "10^{10^{10}}", "1e999999999", "(" * 100 + "1" + ")" * 100, "7" * 1000])
def test_parse_number_limits(text: str) -> None:
    with pytest.raises(LimitExceeded):
        parse_number(text)


@pytest.mark.parametrize(
    "text, oks",
    [
        ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.", [True]),
        ("Natalia sold 48/2 = <<48/2=25>>25 clips in May.", [False]),
        ("Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.", [True]),
        ("10/3 = 3.33", [True]),
        ("10/3 = 3.34", [True]),  # exact value needs more digits: floor and ceil both count
        ("10/3 = 3.35", [False]),
        ("48/2 = 24.5", [False]),  # 24 is exact at one decimal: no tolerance
        ("$12 x 3 = $36", [True]),
        ("$1,000 + $2,000 = $3,000", [True]),
        ("20% * 50 = 10", [True]),
        ("(3+4)*2 = 14", [True]),
        ("2^10 = 1024", [True]),
        ("12 ÷ 4 = 3 and 3 × 4 = 13", [True, False]),
        ("2 times 7 equals 14", [True]),
        ("$\\frac{1}{2} \\cdot 4 = 2$ and $\\sqrt{16} = 4$", [True, True]),
        ("$3 \\times 4 = 13$", [False]),
        ("$\\sqrt{2} = 1.41$", []),  # irrational: not checkable exactly
        ("2x + 3 = 7", []),
        ("x = 5", []),
        ("Week 2 = 35 + 35 = 70", [True]),
        ("Elsa had 40 marbles - 3 - 5 = 32 marbles.", [True]),
        ("23 total meters – 13 meters = 10 meters", [True]),
        ("1/4 cup + 1 and 1/4 cup = 1.5 cups", [True]),
        ("Kelly's weight is 100 - 15 = 85% of Megan's", [True]),
        ("he used 25 / 1/3 = 75 decorations", [True]),
        ("7 x 60 = 420 + 23 = 443", [True, True]),
        ("It is 6:00+48=6:48 PM", []),
        ("In five minutes, the cats meow 5*11=55 times.", [True]),  # "times." is a word, not an operator
        ("$1{,}000 \\times 3 = 3{,}000$", [True]),
    ],
)
def test_step_computations(text: str, oks: list[bool]) -> None:
    assert [c.ok for c in step_computations(Step(0, 0, text))] == oks


@pytest.mark.parametrize(
    "value, shown, decimals, ok",
    [
        (Fraction(10, 3), Fraction("3.33"), 2, True),
        (Fraction(10, 3), Fraction(3), 0, True),
        (Fraction(10, 3), Fraction(4), 0, True),
        (Fraction(10, 3), Fraction(5), 0, False),
        (Fraction(24), Fraction(25), 0, False),
        (Fraction(1, 8), Fraction("0.13"), 2, True),
    ],
)
def test_result_matches(value: Fraction, shown: Fraction, decimals: int, ok: bool) -> None:
    assert result_matches(value, shown, decimals) is ok


def test_split_steps() -> None:
    steps = split_steps("a = 1\n\n  \nb = 2\n#### 3")
    assert [(s.index, s.start, s.text) for s in steps] == [(0, 0, "a = 1"), (1, 10, "b = 2"), (2, 16, "#### 3")]


@pytest.mark.parametrize(
    "text, present",
    [("three hundred twenty-five", {325, 3, 20, 5}), ("a dozen eggs", {12, Fraction(1, 12)}), ("twice as many", {2}),
     ("half of them", {2, Fraction(1, 2)}), ("one thousand two hundred", {1200})],
)
def test_number_words(text: str, present: set[Fraction]) -> None:
    assert {Fraction(v) for v in present} <= number_words(text)


def test_question_quantities_and_grounding() -> None:
    known = question_quantities("It costs $1.50 and 20% off for 3 items.")
    # $1.50 -> 1.5 and 150 cents; 20% -> 0.2, 20, 1 - 0.2 and 1 + 0.2; 3 items
    assert {Fraction(x) for x in ("1.5", "150", "0.2", "20", "0.8", "1.2", "3")} <= known
    assert is_grounded(Fraction("3.33"), 2, {Fraction(10, 3)})
    assert not is_grounded(Fraction(4), 0, {Fraction(10, 3)})
    assert is_grounded(Fraction(-3), 0, {Fraction(3)})


def test_ungrounded_operand_counts_toward_logic() -> None:
    q = "Tom has 5 apples and buys 3 more. How many apples does he have?"
    v = verify("Tom has 5+17 = <<5+17=22>>22 apples.\n#### 22", "8", q)
    # checks: one computation + final-is-last-result = 2; breaks: 17 is ungrounded = 1
    assert v.profile.logic == pytest.approx(1 / 2)
    assert v.first_error_step == 0 and "ungrounded_operand" in v.flags
    assert verify("Tom has 5+3 = <<5+3=8>>8 apples.\n#### 8", "8", q).profile.logic == 0.0


@pytest.mark.parametrize(
    "question, solution, answer",
    [
        # the last equation cannot be checked (three unit words, two kinds of hats), yet it states the answer
        ("There are 15 green hats and 26 pink hats. Carl takes 4 pink hats and John 6 pink hats and 12 green "
         "hats. How many green and pink hats remain?",
         "26-4 = 22 and 22-6 = 16 pink hats remain.\n15-12 = 3 green hats remain.\n"
         "So 3 green hard hats + 16 pink hard hats = 19 hard hats remain.\n#### 19", "19"),
        # a chain that works out part of the computed side before going on: 46 is 2 * 23
        ("Joe caught the ball 23 times. Derek made four less than double the catches Joe did. How many did Derek "
         "catch?", "Derek caught the ball 2 * 23 - 4 = 46 - 4 = 42 times.\n#### 42", "42"),
        ("Joe caught the ball 23 times. Derek made four less than double the catches Joe did. How many did Derek "
         "catch?", "Derek caught the ball 2 * 23 - 4 = 42 times.\n#### 42", "42"),
    ],
)
def test_plain_chains_without_annotations_are_sound(question: str, solution: str, answer: str) -> None:
    v = verify(solution, answer, question)
    assert v.correct and v.profile.logic == 0 and v.first_error_step is None, v.flags


def test_uncheckable_last_equation_still_links_only_its_own_result() -> None:
    q = "There are 3 green hats and 16 pink hats. How many hats are there?"
    sol = "So 3 green hard hats + 16 pink hard hats = 19 hard hats.\n#### 20"
    v = verify("3+0 = 3 green.\n" + sol, "19", q)
    assert "final_not_last_result" in v.flags and v.first_error_step == 2
    # a number after `=` in a step before the last checked computation links nothing
    v = verify("3 green hard hats + 16 pink hard hats = 19 hard hats.\nSo 3+0 = 3.\n#### 19", "19", q)
    assert "final_not_last_result" in v.flags


def test_conflicting_values_count_toward_logic() -> None:
    sol = "Total = 5 + 3 = 8 apples.\nTotal = 9 apples.\nSo 8 + 1 = 9.\n#### 9"
    v = verify(sol, "9", "Tom has 5 apples and 3 pears, then finds 1 more. How many?")
    assert "conflicting_values" in v.flags and v.first_error_step == 1


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        (73, 72, math.log(1 + 1 / 72) / LN101),  # scale = |gold| = 72
        (-5000, 72, math.log(1 + 5072 / 72) / LN101),
        (3, 2, math.log(1 + 1 / 10) / LN101),  # scale = floor 10
        (72, 72, 0.0),
        (10**9, 72, 1.0),
        (None, 72, 1.0),
        (5, None, 1.0),
    ],
)
def test_numeric_distance(pred: int | None, gold: int | None, expected: float) -> None:
    p = None if pred is None else Fraction(pred)
    g = None if gold is None else Fraction(gold)
    assert numeric_distance(p, g, CFG) == pytest.approx(expected)


def test_magnitude_and_aggregates() -> None:
    assert magnitude_gap(Fraction(7200), Fraction(72)) == pytest.approx(2.0)
    p = ErrorProfile(answer=1, numeric=0.003, arithmetic=0, logic=0.5)
    assert wrongness(p, CFG) == pytest.approx(0.5 + 0.2 * 0.003 + 0.15 * 0.5)
    q = ErrorProfile(format=0.5, implausibility=1, numeric=0.925)
    assert absurdity(q, CFG) == pytest.approx(0.3 * 0.5 + 0.5 + 0.2 * 0.925)


@pytest.mark.parametrize(
    "correct, numeric, absurd, error_steps, hard",
    [
        (False, 0.05, 0.1, 0, True),  # near in value
        (False, 0.5, 0.1, 1, True),  # far, but one localised step error
        (False, 0.5, 0.1, 2, False),
        (False, 0.05, 0.3, 0, False),  # too absurd
        (True, 0.0, 0.0, 0, False),  # correct is never a negative
    ],
)
def test_hard_negative_rule(correct: bool, numeric: float, absurd: float, error_steps: int, hard: bool) -> None:
    profile = ErrorProfile(answer=0.0 if correct else 1.0, numeric=numeric)
    assert is_hard_negative(correct, True, profile, absurd, error_steps, CFG) is hard


def test_a_right_answer_cut_at_the_token_limit_is_no_hard_negative_at_any_tau() -> None:
    """Not correct (require_complete), but its answer is right: never a near miss, even where τ_A
    lets its truncation's absurdity through."""
    text = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether 48+24 = <<48+24=72>>72 clips.\n#### 72\nIn June she"
    for tau in (0.25, 0.5, 1.0):
        cfg = VerifierConfig(tau_absurdity=tau)
        v = verify(text, "72", QUESTION, finish_reason="length", cfg=cfg)
        assert not v.correct and v.profile.answer == 0 and not v.hard_negative, tau
        near = verify(text.replace("48+24 = <<48+24=72>>72", "48+24 = <<48+24=73>>73").replace("#### 72", "#### 73"),
                      "72", QUESTION, cfg=cfg)
        assert near.hard_negative, tau


def test_worked_example_correct() -> None:
    v = verify(GOLD, "72", QUESTION)
    assert v.correct and v.pred_answer == "72" and v.num_steps == 3 and v.answer_rule == "hash"
    assert v.profile == ErrorProfile() and v.wrongness == 0 and v.absurdity == 0
    assert not v.hard_negative and v.first_error_step is None and v.flags == ()


def test_worked_example_near_miss() -> None:
    sol = GOLD.replace("48+24=72>>72", "48+24=73>>73").replace("#### 72", "#### 73")
    v = verify(sol, "72", QUESTION)
    numeric = math.log(1 + 1 / 72) / LN101
    assert not v.correct and v.hard_negative and v.first_error_step == 1
    assert v.profile.as_tuple() == pytest.approx((1, numeric, 0.5, 0, 0, 0))
    assert v.wrongness == pytest.approx(0.5 + 0.2 * numeric + 0.15 * 0.5)
    assert v.absurdity == pytest.approx(0.2 * numeric)


def test_worked_example_absurd() -> None:
    v = verify(GOLD.replace("#### 72", "#### -5000"), "72", QUESTION)
    numeric = math.log(1 + 5072 / 72) / LN101
    assert not v.correct and not v.hard_negative and v.first_error_step == 2
    assert v.profile.as_tuple() == pytest.approx((1, numeric, 0, 1 / 3, 0, 1))
    assert v.wrongness == pytest.approx(0.5 + 0.2 * numeric + 0.15 / 3)
    assert v.absurdity == pytest.approx(0.5 + 0.2 * numeric)
    assert {"final_not_last_result", "wrong_sign"} <= set(v.flags)


@pytest.mark.parametrize(
    "text, finish_reason, flag, score",
    [
        ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+", None, "truncated", 1.0),
        (GOLD, "length", "truncated", 1.0),
        ("Natalia sold 72 clips.", None, "no_answer_marker", 0.5),
        ("Natalia sold many clips.", None, "no_answer", 1.0),
        ("The answer is \\boxed{70}.\n#### 72", None, "conflicting_answers", 0.5),
        ("**Answer:** 70\n#### 72", None, "conflicting_answers", 0.5),
    ],
)
def test_format(text: str, finish_reason: str | None, flag: str, score: float) -> None:
    v = verify(text, "72", QUESTION, finish_reason=finish_reason)
    assert flag in v.flags and v.profile.format == score


def test_answer_line_is_a_marker() -> None:
    # `Answer: 72` is read through a marker, not the last-number fallback: no format penalty, and
    # the number inside a remark after the answer is not the answer.
    for text in ("Natalia sold 48+24 = 72 clips.\nAnswer: 72",
                 "So 3 * 24 = 72.\n**Answer:** 72 apples (3 boxes of 24)"):
        v = verify(text, "72", QUESTION)
        assert v.correct and v.pred_answer == "72", v
        assert v.profile.format == 0 and "no_answer_marker" not in v.flags and "truncated" not in v.flags
    v = verify("Final Answer: $\\frac{3}{4}$", "0.75")
    assert v.correct and v.pred_answer == "\\frac{3}{4}" and v.profile.format == 0


def test_answer_line_conflicting_with_hash() -> None:
    # `####` wins, and the differing `Answer:` line is a second marked answer.
    text = "Answer: 3\n#### 4"
    assert (extract_answer(text).answer, extract_answer(text).rule) == ("4", "hash")
    assert sorted(answer_candidates(text)) == ["3", "4"]
    v = verify(text, "4")
    assert v.correct and "conflicting_answers" in v.flags and v.profile.format == 0.5
    # `The answer is` wins over an `Answer:` line too; the same answer twice is no conflict.
    v = verify("The answer is 4.\nAnswer: 3", "4")
    assert v.pred_answer == "4" and "conflicting_answers" in v.flags
    assert "conflicting_answers" not in verify("The answer is 4.\nAnswer: 4", "4").flags


def test_answer_line_with_prose_states_no_answer() -> None:
    # A solution that opens with the prompt's own label (`Question: ...\nAnswer: `) and then
    # reasons: `First, we compute ...` is no answer, neither final nor a conflicting candidate.
    opening = "Answer: First, we compute 3 + 4 = 7 boxes.\nThen 7 - 2 = 5.\n"
    text = opening + "The answer is 5"
    assert (extract_answer(text).answer, extract_answer(text).rule) == ("5", "answer_is")
    assert answer_candidates(text) == ["5"]
    v = verify(text, "5")
    assert v.correct and "conflicting_answers" not in v.flags
    text = opening + "**Answer:** 5"
    assert (extract_answer(text).answer, extract_answer(text).rule) == ("5", "answer_line")
    assert answer_candidates(text) == ["5"]
    assert verify(text, "5").profile.format == 0
    # Prose after the label, even one that opens with a number, and a label inside a sentence
    # are no marker: the later `Answer:` line is the answer.
    for prose in ("Answer: We have:", "Answer: Let's think step by step.", "Answer: 3 boxes of 24 apples make 72.",
                  "The Answer: 3 comes later."):
        text = prose + "\n3 + 2 = 5\nAnswer: 5"
        assert (extract_answer(text).answer, extract_answer(text).rule) == ("5", "answer_line"), prose
        assert answer_candidates(text) == ["5"], prose


def test_length_cut_is_never_correct() -> None:
    assert not verify(GOLD, "72", QUESTION, finish_reason="length").correct
    assert verify(GOLD, "72", QUESTION, finish_reason="length", cfg=VerifierConfig(require_complete=False)).correct


@pytest.mark.parametrize(
    "pred, component",
    [("-72", "wrong_sign"), ("72.5", "fraction"), ("720000", "magnitude")],
)
def test_implausibility_components(pred: str, component: str) -> None:
    v = verify(f"So it is {pred}.\n#### {pred}", "72", QUESTION)
    assert component in v.flags and v.profile.implausibility > 0


def test_degenerate_repetition_and_runaway_length() -> None:
    loop = "She sold the clips and then she sold the clips again. " * 200 + "#### 72"
    v = verify(loop, "72", QUESTION)
    assert v.correct and "repetition" in v.flags and "length" in v.flags and v.profile.implausibility == 1.0


def test_config_is_strict_and_validated() -> None:
    with pytest.raises(ValidationError):
        VerifierConfig(tau_absurdity=0.2, unknown_key=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        VerifierConfig(magnitude_orders_start=3, magnitude_orders_full=2)
    with pytest.raises(ValidationError):
        VerifierConfig(timeout_s="soon")  # type: ignore[arg-type]
    for name, field in VerifierConfig.model_fields.items():
        assert field.description, f"{name} needs a description"


def test_verify_rejects_non_string_arguments() -> None:
    with pytest.raises(TypeError):
        verify(None, "72")  # type: ignore[arg-type]


def test_docs_list_every_config_field() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "verifier.md").read_text()
    cfg = VerifierConfig()
    for name in VerifierConfig.model_fields:
        default = getattr(cfg, name)
        row = f"| `{name}` | " + ("" if isinstance(default, list) else f"{default} |")
        assert row in doc, f"docs/verifier.md: no row for {name} with default {default}"


@pytest.mark.parametrize("text, rule", [
    ("48/2 = 24\n#### 72", "hash"), ("So the answer is: 72", "answer_is"), ("**Answer:** 72", "answer_line"),
    ("We get $\\boxed{72}$.", "boxed"), ("She sold 72 clips", "last_number"), ("no idea", "none"),
])
def test_the_verdict_names_the_rule_that_found_the_answer(text: str, rule: str) -> None:
    from hsdpo.verifier.batch import VerifyBatch

    assert verify(text, "72", QUESTION).answer_rule == rule
    out = VerifyBatch()({"completion": np.array([text], dtype=object), "gold_answer": np.array(["72"], dtype=object)})
    assert list(out["answer_rule"]) == [rule]


@pytest.mark.parametrize("answer, flag, implausibility", [
    ("1e999999", "magnitude", 1.0),  # too large to evaluate: off by orders of magnitude
    ("10^{10^{10}}", "magnitude", 1.0),
    ("x", "wrong_kind", CFG.i_kind),  # no numeric value where the gold is a number
    ("\\infty", "wrong_kind", CFG.i_kind),
])
def test_an_answer_with_no_value_against_a_numeric_gold_is_implausible_not_a_hard_negative(
        answer: str, flag: str, implausibility: float) -> None:
    """One slipped step, then a final answer the evaluator gives no value: without these components
    its absurdity was the numeric part alone (0.2 <= tau_A), and it was mined as a hard negative."""
    slip = GOLD.replace("<<48+24=72>>72", "<<48+24=73>>73").rsplit("#### ", 1)[0] + "#### " + answer
    v = verify(slip, "72", QUESTION)
    assert not v.correct and flag in v.flags and v.profile.implausibility == implausibility
    assert v.absurdity > CFG.tau_absurdity and not v.hard_negative
    near = verify(slip.rsplit("#### ", 1)[0] + "#### 73", "72", QUESTION)
    assert near.hard_negative and "wrong_kind" not in near.flags  # the same slip with a number stays one
    assert "wrong_kind" not in verify("The answer is 5 \\text{ cm}^2", "5").flags  # right: no implausibility part
