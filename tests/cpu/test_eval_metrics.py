"""Eval arithmetic on hand-made verdicts; every expectation is worked out by hand in the comments."""

from __future__ import annotations

import pytest

from hsdpo.config import ConfigError, config_from_dict
from hsdpo.eval.metrics import (
    error_profile,
    format_comparison,
    majority_correct,
    near_miss_ids,
    pass_at_k,
    sampled_metrics,
    summarize,
)

# Five held-out problems: two sources, one or two steps.
PROBLEMS = [
    {"problem_id": "p1", "source": "synthetic", "num_steps": 1},
    {"problem_id": "p2", "source": "synthetic", "num_steps": 2},
    {"problem_id": "p3", "source": "synthetic", "num_steps": 2},
    {"problem_id": "p4", "source": "gsm8k", "num_steps": 1},
    {"problem_id": "p5", "source": "gsm8k", "num_steps": 2},
]


def g(pid: str, correct: bool, hard: bool = False, **err: float) -> dict:
    """A greedy verdict row; unspecified error dimensions are 0."""
    row = {"problem_id": pid, "mode": "greedy", "correct": correct, "hard_negative": hard,
           "pred_answer": "x", "wrongness": err.pop("wrongness", 0.0), "absurdity": err.pop("absurdity", 0.0)}
    for d in ("answer", "numeric", "arithmetic", "logic", "format", "implausibility"):
        row[f"err_{d}"] = err.get(d, 0.0)
    return row


def s(pid: str, answer: str | None, correct: bool) -> dict:
    return {"problem_id": pid, "mode": "sample", "pred_answer": answer, "correct": correct}


# sft: right on p1, p4; wrong on p2 (hard negative), p3 (hard negative), p5 (not hard).
SFT = [g("p1", True), g("p2", False, True, answer=1, numeric=0.1), g("p3", False, True, answer=1, numeric=0.2),
       g("p4", True), g("p5", False, False, answer=1, numeric=1, format=1)]
# dpo: right on p1, p2, p4, p5; wrong on p3 (not hard); no row for... (all five present)
DPO = [g("p1", True), g("p2", True), g("p3", False, answer=1, numeric=1), g("p4", True), g("p5", True)]


def test_summary_accuracy_and_subsets():
    summary = summarize({"sft": SFT, "dpo": DPO}, PROBLEMS, near_miss_ref="sft")
    sft, dpo = summary["models"]["sft"], summary["models"]["dpo"]
    # near-miss = sft's wrong hard negatives = {p2, p3}
    assert summary["near_miss"] == {"ref": "sft", "n": 2}
    table = [
        # (model, overall, synthetic(p1,p2,p3), gsm8k(p4,p5), 1 step(p1,p4), 2 steps(p2,p3,p5), near-miss(p2,p3))
        (sft, 2 / 5, 1 / 3, 1 / 2, 2 / 2, 0 / 3, 0 / 2),
        (dpo, 4 / 5, 2 / 3, 2 / 2, 2 / 2, 2 / 3, 1 / 2),
    ]
    for m, overall, synth, gsm, one, two, near in table:
        assert m["accuracy"] == pytest.approx(overall)
        assert m["n"] == 5 and m["missing"] == 0
        assert m["by_source"]["synthetic"]["accuracy"] == pytest.approx(synth)
        assert m["by_source"]["gsm8k"]["accuracy"] == pytest.approx(gsm)
        assert m["by_steps"]["1"]["accuracy"] == pytest.approx(one)
        assert m["by_steps"]["2"]["accuracy"] == pytest.approx(two)
        assert m["near_miss"]["accuracy"] == pytest.approx(near) and m["near_miss"]["n"] == 2
    assert sft["by_source"]["synthetic"] == {"accuracy": pytest.approx(1 / 3), "n": 3, "correct": 1}


def test_missing_greedy_row_counts_as_wrong():
    rows = [g("p1", True), g("p2", True)]  # p3..p5 missing
    m = summarize({"m": rows}, PROBLEMS)["models"]["m"]
    assert (m["accuracy"], m["n"], m["missing"]) == (pytest.approx(2 / 5), 5, 3)
    assert "near_miss" not in m  # no reference model


