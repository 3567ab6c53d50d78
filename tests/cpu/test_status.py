"""`hsdpo status`: each step's state read from the run dir's manifests and locks, with the reason a
pipeline run would re-make it; RUN_ONLY settings change no stage's hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hsdpo.cli import main
from hsdpo.config import load_config, with_overrides
from hsdpo.data.stage import run_data
from hsdpo.plan import plan
from hsdpo.rundir import StageResult
from hsdpo.stagelock import stage_lock
from hsdpo.stage import config_hash, run_stage
from hsdpo.status import pipeline_status


def _recipe(tmp_path: Path) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(f"""run_dir: {tmp_path / 'run'}
data: {{sources: [{{name: synthetic, synthetic: {{num_problems: 20}}}}]}}
steps: [{{stage: data}}, {{stage: sft}}, {{stage: sample}}, {{stage: pairs}}]
""")
    return p


def _finish(cfg, stage: str) -> None:
    """A finished stage as run_stage records it (manifest, hash, input hashes), without training."""
    def body(out: str) -> StageResult:
        Path(out, "model.txt").write_text("weights")
        return StageResult(stage, plan(cfg, stage).output, out, rows={"examples": 20})

    run_stage(cfg, plan(cfg, stage), body=body)


def _states(cfg) -> list[tuple[str, str, str]]:
    return [(s.output, s.state, s.why) for s in pipeline_status(cfg)]


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_status_names_what_is_current_and_why_the_rest_would_run(tmp_path):
    recipe = _recipe(tmp_path)
    cfg = load_config(recipe)
    assert [s for _, s, _ in _states(cfg)] == ["missing"] * 4
    run_data(cfg)
    _finish(cfg, "sft")
    (tmp_path / "run" / "samples").mkdir()
    (tmp_path / "run" / "samples" / "part-0.parquet").write_bytes(b"half")  # a killed sample run
    got = _states(cfg)
    assert [(o, s) for o, s, _ in got] == [("problems", "current"), ("sft", "current"), ("samples", "incomplete"),
                                            ("pairs", "missing")]
    assert got[0][2].startswith("20 problems, 20 train, ") and got[1][2].startswith("20 examples, ")

    changed = with_overrides(cfg, ["sft.lr=0.002", "sft.steps=7"])
    assert _states(changed)[1] == ("sft", "stale", "config changed: sft.lr 0.001 -> 0.002, sft.steps null -> 7")

    # a re-made input: the downstream stage says which
    run_data(cfg, force=True)
    assert _states(cfg)[1] == ("sft", "stale", "input problems was re-made after this ran")
    _finish(cfg, "sft")
    _finish(cfg, "sample")
    # an input a pipeline run would re-make first
    assert _states(changed)[1:] == [("sft", "stale", "config changed: sft.lr 0.001 -> 0.002, sft.steps null -> 7"),
                                    ("samples", "stale", "input sft will be re-made"), ("pairs", "missing", "not run yet")]
    recipe.write_text(recipe.read_text().replace("num_problems: 20", "num_problems: 30"))
    assert _states(load_config(recipe))[0] == ("problems", "stale",
                                               "config changed: data.sources.0.synthetic.num_problems 20 -> 30")

    with stage_lock(cfg.run_dir, "sft"):
        output, state, why = _states(cfg)[1]
        assert (output, state) == ("sft", "running") and f"pid {__import__('os').getpid()}" in why


def test_run_only_settings_leave_a_finished_stage_current(tmp_path):
    cfg = load_config(_recipe(tmp_path))
    run_data(cfg)
    _finish(cfg, "sft")
    quiet = ["sft.log_every=9", "sft.report_interval_s=0", "sft.max_failures=2", "sft.checkpoint_every=3",
             "sft.keep_checkpoints=5", "sample.max_restarts=0", "sample.verify_concurrency=4"]
    assert config_hash(with_overrides(cfg, quiet), plan(cfg, "sft")) == config_hash(cfg, plan(cfg, "sft"))
    assert _states(with_overrides(cfg, quiet))[1][1] == "current"
    for key in ("sft.lr=0.5", "sft.num_workers=2", "sample.n=3", "model.preset=micro"):
        stage = key.split(".")[0]
        stage = {"model": "sft"}.get(stage, stage)
        assert config_hash(with_overrides(cfg, [key]), plan(cfg, stage)) != config_hash(cfg, plan(cfg, stage)), key


def test_eval_depends_on_how_sample_decodes_not_on_what_it_samples(tmp_path):
    """eval sets its own n, temperature and budget and always verifies; the sampled split, its size and
    model are not its business. How to decode (top_p, stop strings, backend, dtype) is."""
    from hsdpo.status import config_changes

    cfg = load_config(_recipe(tmp_path))
    p = plan(cfg, "eval")
    for key in ("sample.n=16", "sample.temperature=0.7", "sample.verify=false", "sample.limit=100",
                "sample.split=test", "sample.model_from=x", "sample.max_new_tokens=9"):
        assert config_hash(with_overrides(cfg, [key]), p) == config_hash(cfg, p), key
    for key in ("sample.top_p=0.9", "sample.stop_strings=[]", "sample.dtype=float32", "eval.n=12"):
        assert config_hash(with_overrides(cfg, [key]), p) != config_hash(cfg, p), key
    now = with_overrides(cfg, ["sample.n=16", "sample.top_p=0.9"]).model_dump(mode="json")
    assert config_changes(cfg.model_dump(mode="json"), now, p.sections, p.ignore) == ["sample.top_p 1.0 -> 0.9"]
    assert config_hash(with_overrides(cfg, ["sample.n=16"]), plan(cfg, "sample")) != config_hash(cfg, plan(cfg, "sample"))


def test_the_cli_prints_a_table_or_json_and_writes_nothing(tmp_path, capsys):
    recipe = _recipe(tmp_path)
    cfg = load_config(recipe)
    run_data(cfg)
    before = _tree(tmp_path / "run")
    capsys.readouterr()
    assert main(["status", str(recipe)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"run_dir {tmp_path / 'run'}"
    assert out[1].split() == ["step", "output", "state", "why"]
    assert out[2].split()[:3] == ["data", "problems", "current"] and out[3].split()[:3] == ["sft", "sft", "missing"]
    assert out[-1] == "1 of 4 steps current; `hsdpo pipeline` would run: sft, samples, pairs"
    assert main(["status", str(recipe), "sft.lr=0.3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["stage"], r["state"]) for r in rows] == [("data", "current"), ("sft", "missing"), ("sample", "missing"),
                                                         ("pairs", "missing")]
    assert rows[0]["rows"]["problems"] == 20 and rows[0]["finished_at"] > 0
    assert _tree(tmp_path / "run") == before


def test_status_of_a_run_dir_that_does_not_exist_is_all_missing(tmp_path, capsys):
    recipe = _recipe(tmp_path)
    assert main(["status", str(recipe)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "0 of 4 steps current; `hsdpo pipeline` would run: problems, sft, samples, pairs"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad", ["sft.lr=oops", "nosuch.key=1"])
def test_status_with_a_bad_override_is_one_line(tmp_path, capsys, bad):
    assert main(["status", str(_recipe(tmp_path)), bad]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("text", [b"", b'{"status": "comp', b"[1, 2]", b"\xff\xfe"])
def test_an_unreadable_manifest_reads_as_incomplete_and_the_stage_runs_again(tmp_path, capsys, text):
    """A zero-length manifest (a machine lost before the rename reached its disk), a cut or
    hand-broken one: `hsdpo status` names it on the step's line, the stage that reads it as an input
    refuses in one line, and the stage itself runs again -- no command ends in a traceback."""
    recipe = _recipe(tmp_path)
    cfg = load_config(recipe)
    run_data(cfg)
    (tmp_path / "run" / "problems" / "_manifest.json").write_bytes(text)
    output, state, why = _states(cfg)[0]
    assert (output, state) == ("problems", "incomplete") and why.startswith("its _manifest.json is unreadable (")
    capsys.readouterr()
    assert main(["sft", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"hsdpo: stage output {tmp_path / 'run' / 'problems'} has an unreadable _manifest.json")
    assert "\n" not in err
    assert not run_data(cfg).skipped and _states(cfg)[0][1] == "current"


def test_a_manifest_with_fields_of_the_wrong_type_is_stale_not_a_traceback(tmp_path):
    cfg = load_config(_recipe(tmp_path))
    run_data(cfg)
    _finish(cfg, "sft")
    p = tmp_path / "run" / "sft" / "_manifest.json"
    m = json.loads(p.read_text())
    p.write_text(json.dumps({**m, "inputs": ["problems"], "rows": 3, "wall_s": "x", "finished_at": "y"}))
    assert _states(cfg)[1] == ("sft", "stale", "input problems was re-made after this ran")
    p.write_text(json.dumps({**m, "config_hash": "other", "config": 5}))
    output, state, why = _states(cfg)[1]
    assert (output, state) == ("sft", "stale") and why.startswith("config changed: ")


def test_an_input_re_made_while_a_stage_ran_leaves_that_stage_stale(tmp_path):
    """The manifest records the inputs as the stage found them when it started: `hsdpo data --force`
    run beside a long SFT used to be recorded as the data SFT trained on, and SFT read as current."""
    cfg = load_config(_recipe(tmp_path))
    run_data(cfg)

    def body(out: str) -> StageResult:
        run_data(cfg, force=True)  # another process re-makes problems/ (its own lock) meanwhile
        return StageResult("sft", "sft", out)

    run_stage(cfg, plan(cfg, "sft"), body=body)
    assert _states(cfg)[1] == ("sft", "stale", "input problems was re-made after this ran")


def test_a_partial_folder_holding_only_underscore_files_is_incomplete(tmp_path):
    """A killed SFT that had built its `_init/` model and nothing else left a folder behind all the same."""
    cfg = load_config(_recipe(tmp_path))
    run_data(cfg)
    (tmp_path / "run" / "sft" / "_init").mkdir(parents=True)
    (tmp_path / "run" / "sft" / "_init" / "config.json").write_text("{}")
    assert _states(cfg)[1][:2] == ("sft", "incomplete")


def test_sft_init_from_a_model_path_is_not_a_run_dir_input(tmp_path, tiny_model_dir):
    """`sft.init_from` loads a path or hub id like every other model ref; only a stage name is an
    input the stage waits for (before, a path was required as a stage folder and the stage refused)."""
    cfg = load_config(_recipe(tmp_path))
    assert plan(with_overrides(cfg, [f"sft.init_from={tiny_model_dir}"]), "sft").inputs == ("problems",)
    assert plan(with_overrides(cfg, ["sft.init_from=Qwen/Qwen2.5-1.5B"]), "sft").inputs == ("problems",)
    assert plan(with_overrides(cfg, ["sft.init_from=sft", "sft.output=rft"]), "sft").inputs == ("problems", "sft")
    run_data(cfg)
    assert _states(with_overrides(cfg, [f"sft.init_from={tiny_model_dir}"]))[1] == ("sft", "missing", "not run yet")
    _finish(with_overrides(cfg, [f"sft.init_from={tiny_model_dir}"]), "sft")
    assert _states(with_overrides(cfg, [f"sft.init_from={tiny_model_dir}"]))[1][1] == "current"


def test_a_bare_hub_id_is_no_stage_and_a_steps_output_is_one(tmp_path):
    """A bare name is a run-dir stage when it has a manifest there or a stage of the config writes it
    (a step's override included); `gpt2` is a hub id like `Qwen/Qwen2.5-1.5B`, not a stage to wait for."""
    cfg = with_overrides(load_config(_recipe(tmp_path)), ['steps=[{stage: sft, overrides: ["sft.output=rft"]}]'])
    assert plan(with_overrides(cfg, ["sample.model_from=gpt2"]), "sample").inputs == ("problems",)
    assert plan(with_overrides(cfg, ["eval.models={base: distilgpt2, sft: sft}"]), "eval").inputs[:1] == ("sft",)
    assert plan(with_overrides(cfg, ["sample.model_from=rft"]), "sample").inputs == ("problems", "rft")
    assert plan(with_overrides(cfg, ["sample.model_from=sft"]), "sample").inputs == ("problems", "sft")
    run_data(cfg)
    _finish(with_overrides(cfg, ["sft.output=mine"]), "sft")  # written by a single-stage command
    assert plan(with_overrides(cfg, ["sample.model_from=mine"]), "sample").inputs == ("problems", "mine")


def test_a_data_file_or_model_folder_rewritten_outside_the_run_dir_leaves_its_stage_stale(tmp_path, data_dir,
                                                                                         tiny_model_dir):
    """Files outside the run dir are known by each file's name, size and mtime (ETag or generation on
    a bucket), recorded in the manifest: a data file edited in place re-makes problems/."""
    import os
    import shutil

    lines = (data_dir / "gsm8k" / "test.jsonl").read_text().splitlines(keepends=True)
    src = tmp_path / "g.jsonl"
    src.write_text("".join(lines[:30]))
    model = tmp_path / "outside_model"
    shutil.copytree(tiny_model_dir, model)
    cfg = with_overrides(load_config(_recipe(tmp_path)), [f"data.sources=[{{name: gsm8k, path: {src}}}]",
                                                          f"sample.model_from={model}"])
    assert plan(cfg, "data").files == (str(src),) and plan(cfg, "sample").files == (str(model),)
    assert plan(cfg, "pairs").files == () and plan(with_overrides(cfg, ["sample.model_from=gpt2"]), "sample").files == ()
    assert run_data(cfg).rows["problems"] == 30
    _finish(cfg, "sample")
    assert _states(cfg)[0][:2] == ("problems", "current") and run_data(cfg).skipped

    from hsdpo.sampling.stage import generation_key

    key = generation_key(cfg)
    (model / "config.json").write_text((model / "config.json").read_text() + " ")  # retrained in place
    assert _states(cfg)[2] == ("samples", "stale", f"{model} changed since this ran (or is gone, or cannot be read from here)")
    assert generation_key(cfg) != key  # the stored completions are the old model's: sampled again, not re-verified
    src.write_text("".join(lines[:40]))
    os.utime(src, (1, 1))  # a new size, and a new mtime even on a coarse clock
    assert _states(cfg)[0] == ("problems", "stale", f"{src} changed since this ran (or is gone, or cannot be read from here)")
    assert run_data(cfg).rows["problems"] == 40
    assert _states(cfg)[0][1] == "current"
    src.unlink()
    assert _states(cfg)[0][1] == "stale"
    _finish(cfg, "sample")
    shutil.rmtree(model)  # gone: no longer a folder, so no longer among the files, and still recorded
    assert _states(cfg)[2][:2] == ("samples", "stale")
    from hsdpo.rundir import fingerprint

    assert fingerprint("memory://nothing/here.jsonl") is None and fingerprint(str(tmp_path / "none")) is None
    # weights behind a symlink (a hub-cache layout): the target rewritten in place changes the fingerprint
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "w").write_text("bb")
    (tmp_path / "linked").mkdir()
    os.symlink(tmp_path / "blobs" / "w", tmp_path / "linked" / "model.safetensors")
    before = fingerprint(str(tmp_path / "linked"))
    (tmp_path / "blobs" / "w").write_text("cc")  # same size
    os.utime(tmp_path / "blobs" / "w", (2, 2))
    assert fingerprint(str(tmp_path / "linked")) != before


