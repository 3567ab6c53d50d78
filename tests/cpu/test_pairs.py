"""Pair selection, kinds, gold fallback and weights, table-driven against hand-computed cases; and
the `pairs` stage on a hand-made samples table (no model, no Ray)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from hsdpo.config import ConfigError, InputError, config_from_dict, with_overrides
from hsdpo.pairs import PairsConfig, first_error_cut, normalise, raw_weight, select_pairs
from hsdpo.pairs_stage import run_pairs
from hsdpo.rundir import RunDir, StageResult
from hsdpo.stage import read_rows, write_rows


def s(sid: int, correct: bool, text: str | None = None, *, wrong: float = 0.5, absurd: float = 0.0,
      numeric: float = 0.0, hard: bool = False, error: str = "") -> dict:
    """A verified sample of problem p1."""
    return {"problem_id": "p1", "sample_id": sid, "prompt": "Question: q\nAnswer: ", "completion": text or f"sol {sid}",
            "gold_solution": "gold steps\n#### 4", "gold_answer": "4", "correct": correct,
            "wrongness": 0.0 if correct else wrong, "absurdity": absurd, "err_numeric": numeric,
            "hard_negative": hard, "error": error, "pred_answer": "4" if correct else "5", "flags": "",
            "first_error_step": -1, "num_steps": 1}


CFG = PairsConfig(pairs_per_problem=2)
# (case, samples, config, expected [(chosen sample_id, rejected sample_id, kind)], expected reason)
CASES = [
    ("hard negatives first, then easy, nearest first",
     [s(0, True), s(1, False, wrong=0.6), s(2, False, wrong=0.3, hard=True), s(3, False, wrong=0.2)],
     PairsConfig(pairs_per_problem=3), [(0, 2, "hard"), (0, 3, "easy"), (0, 1, "easy")], None),
    ("a right answer cut at the token limit comes after every wrong answer",
     [s(0, True), {**s(1, False, wrong=0.6), "err_answer": 1.0},
      {**s(2, False, wrong=0.0, absurd=0.3), "err_answer": 0.0, "pred_answer": "4"}, {**s(3, False, wrong=0.9), "err_answer": 1.0}],
     PairsConfig(pairs_per_problem=2), [(0, 1, "easy"), (0, 3, "easy")], None),
    ("chosen = lowest wrongness, then shortest",
     [s(0, True, "a much longer solution"), s(1, True, "short"), s(2, False, hard=True)] + [
         {**s(3, True, "tiny"), "wrongness": 0.1}],
     CFG, [(1, 2, "hard")], None),
    ("capped at pairs_per_problem",
     [s(0, True), s(1, False, hard=True), s(2, False, hard=True, wrong=0.4), s(3, False)],
     CFG, [(0, 2, "hard"), (0, 1, "hard")], None),
    ("identical wrong completions count once",
     [s(0, True), s(1, False, "same"), s(2, False, "same"), s(3, False, "other", wrong=0.9)],
     CFG, [(0, 1, "easy"), (0, 3, "easy")], None),
    ("wrong completions that differ only in leading or trailing whitespace count once",
     [s(0, True), s(1, False, "same"), s(2, False, "  same\n"), s(3, False, "other", wrong=0.9)],
     CFG, [(0, 1, "easy"), (0, 3, "easy")], None),
    ("gold fallback when none is correct",
     [s(0, False, hard=True), s(1, False)], CFG, [(-1, 0, "gold"), (-1, 1, "gold")], None),
    ("no gold fallback when switched off",
     [s(0, False), s(1, False)], PairsConfig(use_gold=False), [], "all_wrong_no_gold"),
    ("all correct", [s(0, True), s(1, True)], CFG, [], "all_correct"),
    ("errored rows are unusable", [s(0, True, error="boom"), s(1, False, error="boom")], CFG, [], "no_usable_samples"),
    ("an errored correct row is not chosen",
     [s(0, True, error="gen failed"), s(1, False)], CFG, [(-1, 1, "gold")], None),
    ("a verifier-error row is no negative",
     [s(0, True), {**s(1, False, wrong=0.1), "flags": "verifier_error"}, s(2, False, wrong=0.9)], CFG,
     [(0, 2, "easy")], None),
    ("an undecided symbolic check is no negative",
     [s(0, True), {**s(1, False), "flags": "symbolic_timeout"}], CFG, [], "all_correct"),
    ("a non-finite score is no negative",
     [s(0, True), s(1, False, absurd=math.nan, hard=True), s(2, False, numeric=math.inf), s(3, False)], CFG,
     [(0, 3, "easy")], None),
    ("a non-finite wrongness is not chosen",
     [{**s(0, True), "wrongness": math.nan}, s(1, False)], CFG, [(-1, 1, "gold")], None),
    ("a negative with the chosen text is skipped",
     [s(0, True, "same"), s(1, False, "same \n", wrong=0.1), s(2, False)], CFG, [(0, 2, "easy")], None),
    ("a negative with the gold text is skipped",
     [s(0, False, "gold steps\n#### 4"), s(1, False)], CFG, [(-1, 1, "gold")], None),
    ("every negative is the chosen text",
     [s(0, True, "same"), s(1, False, "same")], CFG, [], "no_distinct_negative"),
    ("unverified rows are unusable",
     [{k: v for k, v in s(0, True).items() if k != "correct"}], CFG, [], "no_usable_samples"),
]


@pytest.mark.parametrize("case,samples,cfg,expected,reason", CASES, ids=[c[0] for c in CASES])
def test_select_pairs(case, samples, cfg, expected, reason):
    got = select_pairs(samples[0], samples, cfg)
    assert [(p.chosen["sample_id"], p.rejected["sample_id"], p.kind) for p in got.pairs] == expected
    assert got.reason == reason


def test_excluded_samples_carry_their_reason():
    samples = [s(0, True, "same"), s(1, False, error="gen failed"), {**s(2, False), "flags": "timeout,verifier_error"},
               {**s(3, False), "flags": ["symbolic_error"]}, {**s(4, False), "completion": "  "},
               {k: v for k, v in s(5, False).items() if k != "correct"}, s(6, False, absurd=math.nan),
               {**s(7, False), "err_numeric": None}, s(8, False, "same"), s(9, False)]
    got = select_pairs(samples[0], samples, CFG)
    assert [(p.chosen["sample_id"], p.rejected["sample_id"]) for p in got.pairs] == [(0, 9)]
    assert [(r["sample_id"], why) for r, why in got.excluded] == [
        (1, "error"), (2, "verifier_error"), (3, "verifier_undecided"), (4, "empty_completion"), (5, "not_verified"),
        (6, "non_finite_score"), (7, "non_finite_score"), (8, "same_as_chosen")]
    assert select_pairs(samples[0], samples[1:3], CFG).excluded == [(samples[1], "error"), (samples[2], "verifier_error")]


def test_gold_chosen_is_the_gold_solution():
    got = select_pairs(s(0, False), [s(0, False)], CFG)
    assert got.pairs[0].chosen["completion"] == "gold steps\n#### 4" and got.pairs[0].chosen["correct"] is True


# w = clip(1 + λ(1 − a)(1 − n), w_min, w_max), hand-computed:
WEIGHTS = [
    (dict(), 0.0, 0.0, 2.0),                       # 1 + 1·1·1
    (dict(), 0.5, 0.0, 1.5),                       # 1 + 1·0.5·1
    (dict(), 0.5, 0.5, 1.25),                      # 1 + 1·0.5·0.5
    (dict(), 1.0, 0.0, 1.0),                       # absurd: no bonus
    (dict(lam=4.0), 0.0, 0.0, 3.0),                # 5 clipped to w_max 3
    (dict(lam=2.0), 0.25, 0.2, 2.2),               # 1 + 2·0.75·0.8
    (dict(lam=0.0, w_min=1.5), 0.0, 0.0, 1.5),     # 1 clipped up to w_min
    (dict(weighting="uniform", lam=4.0), 0.0, 0.0, 1.0),
]


@pytest.mark.parametrize("overrides,absurdity,numeric,expected", WEIGHTS)
def test_raw_weight(overrides, absurdity, numeric, expected):
    cfg = PairsConfig(**overrides)
    assert raw_weight({"absurdity": absurdity, "err_numeric": numeric}, cfg) == pytest.approx(expected)


def test_raw_weight_refuses_a_non_finite_score():
    for absurdity, numeric in ((math.nan, 0.0), (0.0, math.nan), (math.inf, 0.0)):
        with pytest.raises(ValueError, match="non-finite"):
            raw_weight({"absurdity": absurdity, "err_numeric": numeric}, PairsConfig())
    assert raw_weight({"absurdity": math.nan, "err_numeric": 0.0}, PairsConfig(weighting="uniform")) == 1.0


@pytest.mark.parametrize("key", ["lam", "w_min", "w_max"])
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_non_finite_weight_settings_are_config_errors(key, value):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"pairs": {key: value}})
    assert f"pairs.{key}" in str(err.value) and "\n" not in str(err.value)


def test_normalise_to_mean_one():
    assert normalise([2.0, 1.0, 1.0]) == pytest.approx([1.5, 0.75, 0.75])
    assert normalise([1.0, 1.0]) == [1.0, 1.0] and normalise([]) == []


def test_random_negatives_draw_from_all_wrong_samples():
    samples = [s(0, True)] + [s(i, False, hard=i <= 2, wrong=i / 10) for i in range(1, 9)]
    cfg = PairsConfig(negatives="random", pairs_per_problem=2)
    drawn = set()
    for seed in range(60):
        got = select_pairs(samples[0], samples, cfg, seed=seed)
        assert len(got.pairs) == 2
        for p in got.pairs:
            assert p.kind == ("hard" if p.rejected["hard_negative"] else "easy")
            drawn.add(p.rejected["sample_id"])
    assert drawn == set(range(1, 9))  # easy ones too, not only the two hard negatives
    again = [p.rejected["sample_id"] for p in select_pairs(samples[0], samples, cfg, seed=3).pairs]
    assert again == [p.rejected["sample_id"] for p in select_pairs(samples[0], samples, cfg, seed=3).pairs]
    hard_only = {p.rejected["sample_id"] for p in select_pairs(samples[0], samples, PairsConfig()).pairs}
    assert hard_only == {1, 2}
    # a wrong text sampled twice is one negative in both modes: never the same pair twice
    twice = [s(0, True), s(1, False, "7 #### 5"), s(2, False, "7 #### 5"), s(3, False, "8 #### 5")]
    for seed in range(20):
        texts = [p.rejected["completion"] for p in select_pairs(twice[0], twice, cfg, seed=seed).pairs]
        assert sorted(texts) == ["7 #### 5", "8 #### 5"]


CHOSEN = "27-5 = <<27-5=22>>22\n22*2 = <<22*2=44>>44\n#### 44"
# (case, rejected, first_error_step, expected cut; None = kept whole)
CUTS = [
    ("slip in the result: cut after the wrong number", "27-5 = <<27-5=23>>23\n23*2 = <<23*2=46>>46\n#### 46", 0,
     "27-5 = <<27-5=23"),
    ("slip in a later step", "27-5 = <<27-5=22>>22\n22*2 = <<22*2=45>>45\n#### 45", 1,
     "27-5 = <<27-5=22>>22\n22*2 = <<22*2=45"),
    ("longer wrong number kept whole", "27-5 = <<27-5=227>>227\n#### 227", 0, "27-5 = <<27-5=227"),
    ("another computation: the whole wrong step", "5-27 = <<5-27=3>>3\n#### 3", 0, "5-27 = <<5-27=3>>3"),
    ("prose step parting before the =", "He pays 3*5 = $15.\n#### 15", 0, "He pays 3*5 = $15."),
    ("no located step error", "27-5 = <<27-5=22>>22\n22*2 = <<22*2=44>>44\n#### 45", -1, None),
    ("step index out of range", "27-5 = <<27-5=23>>23", 4, None),
    ("error in the last step: nothing to cut", "27-5 = <<27-5=22>>22\n#### 21", 1, None),
]


@pytest.mark.parametrize("case,rejected,step,expected", CUTS, ids=[c[0] for c in CUTS])
def test_first_error_cut(case, rejected, step, expected):
    assert first_error_cut(rejected, CHOSEN, step) == expected


def test_rejected_span_first_error_cuts_only_located_errors():
    samples = [s(0, True, CHOSEN), {**s(1, False, "27-5 = <<27-5=23>>23\n#### 23", hard=True), "first_error_step": 0},
               {**s(2, False, "27-5 = <<27-5=22>>22\n#### 21", wrong=0.9), "first_error_step": None}]
    full = select_pairs(samples[0], samples, PairsConfig())
    assert [p.rejected_cut for p in full.pairs] == [False, False]
    got = select_pairs(samples[0], samples, PairsConfig(rejected_span="first_error"))
    assert [(p.rejected["sample_id"], p.rejected_text) for p in got.pairs] == [(1, "27-5 = <<27-5=23"), (2, None)]


def test_a_cut_rejected_is_encoded_without_eos(tiny_model_dir):
    from transformers import AutoTokenizer

    from hsdpo.train.tokenize import pair_examples

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    row = {"prompt": "Question: q\nAnswer: ", "chosen": CHOSEN, "rejected": "27-5 = <<27-5=23"}
    for flag, eos in ((True, False), (False, True), (None, True), (float("nan"), True)):
        (chosen, rejected), = pair_examples(tok, [{**row, "rejected_cut": flag}], 128)
        assert chosen.input_ids[-1] == tok.eos_token_id
        assert (rejected.input_ids[-1] == tok.eos_token_id) is eos, flag


def _stage_cfg(tmp_path, **pairs):
    cfg = config_from_dict({"run_dir": str(tmp_path / "run"), "pairs": {"pairs_per_problem": 2, **pairs}})
    rd = RunDir(cfg.run_dir)
    out = rd.reset("samples")
    rows = [{**r, "problem_id": pid} for pid, group in [
        ("a", [s(0, True), s(1, False, hard=True, absurd=0.0, numeric=0.0), s(2, False, absurd=1.0)]),  # w 2, 1
        ("b", [s(0, False, absurd=0.5)]),                                                                # gold, w 1.5
        ("c", [s(0, True), s(1, True)]),                                                                 # all correct
    ] for r in group]
    write_rows(rows, out + "/part-0.parquet")
    rd.finish(StageResult(stage="sample", output="samples", path=out), "h", [], {})
    return cfg


def test_pairs_stage_writes_trl_format_and_table(tmp_path):
    result = run_pairs(_stage_cfg(tmp_path))
    rows = read_rows(result.path)
    assert [(r["problem_id"], r["kind"]) for r in rows] == [("a", "hard"), ("a", "easy"), ("b", "gold")]
    # raw weights 2, 1, 1.5 -> mean 1.5 -> 4/3, 2/3, 1
    assert [r["weight"] for r in rows] == pytest.approx([4 / 3, 2 / 3, 1.0])
    assert [r["weight_raw"] for r in rows] == pytest.approx([2.0, 1.0, 1.5])
    r = rows[0]
    assert {"pair_id", "problem_id", "prompt", "chosen", "rejected", "weight", "kind"} <= set(r)
    assert r["prompt"] == "Question: q\nAnswer: " and r["chosen"] == "sol 0" and r["rejected"] == "sol 1"
    assert r["chosen_correct"] is True and r["rejected_hard_negative"] is True and r["rejected_absurdity"] == 0.0
    assert rows[2]["chosen"] == "gold steps\n#### 4" and rows[2]["chosen_sample_id"] == -1
    assert len({r["pair_id"] for r in rows}) == 3
    assert result.rows["problems"] == 3 and result.rows["pairs"] == 3
    assert result.rows["no_pair: all_correct"] == 1 and result.rows["no_pair: all_wrong_no_gold"] == 0
    assert (result.rows["pairs: hard"], result.rows["pairs: easy"], result.rows["pairs: gold"]) == (1, 1, 1)
    assert result.metrics["weight_mean"] == pytest.approx(1.0)
    assert result.metrics["weight_max"] == pytest.approx(4 / 3)
    manifest = json.loads((Path(result.path) / "_manifest.json").read_text())
    assert manifest["rows"]["pairs"] == 3 and manifest["metrics"]["weight_min"] == pytest.approx(2 / 3)


def test_pairs_stage_first_error_span(tmp_path):
    cfg = _stage_cfg(tmp_path, rejected_span="first_error")
    rows = read_rows(cfg.run_dir + "/samples")
    for r in rows:  # sample 1 of problem a: a slip in step 0
        if (r["problem_id"], r["sample_id"]) == ("a", 1):
            r.update(completion="27-5 = <<27-5=23>>23\n#### 23", first_error_step=0)
        elif (r["problem_id"], r["sample_id"]) == ("a", 0):
            r["completion"] = CHOSEN
    write_rows(rows, cfg.run_dir + "/samples/part-0.parquet")
    result = run_pairs(cfg, force=True)
    got = {(r["problem_id"], r["kind"]): r for r in read_rows(result.path)}
    hard = got[("a", "hard")]
    assert hard["rejected"] == "27-5 = <<27-5=23" and hard["rejected_cut"] is True
    assert hard["rejected_full"] == "27-5 = <<27-5=23>>23\n#### 23"
    assert got[("a", "easy")]["rejected_cut"] is False and got[("a", "easy")]["rejected"] == "sol 2"
    assert result.rows["pairs: rejected cut at first error"] == 1


def test_pairs_stage_counts_excluded_samples_as_rejects(tmp_path):
    cfg = _stage_cfg(tmp_path)
    rows = read_rows(cfg.run_dir + "/samples")
    rows += [{**s(0, True, "same"), "problem_id": "d"}, {**s(1, False, "same"), "problem_id": "d"},
             {**s(2, False), "problem_id": "d", "flags": "verifier_error"},
             {**s(3, False), "problem_id": "d", "completion": ""}, {**s(4, False, absurd=math.nan), "problem_id": "d"}]
    write_rows(rows, cfg.run_dir + "/samples/part-0.parquet")
    result = run_pairs(cfg)
    assert [(r["problem_id"], r["rejected_sample_id"]) for r in read_rows(result.path)] == [("a", 1), ("a", 2), ("b", 0)]
    assert result.rows["no_pair: no_distinct_negative"] == 1
    expected = {"same_as_chosen": 1, "verifier_error": 1, "empty_completion": 1, "non_finite_score": 1}
    assert result.rejects == expected
    manifest = json.loads((Path(result.path) / "_manifest.json").read_text())
    assert manifest["rejects"] == expected
    rejects = read_rows(str(Path(result.path) / "_rejects"))
    assert sorted((r["row"], r["reason"]) for r in rejects) == [
        ("d/1", "same_as_chosen"), ("d/2", "verifier_error"), ("d/3", "empty_completion"), ("d/4", "non_finite_score")]


def test_pairs_stage_refuses_unverified_samples_and_keeps_its_output(tmp_path):
    cfg = _stage_cfg(tmp_path)
    first = run_pairs(cfg)
    verdicts = {"correct", "wrongness", "absurdity", "err_numeric", "hard_negative", "pred_answer", "flags",
                "first_error_step", "num_steps"}
    rows = [{k: v for k, v in r.items() if k not in verdicts} for r in read_rows(cfg.run_dir + "/samples")]
    write_rows(rows, cfg.run_dir + "/samples/part-0.parquet")
    with pytest.raises(InputError) as err:
        run_pairs(cfg, force=True)
    msg = str(err.value)
    assert "not verified" in msg and "sample.verify=true" in msg and "\n" not in msg
    assert len(read_rows(first.path)) == 3 and (Path(first.path) / "_manifest.json").exists()


def test_pairs_stage_that_would_mine_no_pair_is_one_line_and_keeps_its_output(tmp_path):
    """No pair at all (every sampled problem all correct, or all wrong with use_gold off) is what reflogp
    and dpo refuse later; refused here, the pairs of the last run stay in place."""
    cfg = _stage_cfg(tmp_path)
    first = run_pairs(cfg)
    rows = [r for r in read_rows(cfg.run_dir + "/samples") if r["problem_id"] in ("b", "c")]
    write_rows(rows, cfg.run_dir + "/samples/part-0.parquet")
    with pytest.raises(InputError) as err:
        run_pairs(with_overrides(cfg, ["pairs.use_gold=false"]))
    assert str(err.value) == ("pairs: none of the 2 problems gave a pair (1 all_wrong_no_gold, 1 all_correct); set"
                              " pairs.use_gold=true to pair the gold solution with wrong ones")
    assert len(read_rows(first.path)) == 3 and RunDir(cfg.run_dir).manifest("pairs")["rows"]["pairs"] == 3


def test_pairs_stage_uniform_weights_are_all_one(tmp_path):
    result = run_pairs(_stage_cfg(tmp_path, weighting="uniform"))
    assert [r["weight"] for r in read_rows(result.path)] == [1.0, 1.0, 1.0]


def test_pairs_math_imports_no_ray_or_torch():
    import subprocess
    import sys

    code = "import sys, hsdpo.pairs; print(sorted(m for m in ('ray', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_pairs_re_made_with_the_same_rows_leave_the_stages_after_them_current(tmp_path):
    """The samples re-made (as a re-verify that moves no pair writes them: other files, rows in
    another order, a new manifest): the pairs run again and come out the same, and what the stages
    after them recorded of them still matches, so reflogp and dpo are not re-run; `hsdpo status`
    said beforehand that they would run only if the pairs came out different. Different samples
    make different pairs, and those are a re-made input."""
    from hsdpo.plan import plan
    from hsdpo.stage import run_stage
    from hsdpo.status import pipeline_status

    cfg = _stage_cfg(tmp_path)
    cfg = with_overrides(cfg, ["steps=[{stage: pairs}, {stage: reflogp}]"])
    rd = RunDir(cfg.run_dir)
    run_pairs(cfg)
    before, h = read_rows(rd.path("pairs")), rd.input_hashes(["pairs"])
    for name in ("data", "sft", "reflogp"):  # finished stages as run_stage records them, without a model
        run_stage(cfg, plan(cfg, name), body=lambda out, name=name: StageResult(name, plan(cfg, name).output, out))
    samples = read_rows(rd.path("samples"))

    def remake(rows):
        out = rd.reset("samples")
        write_rows(rows[3:], out + "/part-a.parquet")
        write_rows(rows[:3], out + "/part-b.parquet")
        rd.finish(StageResult(stage="sample", output="samples", path=out), "h2", [], {})

    remake(samples[::-1])
    states = [(s.output, s.state, s.why) for s in pipeline_status(cfg)]
    assert states[0][:2] == ("pairs", "stale") and states[1][1] == "stale"
    assert states[1][2] == "input pairs will be re-made (runs only if that comes out different)"
    assert not run_pairs(cfg).skipped
    assert read_rows(rd.path("pairs")) == before and rd.input_hashes(["pairs"]) == h
    assert [s.state for s in pipeline_status(cfg)] == ["current", "current"]
    remake([{**r, "absurdity": 0.5} if r["sample_id"] == 1 else r for r in samples])  # another weight
    run_pairs(cfg)
    assert rd.input_hashes(["pairs"]) != h and [s.state for s in pipeline_status(cfg)] == ["current", "stale"]
