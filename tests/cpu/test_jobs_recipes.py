"""The recipes in jobs/: every one parses with the config models, the paper's recipe states the
paper's setting and the resources the autoscaler scales on, and the Ray job runtime env keeps
the upload small and free of secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hsdpo.config import load_config

REPO = Path(__file__).resolve().parents[2]
JOBS = REPO / "jobs"
RUNTIME_ENV = JOBS / "runtime_env.yaml"
RECIPES = sorted(p for p in JOBS.glob("*.yaml") if p != RUNTIME_ENV)
PAPER = JOBS / "qwen2.5-1.5b-metamath.yaml"


def test_the_expected_recipes_exist():
    assert {p.name for p in RECIPES} >= {"tiny.yaml", "smoke.yaml", "qwen2.5-1.5b-metamath.yaml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_parses_with_the_config_models(path):
    cfg = load_config(path)
    for step in cfg.steps:  # each step's overrides must also name real fields
        load_config(path, step.overrides)


def test_paper_recipe_states_the_papers_setting():
    cfg = load_config(PAPER)
    assert cfg.model.name_or_path == "Qwen/Qwen2.5-1.5B"
    sources = {(s.name, s.split) for s in cfg.data.sources}
    assert sources == {("metamathqa", "sft"), ("gsm8k", "train"), ("gsm8k", "test"), ("math", "test")}
    assert all(s.path is None for s in cfg.data.sources), "a cluster reads the hub, not a laptop path"
    s = cfg.sample
    assert (s.backend, s.split, s.model_from) == ("vllm", "train", "sft")
    assert s.n == 16 and s.temperature == 1.0 and s.max_new_tokens == 512
    assert s.vllm.tensor_parallel_size == 1
    assert s.verify and s.verify_num_cpus >= 1
    assert cfg.eval.split == "test"
    assert {"sft", "weighted_dpo"} <= set(cfg.eval.models)
    dpo_steps = [step for step in cfg.steps if step.stage == "dpo"]
    assert {o for step in dpo_steps for o in step.overrides} >= {"dpo.weighting=uniform", "dpo.weighting=verifier"}


def test_paper_recipe_requests_what_the_autoscaler_scales_on():
    cfg = load_config(PAPER)
    assert cfg.sft.use_gpu and cfg.sft.num_workers == 8, "SFT: 8 GPU workers, one 8xH100 node"
    low, high = cfg.sample.concurrency
    assert 1 <= low <= high == 8, "vLLM replicas scale up to one 8-GPU node"
    vlow, vhigh = cfg.sample.verify_concurrency
    assert 1 <= vlow < vhigh, "verifier actors scale on CPUs"
    assert cfg.ray.address is None and not cfg.ray.runtime_env, "the job's RAY_ADDRESS and runtime env decide"
    assert cfg.dpo.use_gpu and cfg.reflogp.num_gpus >= 1, "reference log-probs of a 1.5B model on GPUs, not CPUs"
    # policy and reference score the same tokens, and a sampled solution (512 tokens) plus its prompt fits
    assert cfg.reflogp.max_length == cfg.dpo.max_length >= cfg.sample.max_new_tokens + 256
    assert cfg.sft.checkpoint_every and cfg.dpo.checkpoint_every and cfg.sft.max_failures and cfg.dpo.max_failures
    assert all(t.zero_stage == 2 and t.precision == "bf16" for t in (cfg.sft, cfg.dpo)) and cfg.sft.split == "sft"


def test_paper_recipe_overrides_work_like_on_the_command_line():
    cfg = load_config(PAPER, ["run_dir=s3://bucket/hsdpo/qwen", "sample.n=8"])
    assert cfg.run_dir == "s3://bucket/hsdpo/qwen" and cfg.sample.n == 8


def test_runtime_env_excludes_local_state_and_is_a_valid_runtime_env():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load(RUNTIME_ENV.read_text())
    assert {".venv/", "runs/", ".git/"} <= set(env["excludes"])
    assert "working_dir" not in env, "given on the command line: --working-dir ."
    assert "pip" not in env and "uv" not in env, "nodes come with hsdpo installed (cluster/*.yaml)"
    assert not any(k.endswith(("TOKEN", "KEY", "SECRET", "PASSWORD")) for k in env.get("env_vars", {}))
    RuntimeEnv(**env)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "_previous"])
def test_a_stage_output_that_is_not_a_plain_folder_name_is_refused_before_anything_is_emptied(name):
    from hsdpo.config import ConfigError
    from hsdpo.plan import Plan, check_plan

    with pytest.raises(ConfigError, match=r"^reflogp\.output .* is not a folder name of the run dir"):
        check_plan(Plan("reflogp", name, ("pairs",), ("seed",)))
    check_plan(Plan("reflogp", "ref_logps", ("pairs",), ("seed",)))