def test_a_run_dir_under_home_is_expanded_not_a_folder_named_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    cfg = load_config(_recipe(tmp_path), ["run_dir=~/runs/x"])
    run_data(cfg)
    assert (tmp_path / "home" / "runs" / "x" / "problems" / "_manifest.json").is_file()
    assert not (tmp_path / "~").exists() and _states(cfg)[0][1] == "current"


def test_a_stage_that_reads_its_own_output_is_refused_before_its_folder_is_emptied(tmp_path, capsys):
    """An RFT run given `sft.init_from=sft` without another `sft.output` emptied sft/ and then failed to
    load the model it was to start from: the SFT model was lost. Now one line, and sft/ as it was."""
    recipe = _recipe(tmp_path)
    cfg = load_config(recipe)
    run_data(cfg)
    _finish(cfg, "sft")
    before = _tree(tmp_path / "run" / "sft")
    capsys.readouterr()
    for command in ("sft", "status"):
        assert main([command, str(recipe), "sft.init_from=sft"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == "hsdpo: sft would write sft/, which it also reads (emptied before it is read); set sft.output" \
                      " to another folder"
    assert _tree(tmp_path / "run" / "sft") == before


def test_a_recipe_with_two_steps_writing_one_folder_is_refused_before_any_step(tmp_path, capsys):
    """Each would replace the other's output on every run, and status called the second current."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"run_dir: {tmp_path / 'run'}\n"
                      "steps: [{stage: data}, {stage: dpo}, {stage: dpo, overrides: [dpo.weighting=uniform]}]\n")
    for command in ("pipeline", "status"):
        assert main([command, str(recipe)]) == 2
        assert capsys.readouterr().err.strip() == ("hsdpo: steps 2 and 3 of the recipe both write dpo/; give one of"
                                                   " them another dpo.output")
    assert not (tmp_path / "run").exists()