def test_an_undecided_greedy_answer_counts_as_wrong_and_as_undecided():
    # p2: the symbolic check timed out (flags as the sample stage stores them); p3: verifier error;
    # p4: wrong and decided; p5: a timeout flag on a right answer is no undecided one
    rows = [g("p1", True), {**g("p2", False), "flags": "symbolic_timeout"}, {**g("p3", False), "flags": ["verifier_error"]},
            {**g("p4", False), "flags": "arithmetic_error"}, {**g("p5", True), "flags": "symbolic_timeout"}]
    m = summarize({"m": rows}, PROBLEMS)["models"]["m"]
    assert (m["accuracy"], m["undecided"], m["missing"]) == (pytest.approx(2 / 5), 2, 0)
    assert summarize({"sft": SFT}, PROBLEMS)["models"]["sft"]["undecided"] == 0


def test_near_miss_ref_absent_gives_no_subset():
    summary = summarize({"dpo": DPO}, PROBLEMS, near_miss_ref="sft")
    assert summary["near_miss"] == {"ref": None, "n": 0}


@pytest.mark.parametrize(
    "rows, expected",
    [
        ([g("a", False, True), g("b", False, False), g("c", True, True)], {"a"}),  # c is correct: not a negative
        ([g("a", True)], set()),
    ],
)
def test_near_miss_ids(rows, expected):
    assert near_miss_ids(rows) == expected


def test_error_profile_of_wrong_answers():
    ep = error_profile(SFT)
    # wrong: p2 (answer 1, numeric .1), p3 (answer 1, numeric .2), p5 (answer 1, numeric 1, format 1)
    assert ep["n_wrong"] == 3
    assert ep["mean"]["answer"] == pytest.approx(1.0)
    assert ep["mean"]["numeric"] == pytest.approx((0.1 + 0.2 + 1) / 3)
    assert ep["mean"]["format"] == pytest.approx(1 / 3)
    assert ep["present"]["format"] == pytest.approx(1 / 3)
    assert ep["present"]["arithmetic"] == 0.0
    assert ep["hard_negative"] == pytest.approx(2 / 3)
    assert error_profile([g("a", True)]) == {"n_wrong": 0}


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (4, 0, 1, 0.0),
        (4, 1, 1, 0.25),          # 1 - C(3,1)/C(4,1) = 1 - 3/4
        (4, 1, 2, 0.5),           # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (4, 2, 2, 5 / 6),         # 1 - C(2,2)/C(4,2) = 1 - 1/6
        (4, 3, 2, 1.0),           # n - c = 1 < k
        (8, 8, 8, 1.0),
    ],
)
def test_pass_at_k(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_needs_k_samples():
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 4)


@pytest.mark.parametrize("overrides", [["eval.pass_k=[-1]"], ["eval.pass_k=[1, 0]"], ["eval.temperature=inf"]])
def test_bad_eval_settings_are_one_line_config_errors(overrides):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"eval": {"n": 4}}, overrides)
    assert " at eval." in str(err.value) and "\n" not in str(err.value)
    assert config_from_dict({}, ["eval.pass_k=[1, 4]"]).eval.pass_k == [1, 4]


def test_pass_k_written_out_must_fit_n():
    """A k above n is refused at load, not dropped from summary.json; the default [1, 4, 8] reports
    the k a smaller n allows, and n = 0 (greedy only) reports none."""
    with pytest.raises(ConfigError, match="pass_k 8 needs at least 8 samples a problem; n is 4"):
        config_from_dict({"eval": {"n": 4}}, ["eval.pass_k=[1, 8]"])
    with pytest.raises(ConfigError, match="pass_k 8"):  # the order the settings come in does not matter
        config_from_dict({"eval": {"pass_k": [1, 8]}}, ["eval.n=4"])
    assert config_from_dict({"eval": {"n": 4}}).eval.pass_k == [1, 4, 8]
    assert config_from_dict({"eval": {"n": 8, "pass_k": [1, 8]}}).eval.pass_k == [1, 8]
    assert config_from_dict({"eval": {"pass_k": [1, 8]}}).eval.n == 0


