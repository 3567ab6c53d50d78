"""The eval stage and report on hand-made verdict tables: no model, no Ray.

`_decode` (sampling + verification) is replaced by a table of made-up verdicts, so the test covers
what the stage itself does: problems in, stage inputs, summary.json, per-model samples, report.md
and plots, skip-when-current.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

import hsdpo.eval.stage as eval_stage
from hsdpo.config import config_from_dict, with_overrides
from hsdpo.data.stage import run_data
from hsdpo.rundir import RunDir, StageResult
from hsdpo.stage import write_rows

MODELS = {"sft": "sft", "dpo": "dpo", "weighted_dpo": "weighted_dpo"}
# problem index -> correct, per model (index % 4): sft right on 0, dpo on 0-1, weighted on 0-2
RIGHT = {"sft": {0}, "dpo": {0, 1}, "weighted_dpo": {0, 1, 2}}


def verdict(pid: str, correct: bool, hard: bool, mode_n: int = 0) -> dict:
    return {"problem_id": pid, "sample_id": f"{pid}-{mode_n}", "completion": "1+1 = <<1+1=2>>2\n#### 2",
            "correct": correct, "pred_answer": "2" if correct else "3", "wrongness": 0.0 if correct else 0.4,
            "absurdity": 0.0 if correct else 0.1, "hard_negative": (not correct) and hard, "first_error_step": None,
            "num_steps": 1, "flags": [], **{f"err_{d}": 0.0 if correct else 0.5 for d in
                                             ("answer", "numeric", "arithmetic", "logic", "format", "implausibility")}}


def fake_decode(cfg, problems, model_path, out_dir, *, n, temperature, seed):
    name = os.path.basename(os.path.dirname(model_path.rstrip("/")))
    rows = []
    for i, p in enumerate(problems):
        for j in range(n):
            correct = i % 4 in RIGHT[name] if n == 1 else j == 0
            rows.append(verdict(p["problem_id"], correct, hard=i % 2 == 1, mode_n=j))
    write_rows(rows, out_dir + "/part-0.parquet")
    return rows, {"solutions_per_s": 10.0}


def fake_model_stage(rd: RunDir, output: str, stage: str, margins: list[float] = ()) -> None:
    out = rd.reset(output)
    os.makedirs(os.path.join(out, "model"))
    with open(os.path.join(out, "model", "config.json"), "w") as f:
        f.write("{}")
    save_file({"w": torch.zeros(2)}, os.path.join(out, "model", "model.safetensors"))  # the driver reads its header
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        for step, m in enumerate(margins):
            f.write(json.dumps({"step": step, "loss": 0.6, "reward_margin": m}) + "\n")
    rd.finish(StageResult(stage=stage, output=output, path=out), "h", [], {})


@pytest.fixture()
def run_cfg(tmp_path, monkeypatch):
    monkeypatch.setattr(eval_stage, "_decode", fake_decode)
    monkeypatch.setattr("hsdpo.rayutil.init_ray", lambda cfg: None)
    synth = {"num_problems": 12, "min_steps": 1, "max_steps": 2}
    cfg = config_from_dict({
        "run_dir": str(tmp_path / "run"),
        "data": {"sources": [{"name": "synthetic", "split": "train", "synthetic": synth},
                             {"name": "synthetic", "split": "test", "seed": 1, "synthetic": synth}]},
        "eval": {"models": MODELS, "n": 2, "pass_k": [1, 2]},
    })
    run_data(cfg)
    rd = RunDir(cfg.run_dir)
    fake_model_stage(rd, "sft", "sft")
    fake_model_stage(rd, "dpo", "dpo", [0.0, 0.1, 0.3])
    fake_model_stage(rd, "weighted_dpo", "dpo", [0.0, 0.2, 0.5])
    out = rd.reset("pairs")
    write_rows([{"pair_id": f"x{i}", "weight": 0.5 + i / 10, "kind": "hard" if i % 2 else "easy"} for i in range(10)],
               out + "/pairs.parquet")
    rd.finish(StageResult(stage="pairs", output="pairs", path=out), "h", [], {})
    out = rd.reset("samples")
    write_rows([verdict(f"t{i}", i % 3 == 0, i % 2 == 0) for i in range(30)], out + "/samples.parquet")
    rd.finish(StageResult(stage="samples", output="samples", path=out), "h", [], {})
    return cfg


def test_eval_stage_writes_summary_samples_and_report(run_cfg):
    result = eval_stage.run_eval(run_cfg)
    out = result.path
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["model_order"] == ["sft", "dpo", "weighted_dpo"] == sorted(summary["models"], key=list(MODELS).index)
    n_test = summary["num_problems"]
    assert n_test == 12 and summary["split"] == "test"
    # hand count: index % 4 in RIGHT over 12 problems -> 3, 6, 9 right
    for name, right in (("sft", 3), ("dpo", 6), ("weighted_dpo", 9)):
        m = summary["models"][name]
        assert (m["n"], m["correct"]) == (12, right)
        assert set(m) >= {"accuracy", "by_source", "by_steps", "near_miss", "error_profile", "pass@1", "pass@2", "majority", "path"}
        assert m["pass@1"] == pytest.approx(0.5) and m["pass@2"] == pytest.approx(1.0)
    # near-miss = sft wrong and hard = odd indices (1, 3 mod 4) -> 6 problems; dpo right on the 1 mod 4 ones
    assert summary["near_miss"] == {"ref": "sft", "n": 6}
    assert summary["models"]["dpo"]["near_miss"] == {"accuracy": 0.5, "n": 6, "correct": 3}
    for name in MODELS:
        assert os.listdir(os.path.join(out, "samples", name, "greedy"))
        assert os.listdir(os.path.join(out, "samples", name, "sampled"))
    files = set(summary["report"]["files"])
    assert files == {"report.md", "accuracy.png", "negatives.png", "pair_weights.png", "dpo_margins.png"}
    for f in files:
        assert os.path.getsize(os.path.join(out, f)) > 0
    report = open(os.path.join(out, "report.md")).read()
    assert "| weighted_dpo | 75.0% |" in report and "![accuracy by model and subset](accuracy.png)" in report
    manifest = RunDir(run_cfg.run_dir).manifest("eval")
    assert set(manifest["inputs"]) == {"sft", "dpo", "weighted_dpo", "problems", "pairs", "samples"}


def test_the_report_s_samples_and_pairs_are_inputs_so_re_making_them_leaves_it_stale(run_cfg):
    """The plots draw the training samples' wrong answers and the pairs' weights: a re-made pairs/
    leaves the eval stale (and a re-run redraws from it); without plots, or with those stages
    absent or incomplete, they are no inputs and are not read."""
    from hsdpo.plan import plan
    from hsdpo.stage import config_hash

    rd = RunDir(run_cfg.run_dir)
    eval_stage.run_eval(run_cfg)
    p = plan(run_cfg, "eval")
    assert rd.is_current("eval", config_hash(run_cfg, p), list(p.inputs))
    out = rd.reset("pairs")
    write_rows([{"pair_id": "y", "weight": 2.0, "kind": "hard"}], out + "/pairs.parquet")
    rd.finish(StageResult(stage="pairs", output="pairs", path=out), "h2", [], {})
    assert rd.staleness("eval", config_hash(run_cfg, p), list(p.inputs)) == ("input re-made", "pairs")
    assert not eval_stage.run_eval(run_cfg).skipped
    assert eval_stage.report_inputs(run_cfg).pair_weights == [(2.0, "hard")]
    os.remove(rd.path("samples", "_manifest.json"))  # a killed sample run: not read, not an input
    assert "samples" not in plan(run_cfg, "eval").inputs and eval_stage.report_inputs(run_cfg).negatives == []
    no_plots = with_overrides(run_cfg, ["eval.plots=false"])
    assert set(plan(no_plots, "eval").inputs) == {"sft", "dpo", "weighted_dpo", "problems"}


def test_eval_stage_skips_when_current_and_reruns_when_a_model_changes(run_cfg):
    assert not eval_stage.run_eval(run_cfg).skipped
    assert eval_stage.run_eval(run_cfg).skipped
    fake_model_stage(RunDir(run_cfg.run_dir), "dpo", "dpo", [0.0, 0.4])
    assert not eval_stage.run_eval(run_cfg).skipped


@pytest.mark.parametrize("overrides, says", [
    (["eval.split=validation"], "eval: no problems in split 'validation' of problems/"),
    (["sample.backend=vllm"], "sample.backend=vllm needs vLLM, which is not installed here"),
    (["sample.backend=vllm", "sample.temperature=1", "eval.temperature=2.5"],
     "eval.temperature=2.5: vLLM samples at temperatures up to 2"),
])
def test_an_eval_that_cannot_start_is_one_line_and_keeps_the_last_one(run_cfg, overrides, says, monkeypatch):
    """Refused before the eval folder is emptied: the finished evaluation stays as it was."""
    from hsdpo.config import with_overrides

    if "eval.temperature=2.5" in overrides:
        monkeypatch.setattr("hsdpo.sampling.vllm.require_vllm", lambda: None)  # as on a machine with vLLM
    elif overrides[0] == "sample.backend=vllm":
        try:
            import vllm  # noqa: F401
        except ImportError:
            pass
        else:
            pytest.skip("vLLM is installed")
    first = eval_stage.run_eval(run_cfg)
    rd = RunDir(run_cfg.run_dir)
    before = (rd.manifest("eval"), sorted(os.listdir(first.path)), open(os.path.join(first.path, "summary.json")).read())
    with pytest.raises(ValueError) as err:
        eval_stage.run_eval(with_overrides(run_cfg, overrides), force=True)
    assert str(err.value).startswith(says) and "\n" not in str(err.value)
    assert (rd.manifest("eval"), sorted(os.listdir(first.path)),
            open(os.path.join(first.path, "summary.json")).read()) == before


def test_eval_verifies_even_when_the_sample_stage_does_not(tmp_path, monkeypatch):
    calls = []

    def record(problems, model_path, out_dir, sample_cfg, verifier_cfg, template, *, n, temperature, seed, verify=None,
               trust_remote_code=False):
        calls.append((verify, trust_remote_code))
        write_rows([verdict("p0", True, False)], out_dir + "/part-0.parquet")
        return {}

    monkeypatch.setattr("hsdpo.sampling.pipeline.sample_and_verify", record)
    cfg = config_from_dict({"run_dir": str(tmp_path / "run"), "sample": {"verify": False},
                            "model": {"trust_remote_code": True}})
    rows, _ = eval_stage._decode(cfg, [{"problem_id": "p0"}], "m", str(tmp_path / "out"), n=1, temperature=0.0, seed=0)
    assert calls == [(True, True)] and rows[0]["correct"] is True  # and the model's own code is allowed


def test_margin_series_finds_the_margin_key():
    lines = [{"step": 1, "loss": 0.7, "rewards/margins": 0.1}, {"loss": 0.6}, {"step": 3, "margin": 0.4}]
    assert eval_stage.margin_series(lines) == [(1, 0.1), (3, 0.4)]


def test_every_model_samples_with_the_same_seeds_in_any_order(run_cfg, tmp_path, monkeypatch):
    """Common random numbers for the n-sample pass; before, a model's seed was its position in
    eval.models, so adding or reordering a model changed the others' pass@k and majority vote."""
    seeds: dict[str, set[int]] = {}

    def recording(cfg, problems, model_path, out_dir, *, n, temperature, seed):
        if n > 1:
            seeds.setdefault(os.path.basename(os.path.dirname(model_path.rstrip("/"))), set()).add(seed)
        return fake_decode(cfg, problems, model_path, out_dir, n=n, temperature=temperature, seed=seed)

    monkeypatch.setattr(eval_stage, "_decode", recording)
    for order in (MODELS, dict(reversed(MODELS.items()))):
        cfg = with_overrides(run_cfg, [f"eval.models={json.dumps(order)}"])
        eval_stage.evaluate_models(cfg, [{"problem_id": "p0"}], str(tmp_path / "out"), eval_stage.model_paths(cfg))
    assert set(seeds) == set(MODELS) and all(s == {run_cfg.seed + eval_stage.SAMPLED_SEED} for s in seeds.values())