@pytest.mark.parametrize(
    "samples, expected",
    [
        ([("5", True), ("6", False), ("5", True)], True),    # 5 wins 2:1
        ([("6", False), ("5", True), ("6", False)], False),  # 6 wins 2:1
        ([("6", False), ("5", True)], False),                # tie: first seen (6) wins
        ([("5", True), ("6", False)], True),
        ([(None, False), (None, False)], False),             # no answers at all
        ([(None, False), ("5", True)], True),                # missing answers do not vote
    ],
)
def test_majority_correct(samples, expected):
    assert majority_correct([s("p", a, c) for a, c in samples]) is expected


@pytest.mark.parametrize(
    "samples, expected",
    [
        # 1000 in three spellings outvotes 7 twice (read as strings, 7 would win 2:1:1:1)
        ([("7", False), ("7", False), ("1,000", True), ("$1000", True), ("1000", True)], True),
        ([("x+1", False), ("x + 1", False), ("2", True)], False),  # spaces do not split a text answer
        ([("", False), ("", False), ("5", True)], True),           # a verifier error's empty answer does not vote
    ],
)
def test_majority_votes_by_value_not_spelling(samples, expected):
    assert majority_correct([s("p", a, c) for a, c in samples]) is expected


def test_majority_tie_goes_to_the_lowest_sample_id_whatever_the_row_order():
    """Rows come back from Parquet in whatever order Ray Data wrote their blocks."""
    rows = [{**s("p", "6", False), "sample_id": 1}, {**s("p", "5", True), "sample_id": 0}]
    assert majority_correct(rows) is True and majority_correct(rows[::-1]) is True


def test_near_miss_subset_comes_from_the_reference_greedy_answers_only():
    """Sampled rows (eval.n > 0) neither widen the subset nor change the accuracies on it."""
    sampled = [s("p1", "7", False), s("p4", "7", False)]
    for r in sampled:
        r["hard_negative"] = True  # wrong, hard: p1 and p4 are right greedily
    plain = summarize({"sft": SFT, "dpo": DPO}, PROBLEMS, near_miss_ref="sft")
    more = summarize({"sft": SFT + sampled, "dpo": DPO}, PROBLEMS, near_miss_ref="sft")
    assert more["near_miss"] == plain["near_miss"] == {"ref": "sft", "n": 2}
    assert more["models"]["sft"]["near_miss"] == plain["models"]["sft"]["near_miss"] == {
        "accuracy": 0.0, "n": 2, "correct": 0}
    assert near_miss_ids(SFT + sampled) == {"p2", "p3"}


def test_sampled_metrics():
    rows = [s("p1", "3", True), s("p1", "3", True), s("p1", "4", False), s("p1", "4", False),
            s("p2", "7", False), s("p2", "8", False), s("p2", "9", True), s("p2", "7", False)]
    out = sampled_metrics(rows + SFT, ["p1", "p2"], [1, 2, 8])
    # p1: n=4, c=2 -> pass@1 .5, pass@2 5/6; p2: n=4, c=1 -> pass@1 .25, pass@2 .5
    assert out["samples_per_problem"] == 4
    assert out["pass@1"] == pytest.approx((0.5 + 0.25) / 2)
    assert out["pass@2"] == pytest.approx((5 / 6 + 0.5) / 2)
    assert "pass@8" not in out  # k > samples per problem
    # majority: p1 tie 3:4 2:2, 3 first -> correct; p2 7 wins -> wrong
    assert out["majority"] == pytest.approx(0.5)
    assert sampled_metrics(SFT, ["p1"], [1]) == {}


def test_comparison_table_lists_models_in_order():
    text = format_comparison(summarize({"sft": SFT, "dpo": DPO}, PROBLEMS, near_miss_ref="sft"))
    lines = text.splitlines()
    assert lines[2].startswith("| sft | 40.0% | 0.0% (n=2) | 67% | 5 |")
    assert lines[3].startswith("| dpo | 80.0% | 50.0% (n=2) | 0% | 5 |")
